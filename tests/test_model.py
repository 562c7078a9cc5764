"""Behaviour of the model and its parts: causality, incremental decoding, MoE dispatch, cost."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lfbyte import GPT, LFByteTransformer
from lfbyte.model import (
    AdaptiveLinear,
    MixtureOfExperts,
    TokenMixing,
    build_model,
    channel_decay_mix,
    decay_mix,
    delta_mix,
)
from lfbyte.model.causal_conv import causal_conv_silu

TINY = dict(seq_len=96, embed_dim=64, num_layers=2, num_heads=4, adapt_dim=16, adapt_rank=8, chunk_size=16)


def _models() -> list[nn.Module]:
    torch.manual_seed(0)
    return [
        LFByteTransformer(**TINY, num_experts=4, top_k=2),
        LFByteTransformer(**TINY, num_experts=1),
        LFByteTransformer(**TINY, num_experts=1, short_conv=4),
        LFByteTransformer(**TINY, num_experts=1, short_conv=4, channel_decay=True),
        LFByteTransformer(**TINY, num_experts=1, short_conv=4, delta_rule=True),
        LFByteTransformer(**TINY, num_experts=1, short_conv=4, delta_rule=[1]),  # a hybrid: layer 0 decays and adds
        GPT(seq_len=96, embed_dim=64, num_layers=2, num_heads=4),
    ]


MODEL_IDS = ["lfbyte-moe", "lfbyte-dense", "lfbyte-short-conv", "lfbyte-channel-decay", "lfbyte-delta-rule",
             "lfbyte-delta-hybrid", "gpt"]


def _perturb_adaptive(model: nn.Module) -> None:
    """AdaptiveLinear's up-projection starts at zero; give it values so the adaptive path is live."""
    for mod in model.modules():
        if isinstance(mod, AdaptiveLinear):
            nn.init.normal_(mod.up, std=0.05)


@pytest.mark.parametrize("model", _models(), ids=MODEL_IDS)
def test_causal_future_bytes_do_not_change_past_logits(model: nn.Module) -> None:
    _perturb_adaptive(model)
    model.eval()
    x = torch.randint(0, 256, (3, 80))
    y = x.clone()
    y[:, 50:] = torch.randint(0, 256, (3, 30))
    a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[:, :50], b[:, :50], atol=1e-5, rtol=1e-5)
    assert (a[:, 50:] - b[:, 50:]).abs().max() > 1e-3  # and the future does matter where it should


@pytest.mark.parametrize("model", _models(), ids=MODEL_IDS)
def test_incremental_decoding_equals_full_forward(model: nn.Module) -> None:
    _perturb_adaptive(model)
    model.eval()
    x = torch.randint(0, 256, (2, 70))
    full = model(x).logits
    state, steps = model.init_state(), []
    for t in range(x.shape[1]):
        out = model(x[:, t : t + 1], state=state)
        state = out.state
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)
    # a prefill of any length followed by more bytes also continues exactly
    first = model(x[:, :37], use_cache=True)
    rest = model(x[:, 37:], state=first.state)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("length", [1, 15, 16, 17, 96])
def test_any_length_up_to_seq_len_and_batch(length: int) -> None:
    torch.manual_seed(0)
    model = LFByteTransformer(**TINY, num_experts=2, top_k=1)
    x = torch.randint(0, 256, (5, length))
    out = model(x, targets=x)
    assert out.logits.shape == (5, length, 257)
    assert torch.isfinite(out.loss)
    # each batch row is independent of the others (no cross-sample leakage)
    single = model(x[2:3]).logits
    torch.testing.assert_close(out.logits[2:3], single, atol=1e-5, rtol=1e-5)


def test_longer_than_seq_len_is_a_clear_error() -> None:
    model = LFByteTransformer(**TINY)
    with pytest.raises(ValueError, match="exceed seq_len=96"):
        model(torch.zeros(1, 97, dtype=torch.long))


@pytest.mark.parametrize("chunk_size", [8, 64])  # many chunks (padded), one chunk
@pytest.mark.parametrize("carried", [False, True])
def test_decay_mix_matches_naive_recurrence(chunk_size: int, carried: bool) -> None:
    torch.manual_seed(0)
    b, h, t, d = 2, 3, 41, 8
    q, k, v = torch.randn(b, h, t, d), torch.randn(b, h, t, d), torch.randn(b, h, t, d)
    log_decay = -torch.rand(b, h, t)
    s0 = torch.randn(b, h, d, d) if carried else torch.zeros(b, h, d, d)
    out, s_end = decay_mix(q, k, v, log_decay, chunk_size=chunk_size, state=s0 if carried else None)
    s, ref = s0.clone(), []
    for i in range(t):
        s = log_decay[:, :, i, None, None].exp() * s + k[:, :, i, :, None] * v[:, :, i, None, :]
        ref.append(torch.einsum("bhd,bhde->bhe", q[:, :, i], s))
    torch.testing.assert_close(out, torch.stack(ref, 2), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s_end, s, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("t", [1, 7, 16, 41])  # one byte, inside one chunk, exactly one chunk, padded chunks
@pytest.mark.parametrize("carried", [False, True])
def test_channel_decay_mix_matches_naive_recurrence(t: int, carried: bool) -> None:
    torch.manual_seed(0)
    b, h, dk, dv = 2, 3, 8, 5
    q, k, v = torch.randn(b, h, t, dk), torch.randn(b, h, t, dk), torch.randn(b, h, t, dv)
    log_decay = -torch.rand(b, h, t, dk) * torch.rand(1, 1, 1, dk)  # channels of different speeds, up to γ = 1/e
    s0 = torch.randn(b, h, dk, dv) if carried else torch.zeros(b, h, dk, dv)
    out, s_end = channel_decay_mix(q, k, v, log_decay, chunk_size=16, state=s0 if carried else None)
    s, ref = s0.clone(), []
    for i in range(t):
        s = log_decay[:, :, i, :, None].exp() * s + k[:, :, i, :, None] * v[:, :, i, None, :]
        ref.append(torch.einsum("bhd,bhde->bhe", q[:, :, i], s))
    torch.testing.assert_close(out, torch.stack(ref, 2), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s_end, s, atol=1e-4, rtol=1e-4)


def test_channel_decay_mix_with_equal_channels_is_decay_mix() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, 150, 8), torch.randn(2, 2, 150, 8), torch.randn(2, 2, 150, 8)
    log_decay = -torch.rand(2, 2, 150)
    per_channel = channel_decay_mix(q, k, v, log_decay[..., None].expand(-1, -1, -1, 8), chunk_size=64)
    for a, b in zip(per_channel, decay_mix(q, k, v, log_decay, chunk_size=64), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channel_decay_stays_finite_at_its_fastest_decay(dtype: torch.dtype) -> None:
    """Every channel at the clamp (γ = 1/e per byte) over a full 64-byte chunk of large keys: the factorised
    exponents reach e^±32, and output and gradients stay finite."""
    torch.manual_seed(0)
    mixer = TokenMixing(dim=32, num_heads=2, adapt_dim=8, adapt_rank=4, seq_len=256, chunk_size=64,
                        channel_decay=True)
    with torch.no_grad():
        mixer.decay_bias.fill_(30.0)  # softplus far above 1: the clamp decides
    x = (10 * torch.randn(2, 200, 32)).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y, _ = mixer(x, torch.randn(2, 200, 8))
    y.float().square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in mixer.parameters() if p.grad is not None)


def test_channel_decay_spreads_each_heads_channels_over_the_context() -> None:
    mixer = TokenMixing(dim=32, num_heads=2, adapt_dim=8, adapt_rank=4, seq_len=256, channel_decay=True)
    half_lives = math.log(2) / F.softplus(mixer.decay_bias.detach().double())
    assert half_lives.shape == (2, 16)
    for head in half_lives:
        torch.testing.assert_close(head[[0, -1]], torch.tensor([1.0, 256.0], dtype=torch.double), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="pure-torch mixer only"):
        TokenMixing(dim=32, num_heads=2, adapt_dim=8, adapt_rank=4, seq_len=256, channel_decay=True,
                    mixer_kernel="fla")


def _naive_delta_rule(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, beta: Tensor,
                      s: Tensor) -> tuple[Tensor, Tensor]:
    """``S_t = γ_t (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ``, ``o_t = q_t S_t``, one position at a time."""
    out = []
    for i in range(q.shape[2]):
        s = log_decay[:, :, i, None, None].exp() * s
        k_i, b_i = k[:, :, i], beta[:, :, i, None, None]
        stored = torch.einsum("bhd,bhde->bhe", k_i, s)  # what the state holds under k_i
        s = s + b_i * k_i[..., :, None] * (v[:, :, i] - stored)[..., None, :]
        out.append(torch.einsum("bhd,bhde->bhe", q[:, :, i], s))
    return torch.stack(out, 2), s


@pytest.mark.parametrize("t", [1, 7, 16, 41])  # one byte, inside one chunk, exactly one chunk, padded chunks
@pytest.mark.parametrize("carried", [False, True])
def test_delta_mix_and_its_gradients_match_the_recurrence(t: int, carried: bool) -> None:
    torch.manual_seed(0)
    b, h, dk, dv = 2, 3, 8, 5
    f64 = dict(dtype=torch.float64)
    q, v = torch.randn(b, h, t, dk, **f64), torch.randn(b, h, t, dv, **f64)
    k = F.normalize(torch.randn(b, h, t, dk, **f64), dim=-1)
    log_decay, beta = -torch.rand(b, h, t, **f64), torch.rand(b, h, t, **f64)
    s0 = torch.randn(b, h, dk, dv, **f64)
    inputs = [x.requires_grad_() for x in (q, k, v, log_decay, beta)]
    out, s_end = delta_mix(q, k, v, log_decay, beta, chunk_size=16, state=s0 if carried else None)
    ref, s_ref = _naive_delta_rule(q, k, v, log_decay, beta, s0 if carried else torch.zeros_like(s0))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(s_end, s_ref)
    weights = torch.randn_like(out)  # a loss that reads every output and the state
    grads = torch.autograd.grad((out * weights).sum() + s_end.sum(), inputs, allow_unused=True, materialize_grads=True)
    ref_grads = torch.autograd.grad((ref * weights).sum() + s_ref.sum(), inputs, allow_unused=True,
                                    materialize_grads=True)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


def test_delta_rule_replaces_what_a_key_stores() -> None:
    """β = 1 and no decay: writing v1 then v2 under the same key leaves v2 (decay-and-add would hold v1 + v2)."""
    k = F.normalize(torch.randn(1, 1, 1, 8), dim=-1).expand(1, 1, 2, 8)
    v = torch.randn(1, 1, 2, 4)
    out, _ = delta_mix(k, k, v, torch.zeros(1, 1, 2), torch.ones(1, 1, 2), chunk_size=64)
    torch.testing.assert_close(out[:, :, 1], v[:, :, 1])
    added, _ = decay_mix(k, k, v, torch.zeros(1, 1, 2), chunk_size=64)
    torch.testing.assert_close(added[:, :, 1], v[:, :, 0] + v[:, :, 1])


def test_delta_rule_refuses_what_it_cannot_run_with() -> None:
    for extra in ({"channel_decay": True}, {"mixer_kernel": "fla"}):
        with pytest.raises(ValueError, match=r"delta_rule \(in any layer\) takes one decay per head"):
            TokenMixing(dim=32, num_heads=2, adapt_dim=8, adapt_rank=4, seq_len=64, delta_rule=True, **extra)


def test_delta_rule_in_the_listed_layers_only() -> None:
    """A list puts the delta rule in those layers (the others decay and add); the same model as one built with it
    everywhere, but for the other layers' mixing."""
    cfg = dict(TINY, num_layers=4, num_experts=1)
    model = LFByteTransformer(**cfg, delta_rule=[1, 3])
    assert model.config.delta_rule == (1, 3)
    assert [b.mixer.delta_rule for b in model.blocks] == [False, True, False, True]
    everywhere, nowhere = LFByteTransformer(**cfg, delta_rule=True), LFByteTransformer(**cfg, delta_rule=[])
    for i, block in enumerate(model.blocks):  # each layer has the parameters of its kind
        like = (everywhere if i in (1, 3) else nowhere).blocks[i]
        assert {n: p.shape for n, p in block.named_parameters()} == {n: p.shape for n, p in like.named_parameters()}
    assert nowhere.flops_per_token() < model.flops_per_token() < everywhere.flops_per_token()
    assert model.flops_per_token() == pytest.approx((nowhere.flops_per_token() + everywhere.flops_per_token()) / 2)
    for bad in ([4], [-1], [1, 1], [3, 1], "last", [True], 3):
        with pytest.raises(ValueError, match="must be true, false or a list of 0-based layer indices in increasing"):
            LFByteTransformer(**cfg, delta_rule=bad)


@pytest.mark.parametrize("kernel_size", [1, 2, 4])
def test_causal_conv_is_conv1d_with_its_own_backward_and_continues_from_its_cache(kernel_size: int) -> None:
    torch.manual_seed(0)
    u, w, b = (torch.randn(*shape, dtype=torch.float64, requires_grad=True)
               for shape in ((2, 7, 5), (5, kernel_size), (5,)))
    reference = F.silu(F.conv1d(u.transpose(1, 2), w[:, None], b, padding=kernel_size - 1, groups=5)[..., :7])
    y, _ = causal_conv_silu(u, w, b)
    torch.testing.assert_close(y, reference.transpose(1, 2))
    assert torch.autograd.gradcheck(lambda *a: causal_conv_silu(*a)[0], (u, w, b))
    for split in (1, 2, 6):  # a first part shorter than the window, then the rest from the cache
        first, cache = causal_conv_silu(u[:, :split], w, b)
        rest, _ = causal_conv_silu(u[:, split:], w, b, cache)
        torch.testing.assert_close(torch.cat([first, rest], 1), y)


def test_token_mixing_mixes_positions_not_only_features() -> None:
    torch.manual_seed(0)
    mixer = TokenMixing(dim=32, num_heads=2, adapt_dim=8, adapt_rank=4, seq_len=64, chunk_size=16)
    x, c = torch.randn(1, 20, 32), torch.randn(1, 20, 8)
    base, _ = mixer(x, c)
    x2 = x.clone()
    x2[:, 3] += 1.0  # change one early position only
    moved, _ = mixer(x2, c)
    assert (moved[:, 10] - base[:, 10]).abs().max() > 1e-4  # a later position sees it
    torch.testing.assert_close(moved[:, :3], base[:, :3])  # earlier ones do not


@pytest.mark.parametrize("num_heads", [1, 2, 4])
def test_initial_half_lives_span_one_byte_to_the_context(num_heads: int) -> None:
    """Heads start with half-lives from 1 byte to seq_len (geometric); a single head starts in the middle, not at
    1 byte, where it would forget each byte at the next."""
    mixer = TokenMixing(dim=32, num_heads=num_heads, adapt_dim=8, adapt_rank=4, seq_len=256)
    half_lives = math.log(2) / F.softplus(mixer.decay_bias.detach().double())
    expected = [16.0] if num_heads == 1 else [256 ** (i / (num_heads - 1)) for i in range(num_heads)]
    torch.testing.assert_close(half_lives, torch.tensor(expected, dtype=torch.double), rtol=1e-5, atol=0)


def test_moe_equals_dense_reference_with_same_routing() -> None:
    torch.manual_seed(0)
    moe = MixtureOfExperts(dim=16, hidden=24, num_experts=4, top_k=2)
    x = torch.randn(3, 7, 16)
    out, aux, stats = moe(x)
    flat = x.reshape(-1, 16)
    _, _, gates, experts = moe.route(flat)
    every = torch.stack([moe.expert(e, flat) for e in range(4)], 1)  # every expert on every token
    picked = every.gather(1, experts[..., None].expand(-1, -1, 16))
    ref = (picked * gates[..., None]).sum(1).reshape(3, 7, 16)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert int(stats.expert_load.sum()) == 21 * 2  # no dropped tokens
    assert torch.isfinite(aux)


def test_gradients_reach_router_and_every_part() -> None:
    torch.manual_seed(0)
    model = LFByteTransformer(**TINY, num_experts=4, top_k=2)
    _perturb_adaptive(model)
    x = torch.randint(0, 256, (4, 64))
    out = model(x, targets=x)
    (out.loss + out.aux_loss).backward()
    router = model.blocks[0].ffn.router.weight
    assert router.grad is not None and router.grad.abs().sum() > 0
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_adaptive_linear_depends_on_context_and_stays_cheap() -> None:
    torch.manual_seed(0)
    layer = AdaptiveLinear(512, 512, adapt_dim=512, rank=32)
    linear = nn.Linear(512, 512)
    n_adapt = sum(p.numel() for p in layer.parameters())
    n_plain = sum(p.numel() for p in linear.parameters())
    assert n_adapt <= 2 * n_plain
    nn.init.normal_(layer.up, std=0.1)
    x = torch.randn(2, 5, 512)
    c1, c2 = torch.randn(2, 5, 512), torch.randn(2, 5, 512)
    assert (layer(x, c1) - layer(x, c2)).abs().max() > 1e-3
    # the effective weight W + U diag(g(c)) V, materialised, gives the same output
    c = c1[0, 0]
    w_eff = layer.weight + layer.up @ torch.diag(layer.gate(c)) @ layer.down
    torch.testing.assert_close(layer(x[0, 0], c), x[0, 0] @ w_eff.T + layer.bias, atol=1e-4, rtol=1e-4)
    # and so does the other form, taken for as many positions as outputs ([W U] [x; g ⊙ V x] in one matmul)
    many = torch.randn(600, 512)
    torch.testing.assert_close(layer(many, c.expand(600, -1)), many @ w_eff.T + layer.bias, atol=1e-4, rtol=1e-4)


def test_adaptive_linear_flops_within_2x_of_linear() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    layer, linear = AdaptiveLinear(512, 512, adapt_dim=512, rank=32), nn.Linear(512, 512)
    x, c = torch.randn(4, 512), torch.randn(4, 512)
    with FlopCounterMode(display=False) as fa:
        layer(x, c)
    with FlopCounterMode(display=False) as fl:
        linear(x)
    assert fa.get_total_flops() <= 2 * fl.get_total_flops()


def test_parameter_count_and_flops_reported() -> None:
    model = LFByteTransformer(**TINY)
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    assert model.flops_per_token() > 2 * model.num_parameters() * 0.3


def test_unknown_option_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown LFByteTransformer option"):
        LFByteTransformer(embed_dims=64)


def test_moe_grouped_dispatch_handles_idle_experts_and_bf16() -> None:
    torch.manual_seed(0)
    moe = MixtureOfExperts(dim=16, hidden=24, num_experts=4, top_k=1)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[2, 0] = 10.0  # tokens with x[:, 0] > 0 go to expert 2, the rest to expert 0 or 1
    x = torch.randn(2, 9, 16)
    out, _, stats = moe(x)
    assert stats.expert_load[3] == 0 and stats.expert_load[2] > 0  # an idle expert is fine
    flat = x.reshape(-1, 16)
    _, _, gates, experts = moe.route(flat)
    ref = torch.stack([gates[i, 0] * moe.expert(int(experts[i, 0]), flat[i : i + 1])[0] for i in range(18)])
    torch.testing.assert_close(out.reshape(-1, 16), ref, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert moe.w_in.grad[3].abs().sum() == 0 and moe.w_in.grad[2].abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 expert matmuls stay close to fp32
        low, _, _ = moe(x)
    assert low.dtype == x.dtype  # output comes back in the residual stream's dtype
    torch.testing.assert_close(low.float(), out.detach(), atol=2e-2, rtol=2e-2)


def test_adaptive_linear_loads_weights_saved_as_separate_w_and_v() -> None:
    torch.manual_seed(0)
    layer = AdaptiveLinear(8, 6, adapt_dim=4, rank=2)
    old = {k: v for k, v in layer.state_dict().items() if k != "weight_down"}
    old["weight"], old["down"] = torch.randn(6, 8), torch.randn(2, 8)
    fresh = AdaptiveLinear(8, 6, adapt_dim=4, rank=2)
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.weight, old["weight"])
    torch.testing.assert_close(fresh.down, old["down"])


def test_positional_signal_starts_at_the_embedding_scale() -> None:
    from lfbyte.model import PositionalEncoding

    for kind in ("sinusoidal", "learned"):
        pe = PositionalEncoding(64, 512, kind)
        rms = float(pe.table.detach().pow(2).mean().sqrt())
        assert 0.015 < rms < 0.025, (kind, rms)  # like the 0.02-std byte embeddings: neither drowns the other


@pytest.mark.parametrize("dim", [16, 10], ids=["grouped-matmul", "per-expert-fallback"])
def test_moe_fast_and_fallback_dispatch_match_the_dense_reference(dim: int) -> None:
    torch.manual_seed(0)
    moe = MixtureOfExperts(dim=dim, hidden=24, num_experts=3, top_k=2)
    assert moe._grouped_mm_supported(torch.zeros(1, dim)) == (dim == 16)  # 10 fp32 values: rows not 16-byte aligned
    x = torch.randn(4, 5, dim)
    out, _, _ = moe(x)
    flat = x.reshape(-1, dim)
    _, _, gates, experts = moe.route(flat)
    every = torch.stack([moe.expert(e, flat) for e in range(3)], 1)
    ref = (every.gather(1, experts[..., None].expand(-1, -1, dim)) * gates[..., None]).sum(1)
    torch.testing.assert_close(out.reshape(-1, dim), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["lfbyte", "gpt"])
def test_num_parameters_without_embeddings_leaves_out_the_lookup_tables(arch: str) -> None:
    from lfbyte.config import model_preset

    base = model_preset("tiny" if arch == "lfbyte" else "gpt_tiny")
    vocab_table, pos_table = 257 * base["embed_dim"], base["seq_len"] * base["embed_dim"]
    for tied in (True, False):
        model = build_model({**base, "pos_encoding": "learned", "tie_embeddings": tied})
        left_out = model.num_parameters() - model.num_parameters(exclude_embeddings=True)
        assert left_out == pos_table + (0 if tied else vocab_table)  # a tied table is the head's matmul weight


@pytest.mark.parametrize(("attn_dropout", "dropped"), [(None, True), (0.0, False), (0.25, True)])
def test_gpt_attention_dropout_defaults_to_dropout_and_can_be_turned_off(attn_dropout: float | None,
                                                                        dropped: bool) -> None:
    # attn_dropout=0 keeps residual dropout only (LFByteTransformer's placement): attention is then deterministic
    torch.manual_seed(0)
    model = GPT(embed_dim=32, num_layers=1, num_heads=2, seq_len=16, dropout=0.5, attn_dropout=attn_dropout)
    attn, x = model.blocks[0].attn, torch.randn(2, 16, 32)
    train_out = attn.train()(x, None, None)[0]
    eval_out = attn.eval()(x, None, None)[0]
    assert torch.equal(train_out, eval_out) is not dropped
