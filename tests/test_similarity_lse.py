"""The chunked similarity-LSE reference against its dense form, and its gradients."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sslfast.reference.similarity import similarity_lse, similarity_lse_dense


def _inputs(nq, nk, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(nq, d, generator=g, dtype=dtype).requires_grad_()
    k = torch.randn(nk, d, generator=g, dtype=dtype).requires_grad_()
    a = (torch.rand(nq, generator=g, dtype=dtype) + 0.5).requires_grad_()
    self_index = torch.randint(-1, nk, (nq,), generator=g)
    return q, k, a, self_index


@given(
    nq=st.integers(1, 40), nk=st.integers(2, 40), d=st.integers(1, 9),
    period=st.sampled_from([0, 2, 3, 7]), chunk=st.integers(1, 17), seed=st.integers(0, 2**31 - 1),
)
def test_chunked_matches_dense(nq, nk, d, period, chunk, seed):
    q, k, a, self_index = _inputs(nq, nk, d, torch.float64, seed)
    # period >= 2 and nk >= 2 always leave each row at least one kept column
    got = similarity_lse(q, k, a, self_index, period, chunk_rows=chunk)
    want = similarity_lse_dense(q, k, a, self_index, period)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    upstream = torch.randn(nq, dtype=torch.float64)
    grads = torch.autograd.grad(got, (q, k, a), upstream)
    grads_want = torch.autograd.grad(want, (q, k, a), upstream)
    for g1, g2 in zip(grads, grads_want):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("period", [0, 4])
def test_gradcheck_fp64(period):
    q, k, a, self_index = _inputs(9, 12, 5, torch.float64, 1)
    f = lambda q, k, a: similarity_lse(q, k, a, self_index, period, chunk_rows=4)  # noqa: E731
    assert torch.autograd.gradcheck(f, (q, k, a))


def test_shared_q_and_k_accumulates_both_gradients():
    z = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    f = lambda z: similarity_lse(z, z, 3.0, torch.arange(8), chunk_rows=3)  # noqa: E731
    assert torch.autograd.gradcheck(f, (z,))


def test_float32_block_for_half_inputs():
    q, k, a, self_index = _inputs(6, 7, 4, torch.float16, 3)
    got = similarity_lse(q, k, a.detach().float(), self_index)
    assert got.dtype == torch.float32
    want = similarity_lse_dense(q.double(), k.double(), a.double(), self_index)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
