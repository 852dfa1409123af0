"""Bad numbers get a clear error, not a silent NaN or a wrong code."""
import math

import pytest
import torch

import pqgan_kernels
from pqgan import pack_indices, unpack_indices


def _ema_args(**overrides):
    g = torch.Generator().manual_seed(0)
    S, K, d, N = 2, 5, 3, 8
    args = dict(x=torch.randn(N, S * d, generator=g), indices=torch.randint(0, K, (N, S), generator=g),
                codebooks=torch.randn(S, K, d, generator=g), cluster_size=torch.ones(S, K),
                embed_sum=torch.randn(S, K, d, generator=g), decay=0.9, eps=1e-5)
    args.update(overrides)
    return args


@pytest.mark.parametrize("name,value", [("eps", math.inf), ("eps", math.nan), ("eps", -1.0), ("decay", math.nan),
                                        ("decay", math.inf), ("decay", -0.1)])
def test_ema_update_refuses_non_finite_or_out_of_range(name, value):
    args = _ema_args(**{name: value})
    before = args["codebooks"].clone()
    with pytest.raises(ValueError, match=name):
        pqgan_kernels.pq_ema_update(**args, backend="reference")
    assert torch.equal(args["codebooks"], before)


def test_unpack_refuses_bytes_that_decode_past_k():
    # K = 5 needs 3 bits; the pattern 0b111 = 7 is no code of K = 5
    packed = torch.tensor([[0b00000111]], dtype=torch.uint8)  # first code 7, second 0
    with pytest.raises(ValueError, match="index 7.*K=5"):
        unpack_indices(packed, 2, 5)
    assert unpack_indices(torch.tensor([[0b00100100]], dtype=torch.uint8), 2, 5).tolist() == [[4, 4]]


def test_pack_refuses_out_of_range_indices():
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        pack_indices(torch.tensor([[1, 5]]), 5)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        pack_indices(torch.tensor([[-1, 2]]), 5)
