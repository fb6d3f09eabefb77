import torch

from lightning_micro.core.sparse_format import bitmask_decode, bitmask_encode


def test_round_trip_is_exact_and_small():
    torch.manual_seed(0)
    w = torch.randn(300, 100)
    w[torch.rand_like(w) < 0.95] = 0.0
    parts = bitmask_encode(w)
    assert torch.equal(bitmask_decode(parts), w)
    stored = sum(t.numel() * t.element_size() for t in parts.values())
    assert stored < w.numel() * 4 / 8  # > 8x smaller than dense fp32 at 95% sparsity


def test_odd_sizes_and_all_zero():
    for shape in [(7,), (3, 5, 1, 1), (0, 4)]:
        w = torch.zeros(shape)
        if w.numel():
            w.view(-1)[::2] = 1.5
        assert torch.equal(bitmask_decode(bitmask_encode(w)), w)
