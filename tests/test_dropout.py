"""The models' dropout (lfbyte/model/dropout.py): nn.Dropout's distribution from a cheaper mask, the same mask in
the forward and the backward pass, eager and compiled, and an independent mask at every site of a compiled graph."""

from __future__ import annotations

import pytest
import torch

from lfbyte import GPT, LFByteTransformer
from lfbyte.model.dropout import Dropout, dropout, keep_mask


def test_the_mask_draws_fifteen_fair_coins_per_element() -> None:
    # each threshold d keeps an element when its 15 bits are >= d: the kept fraction is 1 - d / 2**15 for every d,
    # which it is only if all 15 bits are fair; an odd n uses half of the last draw
    n = 200_001
    for drop in (1, 2**7, 2**11, 3 * 2**12, 2**14, 2**15 - 2**10):
        keep = keep_mask(torch.tensor(drop), n, drop)
        assert keep.shape == (n,) and keep.dtype == torch.bool
        q = drop / 2**15
        assert abs(1 - keep.float().mean().item() - q) < 5 * (q * (1 - q) / n) ** 0.5, drop
    # the two halves of one draw are independent: pairs of neighbours are both dropped q**2 of the time
    dropped = ~keep_mask(torch.tensor(0), 400_000, 2**14).view(-1, 2)
    assert abs(dropped.all(dim=1).float().mean().item() - 0.25) < 5 * (0.25 * 0.75 / 200_000) ** 0.5


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_drops_p_and_keeps_the_expectation(p: float) -> None:
    torch.manual_seed(0)
    y = dropout(torch.ones(400_000), p)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 5 * (p * (1 - p) / 4e5) ** 0.5 + 2**-15
    kept = y[y != 0]
    assert torch.all(kept == kept[0]) and abs(kept[0].item() - 1 / (1 - p)) < 2e-4
    assert abs(y.mean().item() - 1) < 0.01


def test_dropout_is_the_identity_in_eval_or_at_zero_and_seeded_in_training() -> None:
    x = torch.randn(4, 8, 16)
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0) is x
    torch.manual_seed(1)
    a = dropout(x, 0.3)
    torch.manual_seed(1)
    assert torch.equal(a, dropout(x, 0.3))
    assert not torch.equal(a, dropout(x, 0.3))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)


def _sites(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return dropout(x, 0.25) * w, dropout(x, 0.25) * w  # two sites with the same shape and p


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_the_backward_uses_the_forward_mask_and_each_site_has_its_own(compiled: bool) -> None:
    fn = torch.compile(_sites, backend="inductor", fullgraph=True) if compiled else _sites
    torch.manual_seed(0)
    x = torch.randn(8, 64, 32, requires_grad=True)
    w = torch.randn(8, 64, 32)
    a, b = fn(x, w)
    gx, = torch.autograd.grad((a + 2 * b).sum(), x)
    scale = 1 / (1 - 0.25)
    keep_a, keep_b = a != 0, b != 0
    assert not torch.equal(keep_a, keep_b)  # a compiled graph must not merge the two draws
    torch.testing.assert_close(gx, w * scale * (keep_a.float() + 2 * keep_b.float()))
    for keep in (keep_a, keep_b):
        assert abs(1 - keep.float().mean().item() - 0.25) < 0.02


@pytest.mark.parametrize("cls", [LFByteTransformer, GPT])
def test_the_models_use_it_and_their_state_dicts_do_not_change(cls: type) -> None:
    model = cls(seq_len=32, embed_dim=32, num_layers=1, num_heads=2, dropout=0.2)
    assert any(isinstance(m, Dropout) for m in model.modules())
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    assert set(model.state_dict()) == set(cls(seq_len=32, embed_dim=32, num_layers=1, num_heads=2).state_dict())
    idx = torch.randint(0, 256, (2, 32))
    model.train()
    assert not torch.equal(model(idx).logits, model(idx).logits)
    model.eval()
    assert torch.equal(model(idx).logits, model(idx).logits)
