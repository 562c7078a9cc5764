"""Token-level top-k mixture of SwiGLU experts with sorted dispatch and no dropped tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
    sorted by expert, each expert runs one matmul on exactly its tokens (a token is
    never dropped, an expert never sees a token not routed to it), and the gated
    outputs are scattered back with ``index_add_``.

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
        """Run expert ``e`` on tokens x: (n, dim)."""
        a, b = F.linear(x, self.w_in[e]).chunk(2, dim=-1)
        return F.linear(F.silu(a) * b, self.w_out[e])

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x: (n, dim) -> router logits (n, E), probs (n, E), gates (n, k), experts (n, k)."""
        logits = self.router(x).float()
        probs = logits.softmax(dim=-1)
        top_p, top_e = probs.topk(self.top_k, dim=-1)
        return logits, probs, top_p / top_p.sum(-1, keepdim=True), top_e

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, RouterStats]:
        """x: (..., dim) -> output like x, weighted aux loss (scalar), stats."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits, probs, gates, experts = self.route(flat)

        assignment = experts.reshape(-1)  # (n*k,), token i's j-th choice at i*k + j
        order = assignment.argsort(stable=True)
        token_of = order // self.top_k
        counts = torch.bincount(assignment, minlength=self.num_experts)
        routed = flat[token_of]
        # Every expert runs, even on zero tokens, so all parameters join the graph (DDP).
        outs = [self.expert(e, xs) for e, xs in enumerate(routed.split(counts.tolist()))]
        weighted = torch.cat(outs) * gates.reshape(-1)[order, None].to(outs[0].dtype)
        out = torch.zeros_like(flat, dtype=weighted.dtype).index_add_(0, token_of, weighted)

        frac = counts.float() / assignment.numel()
        balance = self.num_experts * (frac * probs.mean(0)).sum()
        z_loss = torch.logsumexp(logits, dim=-1).square().mean()
        aux = self.balance_weight * balance + self.z_weight * z_loss
        entropy = -(probs * probs.clamp_min(1e-9).log()).sum(-1).mean()
        stats = RouterStats(counts.detach(), entropy.detach(), balance.detach(), z_loss.detach())
        return out.to(x.dtype).reshape(shape), aux, stats
