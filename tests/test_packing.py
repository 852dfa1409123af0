"""Bit-packing of PQ indices: sizes, round trips, and the exact bytes (little-endian bit stream, code s at bit
offset s * ceil(log2 K)), checked against Python's own integer-to-bytes conversion and hand-worked cases."""
import pytest
import torch

from pqgan import bits_per_code, pack_indices, unpack_indices
from pqgan.packing import packed_bytes


@pytest.mark.parametrize("K,bits", [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (128, 7), (129, 8), (257, 9), (512, 9),
                                    (65536, 16)])
def test_bits_per_code(K, bits):
    assert bits_per_code(K) == bits


@pytest.mark.parametrize("S,K,nbytes", [(1, 2, 1), (8, 2, 1), (9, 2, 2), (64, 512, 72), (3, 5, 2), (4, 1, 0)])
def test_packed_bytes(S, K, nbytes):
    assert packed_bytes(S, K) == nbytes


@pytest.mark.parametrize("S,K,codes,expected", [
    (2, 8, [5, 3], [29]),            # 101 | 011 -> bits 1,0,1, 1,1,0, pad 0,0 (LSB first) = 1+4+8+16
    (1, 512, [259], [3, 1]),         # 259 = 0b1_0000_0011: low byte 3, then bit 8 -> 1
    (3, 5, [4, 1, 2], [140, 0]),     # bits 0,0,1, 1,0,0, 0,1,0 -> byte 0 = 4+8+128, byte 1 holds bit 8 = 0
    (1, 65536, [0x1234], [0x34, 0x12]),
    (10, 2, [1, 0, 0, 0, 0, 0, 0, 0, 0, 1], [1, 2]),
    (2, 512, [511, 0], [255, 1, 0]),
    (4, 1, [0, 0, 0, 0], []),        # K = 1: zero bits per code
])
def test_exact_bytes_hand_worked(S, K, codes, expected):
    idx = torch.tensor([codes])
    packed = pack_indices(idx, K)
    assert packed.dtype == torch.uint8 and packed.tolist() == [expected]
    assert unpack_indices(packed, S, K).tolist() == [codes]


def _python_pack(codes, K):
    """The same layout by Python integer arithmetic: code s occupies bits [s*b, (s+1)*b) of a little-endian int."""
    b = bits_per_code(K)
    value = sum(int(c) << (s * b) for s, c in enumerate(codes))
    return list(value.to_bytes(packed_bytes(len(codes), K), "little"))


@pytest.mark.parametrize("S,K", [(1, 2), (3, 5), (64, 512), (7, 65536), (4, 1), (5, 257), (13, 3)])
def test_pack_matches_python_integers_and_round_trips(S, K):
    g = torch.Generator().manual_seed(S * 1000 + K)
    idx = torch.randint(K, (2, 3, S), generator=g)
    packed = pack_indices(idx, K)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 3, packed_bytes(S, K))
    flat = packed.reshape(6, -1)
    for row, codes in zip(flat.tolist(), idx.reshape(6, S).tolist()):
        assert row == _python_pack(codes, K)
    out = unpack_indices(packed, S, K)
    assert out.dtype == torch.int64 and torch.equal(out, idx)


def test_unpack_ignores_padding_bits():
    packed = torch.tensor([[29 | 0xC0]], dtype=torch.uint8)     # S=2, K=8 uses 6 of the 8 bits
    assert unpack_indices(packed, 2, 8).tolist() == [[5, 3]]


def test_unpack_rejects_wrong_size_and_dtype():
    with pytest.raises(ValueError, match="bytes per position"):
        unpack_indices(torch.zeros(3, 5, dtype=torch.uint8), 64, 512)
    with pytest.raises(TypeError, match="uint8"):
        unpack_indices(torch.zeros(3, 72, dtype=torch.int64), 64, 512)


@pytest.mark.parametrize("S,K", [(5, 257), (4, 1)])
def test_pack_and_unpack_stay_on_the_input_device(S, K):
    """Every intermediate is made on the input's device (meta tensors: shapes only, no CPU tensor may mix in)."""
    idx = torch.zeros(2, 3, S, dtype=torch.long, device="meta")
    packed = pack_indices(idx, K)
    assert packed.device.type == "meta" and packed.shape == (2, 3, packed_bytes(S, K))
    out = unpack_indices(packed, S, K)
    assert out.device.type == "meta" and out.shape == (2, 3, S) and out.dtype == torch.int64


def test_unpack_error_names_the_sizes():
    with pytest.raises(ValueError, match=r"expected 72 bytes per position for S=64, K=512, got 5$"):
        unpack_indices(torch.zeros(2, 3, 5, dtype=torch.uint8), 64, 512)
