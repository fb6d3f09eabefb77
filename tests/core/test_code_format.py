"""Integer codes storage: lossless in every form, and small where the data allows."""

from __future__ import annotations

import pytest
import torch

from lightning_micro.core.code_format import SPARSE, decode_codes, encode_codes


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int32])
def test_round_trip_dense_random(dtype):
    torch.manual_seed(0)
    high = 200 if dtype != torch.int8 else 100
    codes = torch.randint(0, high, (37, 11)).to(dtype)
    assert torch.equal(decode_codes(encode_codes(codes)), codes)


def test_round_trip_edge_cases():
    for codes in (torch.zeros(5, dtype=torch.int8), torch.tensor([3], dtype=torch.int8),
                  torch.full((2, 3), -7, dtype=torch.int8), torch.zeros(0, dtype=torch.int8)):
        assert torch.equal(decode_codes(encode_codes(codes)), codes)


@pytest.mark.parametrize("gap", [1, 254, 255, 256, 510, 511, 5000])
def test_sparse_positions_survive_long_gaps(gap):
    codes = torch.zeros(3 * gap + 10, dtype=torch.int8)
    codes[[0, gap, 2 * gap + 1, -1]] = torch.tensor([5, -3, 7, 1], dtype=torch.int8)
    assert torch.equal(decode_codes(encode_codes(codes)), codes)


def test_four_bit_codes_take_half_a_byte_and_sparse_codes_take_less():
    torch.manual_seed(0)
    codes = torch.randint(-7, 8, (100, 100), dtype=torch.int8)
    assert encode_codes(codes)["blob"].numel() <= codes.numel() // 2
    codes[torch.rand(codes.shape) < 0.95] = 0
    parts = encode_codes(codes)
    assert int(parts["header"][0]) == SPARSE
    nonzero = int((codes != 0).sum())
    assert parts["blob"].numel() < 1.6 * nonzero  # position byte + half a byte per non-zero, before LZMA
    assert torch.equal(decode_codes(parts), codes)


def test_non_integer_input_is_refused():
    with pytest.raises(ValueError, match="integer codes"):
        encode_codes(torch.zeros(3))
