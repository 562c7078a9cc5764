"""Token-level top-k mixture of SwiGLU experts with sorted dispatch and no dropped tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.library.custom_op("lfbyte::grouped_mm", mutates_args=())
def compiled_grouped_mm(a: Tensor, b: Tensor, offs: Tensor) -> Tensor:
    """``F.grouped_mm(a, b, offs=offs)`` as one opaque op that torch.compile can trace in any dtype.

    torch.compile's shape rule for grouped_mm accepts bf16 only, though the CPU kernel runs fp32 too; without
    this a compiled fp32 graph on the CPU would need the dense dispatch (``num_experts / top_k`` times the expert
    work) or a graph break. ``b`` 3-d: a (n, k) with rows grouped by ``offs`` times b[g] (k, m) -> (n, m);
    ``b`` 2-d (the weight gradient): a (k, n) times b (n, m), grouped along n -> (groups, k, m).
    """
    return F.grouped_mm(a, b, offs=offs)


@compiled_grouped_mm.register_fake
def _(a: Tensor, b: Tensor, offs: Tensor) -> Tensor:
    if b.dim() == 3:
        return a.new_empty(a.shape[0], b.shape[-1])
    return a.new_empty(offs.shape[0], a.shape[0], b.shape[-1])


def _grouped_mm_setup(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _grouped_mm_backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple:
    a, b, offs = ctx.saved_tensors  # (only the forward's 3-d form is ever differentiated)
    grad_a = compiled_grouped_mm(grad, b.transpose(1, 2), offs) if ctx.needs_input_grad[0] else None
    grad_b = compiled_grouped_mm(a.t(), grad, offs) if ctx.needs_input_grad[1] else None
    return grad_a, grad_b, None


compiled_grouped_mm.register_autograd(_grouped_mm_backward, setup_context=_grouped_mm_setup)


@dataclass
class RouterStats:
    """What one MoE layer did on the last batch (detached; for logging, not for gradients)."""

    expert_load: Tensor  # (num_experts,) tokens routed to each expert
    router_entropy: Tensor  # mean entropy of the router distribution, nats
    balance_loss: Tensor
    z_loss: Tensor


class MixtureOfExperts(nn.Module):
    """Top-k routed SwiGLU experts.

    Routing: ``p = softmax(W_r x)`` in fp32, keep the top-k experts and renormalise
    their probabilities into gates. Dispatch: the ``tokens × k`` assignments are
    sorted by expert, one grouped matmul runs each expert on exactly its tokens (a
    token is never dropped, an expert never sees a token not routed to it), and the
    gated outputs are added back to their tokens with ``index_add_``.

    Auxiliary losses (returned, weighted, for the trainer to add):
    Switch-style balance ``E · Σ_e f_e · P_e`` (``f_e`` fraction of assignments,
    ``P_e`` mean router probability; 1.0 when perfectly balanced) and router z-loss
    ``mean(logsumexp(logits)²)`` that keeps router logits small.
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        num_experts: int,
        top_k: int,
        balance_weight: float = 0.01,
        z_weight: float = 0.001,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be between 1 and num_experts={num_experts}")
        self.num_experts, self.top_k, self.hidden = num_experts, top_k, hidden
        self.balance_weight, self.z_weight = balance_weight, z_weight
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.w_in = nn.Parameter(torch.empty(num_experts, 2 * hidden, dim))
        self.w_out = nn.Parameter(torch.empty(num_experts, dim, hidden))
        nn.init.normal_(self.w_in, std=0.02)
        nn.init.normal_(self.w_out, std=0.02)

    def expert(self, e: int, x: Tensor) -> Tensor:
        """Run expert ``e`` on tokens x: (n, dim). The reference the grouped path must equal."""
        a, b = F.linear(x, self.w_in[e]).chunk(2, dim=-1)
        return F.linear(F.silu(a) * b, self.w_out[e])

    def grouped_experts(self, x: Tensor, counts: Tensor) -> Tensor:
        """Every expert on its own rows of x: (n, dim), sorted by expert with ``counts[e]`` rows each.

        One grouped matmul per projection over all experts (no Python loop, no host sync on ``counts``)
        where the kernel supports the device, dtype and layout; one matmul per expert otherwise (which reads
        ``counts`` on the host: only chosen where that read is free, see :meth:`dispatch`).
        """
        if self.dispatch(x) != "grouped":
            return torch.cat([self.expert(e, xs) for e, xs in enumerate(x.split(counts.tolist()))])
        offs = counts.cumsum(0).to(torch.int32)
        compiling_not_bf16 = torch.compiler.is_compiling() and x.dtype != torch.bfloat16
        mm = compiled_grouped_mm if compiling_not_bf16 else F.grouped_mm
        h = mm(x, self.w_in.to(x.dtype).transpose(1, 2), offs=offs)
        a, b = h.chunk(2, dim=-1)
        return mm(F.silu(a) * b, self.w_out.to(x.dtype).transpose(1, 2), offs=offs)

    def dispatch(self, x: Tensor) -> str:
        """How tokens reach their experts: ``grouped`` (sorted rows, one grouped matmul), ``loop`` (sorted
        rows, one matmul per expert: needs the counts on the host, free on the CPU) or ``dense`` (every
        expert on every token, weighted by gates that are zero off the top-k: ``num_experts / top_k`` times
        the expert FLOPs, but no host read and static shapes: for CUDA without grouped_mm (fp32, fp16, before
        sm80) and for compiled graphs with unaligned rows)."""
        if self._grouped_mm_supported(x):
            return "grouped"  # (compiled in fp32 through compiled_grouped_mm: torch.compile's rule wants bf16)
        if x.device.type in ("cpu", "meta") and not torch.compiler.is_compiling():
            return "loop"  # (meta: the memory estimate, which makes its even load on the host)
        return "dense"

    def _grouped_mm_supported(self, x: Tensor) -> bool:
        # F.grouped_mm (recent torch only) wants 16-byte-aligned rows; on CUDA only bf16 on sm80+
        if not hasattr(F, "grouped_mm") or any(n * x.element_size() % 16 for n in (x.shape[-1], self.hidden)):
            return False
        if x.device.type == "cuda":
            return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (8, 0)
        return x.device.type == "cpu"

    @staticmethod
    def _compute(x: Tensor) -> Tensor:
        """x in the dtype the matmuls run in: the autocast dtype when autocast is on (grouped_mm has no
        autocast rule of its own), so tokens are moved around at that width too."""
        if not x.is_meta and torch.is_autocast_enabled(x.device.type):
            return x.to(torch.get_autocast_dtype(x.device.type))
        return x

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x: (n, dim) -> router logits (n, E), probs (n, E), gates (n, k), experts (n, k)."""
        logits = self.router(x).float()
        probs = logits.softmax(dim=-1)
        top_p, top_e = probs.topk(self.top_k, dim=-1)
        return logits, probs, top_p / top_p.sum(-1, keepdim=True), top_e

    def forward(self, x: Tensor, losses: bool = True) -> tuple[Tensor, Tensor | None, RouterStats | None]:
        """x: (..., dim) -> output like x, weighted aux loss (scalar), stats; ``losses=False`` (decoding,
        where nothing reads them) skips the auxiliary losses and stats and returns None for both."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits, probs, gates, experts = self.route(flat)

        assignment = experts.reshape(-1)  # (n*k,), token i's j-th choice at i*k + j
        if flat.shape[0] == 1:  # decoding one byte: run its k experts directly, no sort or scatter
            out = self._one_token(flat, gates[0], experts[0]).to(x.dtype).reshape(shape)
            if not losses:
                return out, None, None
            counts = (assignment[:, None] == torch.arange(self.num_experts, device=x.device)).sum(0)
            return out, *self._losses(logits, probs, counts, assignment.numel())
        if assignment.is_meta:  # memory estimation (lfbyte.resources): no routing data, assume an even load
            n, e = assignment.numel(), self.num_experts
            counts = torch.tensor([n // e + (i < n % e) for i in range(e)])
        else:  # assignments per expert, on the device with a static shape (bincount's size is data-dependent)
            counts = torch.zeros(self.num_experts, dtype=torch.int64, device=x.device).scatter_add_(
                0, assignment, torch.ones_like(assignment))
        routed = self._compute(flat)
        if self.dispatch(routed) == "dense":
            dense_gates = torch.zeros_like(probs).scatter_(1, experts, gates)  # (n, E), zero off the top-k
            out = torch.zeros_like(routed)
            for e in range(self.num_experts):  # where, not a product: an overflow off the top-k must not
                chosen = dense_gates[:, e, None] > 0  # become 0 * inf = NaN (fp16)
                out = out + torch.where(chosen, self.expert(e, routed) * dense_gates[:, e, None].to(routed.dtype), 0)
        else:
            order = assignment.argsort(stable=True)
            token_of = order // self.top_k
            # index_select / index_add_ move rows in both directions (their backwards are each other),
            # far cheaper on CPU than advanced indexing, whose backward is a sorting index_put_.
            routed = routed.index_select(0, token_of)  # assignments grouped by expert
            ys = self.grouped_experts(routed, counts) * gates.reshape(-1)[order, None].to(routed.dtype)
            out = torch.zeros_like(flat, dtype=ys.dtype).index_add_(0, token_of, ys)

        out = out.to(x.dtype).reshape(shape)
        if not losses:
            return out, None, None
        counts = counts.to(x.device)  # (on the meta device the even load was made on the host)
        return out, *self._losses(logits, probs, counts, assignment.numel())

    def _one_token(self, x: Tensor, gates: Tensor, chosen: Tensor) -> Tensor:
        """x: (1, dim), gates and chosen: (k,) -> the gated sum of its k experts, (1, dim)."""
        if x.device.type == "cpu" and not torch.compiler.is_compiling():
            # reading k ids costs nothing on the CPU, and indexing by them makes views, not copies of weights
            ys = torch.stack([self.expert(e, x) for e in chosen.tolist()], 1)  # (1, k, dim)
        else:  # no host sync (CUDA, graph capture, compile): gather the k experts' weights on the device
            x = self._compute(x)
            w_in, w_out = (w.index_select(0, chosen).to(x.dtype) for w in (self.w_in, self.w_out))
            a, b = (w_in @ x[0]).chunk(2, dim=-1)  # (k, 2 hidden) -> 2 × (k, hidden)
            ys = (w_out @ (F.silu(a) * b)[..., None])[None, ..., 0]  # (1, k, dim)
        return (gates.to(ys.dtype)[:, None] * ys[0]).sum(0, keepdim=True)  # (a CPU bmm of one row is slow)

    def _losses(self, logits: Tensor, probs: Tensor, counts: Tensor, assignments: int) -> tuple[Tensor, RouterStats]:
        frac = counts.float() / assignments
        balance = self.num_experts * (frac * probs.mean(0)).sum()
        z_loss = torch.logsumexp(logits, dim=-1).square().mean()
        aux = self.balance_weight * balance + self.z_weight * z_loss
        entropy = -(probs * probs.clamp_min(1e-9).log()).sum(-1).mean()
        return aux, RouterStats(counts.detach(), entropy.detach(), balance.detach(), z_loss.detach())
