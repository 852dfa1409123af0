import pytest
import torch

from pqgan import bits_per_code, pack_indices, unpack_indices


@pytest.mark.parametrize("K,bits", [(1, 0), (2, 1), (3, 2), (128, 7), (257, 9), (512, 9), (65536, 16)])
def test_bits_per_code(K, bits):
    assert bits_per_code(K) == bits


@pytest.mark.parametrize("S,K", [(1, 2), (3, 5), (64, 512), (7, 65536), (4, 1), (5, 257)])
def test_pack_round_trip_and_size(S, K):
    idx = torch.randint(K, (2, 3, S))
    packed = pack_indices(idx, K)
    assert packed.dtype == torch.uint8
    assert packed.shape == (2, 3, (S * bits_per_code(K) + 7) // 8)
    assert torch.equal(unpack_indices(packed, S, K), idx)


def test_unpack_rejects_wrong_size():
    with pytest.raises(ValueError, match="bytes per position"):
        unpack_indices(torch.zeros(3, 5, dtype=torch.uint8), 64, 512)
