"""The Triton kernels of the cross-correlation losses against the reference: each primitive op
(standardisation, Gram rows, squared Frobenius norm of a cross product) and each loss in both
modes, values and gradients, under the interpreter on CPU (float32, float16) and on a GPU when
one is present (float32, float16, bfloat16); torch.library.opcheck on every op; dispatch; and the
kernels compiled for sm_90 by ptxas where no GPU is present."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sslfast import dispatch
from sslfast import functional as SF
from sslfast.ops import crosscorr as ops
from sslfast.reference import crosscorr as ref

LOSSES = ("barlow_twins", "vicreg", "mixed_barlow_twins")


def _triton_reasons(device):
    return dispatch.backends("barlow_twins")["triton"].not_supported_reasons(
        torch.empty(0, device=device), forced=True)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
pytestmark = pytest.mark.skipif(bool(_triton_reasons("cpu")) and not torch.cuda.is_available(),
                                reason="the Triton backend cannot run here")


def _views(n, d, dtype=torch.float32, seed=0, k=3, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    views = [(base + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)) * (0.5 + torch.rand(d, generator=g))
             + 2 * torch.randn(d, generator=g) for _ in range(k)]
    return [v.to(device=device, dtype=dtype).requires_grad_() for v in views]


def _exact(tensors):
    """The same (rounded) values in float64 on the CPU, for the fp64 reference."""
    return [t.detach().cpu().double().requires_grad_() for t in tensors]


def _close(got, want, rtol, scale=0.0):
    """Relative to the largest entry of want, or to `scale` when that is larger (see _check_loss)."""
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    if want.numel() == 0:
        assert got.shape == want.shape
        return
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * max(float(want.abs().max()), scale, 1e-30))


def _rtol(dtype, device):
    if device == "cpu":
        return {torch.float32: 2e-5, torch.float16: 3e-3}[dtype]
    return {torch.float32: 3e-4, torch.float16: 3e-3, torch.bfloat16: 3e-2}[dtype]


def _run_loss(loss, tensors, index, mode, backend, **kw):
    z0, z1, zm = tensors
    # At N = 2 a standardised feature is +-sqrt(var / (var + eps)) whatever the batch: the exact
    # gradient is O(eps) and fp32 would compare rounding noise. A large eps keeps it well
    # conditioned there, so the kernels' N = 2 path is still checked number for number.
    eps = kw.get("eps", 1e-5 if z0.shape[0] > 2 else 0.5)
    if loss == "barlow_twins":
        return SF.barlow_twins_loss(z0, z1, kw.get("lam", 5e-3), eps=eps, mode=mode, backend=backend)
    if loss == "vicreg":
        return SF.vicreg_loss(z0, z1, kw.get("lam", 25.0), kw.get("mu", 25.0), kw.get("nu", 1.0), mode=mode,
                              backend=backend)
    return SF.mixed_barlow_twins_loss(z0, z1, zm, index, kw.get("alpha", 0.4), kw.get("lam", 5e-3),
                                      kw.get("scale", 5.0), eps=eps, mode=mode, backend=backend)


def _check_loss(loss, n, d, mode, dtype=torch.float32, device="cpu", seed=0, **kw):
    views = _views(n, d, dtype, seed=seed, device=device)
    index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    exact = _exact(views)
    got = _run_loss(loss, views, index.to(device), mode, "triton", **kw)
    want = _run_loss(loss, exact, index, mode, "reference", **kw)
    rtol = _rtol(dtype, device)
    assert got.dtype == torch.float32
    _close(got, want, rtol)
    upstream = 1.7
    used = 3 if loss == "mixed_barlow_twins" else 2
    grads = torch.autograd.grad(got, views[:used], torch.tensor(upstream, device=device))
    grads_want = torch.autograd.grad(want, exact[:used], torch.tensor(upstream, dtype=torch.float64))
    for g, w in zip(grads, grads_want):
        assert g.dtype == dtype and torch.isfinite(g).all()
        _close(g, w, 10 * rtol)


# ------------------------------------------------------------------------------------------------
# The losses, interpreter: N in {2, 3, 64, 130}, D in {1, 7, 128, 300} (small: 100-1000x slower)
# ------------------------------------------------------------------------------------------------

INTERPRETER_CASES = [(n, d, mode) for n, d in [(2, 7), (3, 1), (64, 128), (130, 7), (64, 1)] for mode in ("gram", "cross")]
INTERPRETER_CASES += [(3, 300, "gram"), (40, 300, "cross")]


@pytest.mark.parametrize("n,d,mode", INTERPRETER_CASES)
@pytest.mark.parametrize("loss", LOSSES)
def test_loss_matches_reference(loss, n, d, mode):
    _check_loss(loss, n, d, mode, seed=n + d)


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_float16(loss):
    _check_loss(loss, 24, 40, "gram", dtype=torch.float16)
    _check_loss(loss, 40, 24, "cross", dtype=torch.float16)


@settings(max_examples=6)
@given(n=st.integers(2, 40), d=st.integers(1, 40), mode=st.sampled_from(["gram", "cross"]),
       loss=st.sampled_from(LOSSES), lam=st.floats(0, 5), mu=st.floats(0, 30), nu=st.floats(0, 3),
       alpha=st.floats(0, 1), scale=st.floats(0, 6), seed=st.integers(0, 2**31 - 1))
def test_loss_hypothesis(n, d, mode, loss, lam, mu, nu, alpha, scale, seed):
    _check_loss(loss, n, d, mode, seed=seed, lam=lam, mu=mu, nu=nu, alpha=alpha, scale=scale)


def test_zero_variance_feature_is_finite():
    views = _views(16, 9)
    with torch.no_grad():
        for v in views:
            v[:, 4] = -2.0
    index = torch.randperm(16)
    for loss in LOSSES:
        for mode in ("gram", "cross"):
            value = _run_loss(loss, views, index, mode, "triton")
            want = _run_loss(loss, _exact(views), index, mode, "reference")
            _close(value, want, 2e-5)
            grads = torch.autograd.grad(value, views[:2])
            assert all(torch.isfinite(g).all() for g in grads)


# ------------------------------------------------------------------------------------------------
# The primitive ops against the reference primitives
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pair", [True, False])
@pytest.mark.parametrize("ddof,rescale", [(0, True), (1, True), (1, False)])
@pytest.mark.parametrize("n,d", [(2, 3), (130, 70), (67, 1)])
def test_standardize_op(n, d, ddof, rescale, pair):
    z0, z1 = _views(n, d, k=2, seed=d)
    if not pair:
        z1 = None
    eps = 1e-5 if n > 2 else 0.5  # see _run_loss
    got = ops.TRITON_KERNELS.standardize(z0, z1, eps, ddof, rescale)
    exact = _exact([z0] + ([z1] if pair else []))
    want = ref.standardize(exact[0], exact[1] if pair else None, eps, ddof, rescale)
    outputs = [0, 1, 2] if pair else [0, 2]
    for i in outputs:
        _close(got[i], want[i], 2e-5)
    g = torch.Generator().manual_seed(1)
    upstream = [torch.randn(got[i].shape, generator=g, dtype=torch.float64) for i in outputs]
    inputs = [z0] + ([z1] if pair else [])
    grads = torch.autograd.grad([got[i] for i in outputs], inputs, [u.to(got[i].dtype) for i, u in zip(outputs, upstream)])
    grads_want = torch.autograd.grad([want[i] for i in outputs], exact, upstream)
    for gr, w in zip(grads, grads_want):
        _close(gr, w, 1e-4)


def test_standardize_large_mean_is_stable():
    """Chan's chunk merge keeps the variance of features with |mean| >> std (no E[z^2] - E[z]^2)."""
    g = torch.Generator().manual_seed(3)
    std = 0.5 + torch.rand(40, generator=g, dtype=torch.float64)
    z = (3000.0 + torch.randn(200, 40, generator=g, dtype=torch.float64) * std).float()
    y, _, stats = ops.TRITON_KERNELS.standardize(z, None, 1e-5, 0, True)
    want, _, want_stats = ref.standardize(z.double(), None, 1e-5, 0, True)
    # fp32 spacing at 3000 is 2.4e-4: the mean's rounding bounds the error near 1e-3 / std;
    # the one-pass E[z^2] - E[z]^2 would lose every digit here (z^2 ~ 1e7, var ~ 1)
    _close(y, want, 2e-3)
    _close(stats[0], want_stats[0], 2e-3)


@pytest.mark.parametrize("rows", [None, (0, 50), (37, 130), (64, 64)])
def test_gram_op(rows):
    (x,) = _views(130, 75, k=1)
    r0, r1 = rows or (0, 130)
    got = ops.TRITON_KERNELS.gram(x, r0, r1)
    (xe,) = _exact([x])
    want = ref.gram(xe, r0, r1)
    assert got.shape == (r1 - r0, 130) and got.dtype == torch.float32
    _close(got, want, 1e-5)
    upstream = torch.randn(got.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (grad,) = torch.autograd.grad(got, x, upstream.float())
    (grad_want,) = torch.autograd.grad(want, xe, upstream)
    _close(grad, grad_want, 2e-5)


@pytest.mark.parametrize("second,cols", [(True, None), (False, None), (True, (3, 50)), (False, (10, 70)),
                                         (True, (5, 5))])
def test_cross_sq_op(second, cols):
    a, b = _views(70, 90, k=2, seed=4)
    c0, c1 = cols or (0, 90)
    got = ops.TRITON_KERNELS.cross_sq(a, b if second else None, c0, c1)
    ae, be = _exact([a, b])
    want = ref.cross_sq(ae, be if second else None, c0, c1)
    _close(got, want, 1e-5)
    inputs, exact = ([a, b], [ae, be]) if second else ([a], [ae])
    if c1 == c0:
        assert got.item() == 0.0
        return
    for g, w in zip(torch.autograd.grad(got, inputs, torch.tensor(0.7)),
                    torch.autograd.grad(want, exact, torch.tensor(0.7, dtype=torch.float64))):
        _close(g, w, 2e-5)


def test_cross_sq_backward_in_stripes(monkeypatch):
    """The recomputed stripes of C (here 64 rows of a 150-feature product) add up to the whole."""
    from sslfast.ops import crosscorr_cross_sq

    monkeypatch.setattr(crosscorr_cross_sq, "STRIPE_BYTES", 64 * 4 * 150)
    assert crosscorr_cross_sq.stripe_rows(150, 150) == 64
    a, b = _views(40, 150, k=2, seed=6)
    ae, be = _exact([a, b])
    for second in (True, False):
        got = ops.TRITON_KERNELS.cross_sq(a, b if second else None, 0, 150)
        want = ref.cross_sq(ae, be if second else None, 0, 150)
        inputs, exact = ([a, b], [ae, be]) if second else ([a], [ae])
        for g, w in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, exact)):
            _close(g, w, 2e-5)


def test_opcheck():
    from sslfast.ops import crosscorr_cross_sq, crosscorr_gram, crosscorr_standardize  # noqa: F401

    z0, z1 = [v.detach() for v in _views(9, 6, k=2)]
    grad4 = torch.randn(4, 6)
    cases = [
        (torch.ops.sslfast.crosscorr_standardize.default, (z0, z1, 1e-5, 0, True)),
        (torch.ops.sslfast.crosscorr_standardize.default, (z0, None, 1e-5, 1, False)),
        (torch.ops.sslfast.crosscorr_standardize_backward.default,
         (torch.randn(9, 6), torch.randn(9, 6), grad4, z0, z1, torch.rand(4, 6) + 0.5, 1, True)),
        (torch.ops.sslfast.crosscorr_gram.default, (z0, 0, 9)),
        (torch.ops.sslfast.crosscorr_gram.default, (z0, 2, 5)),
        (torch.ops.sslfast.crosscorr_gram_backward.default, (torch.randn(9, 9), z0, 0, 9)),
        (torch.ops.sslfast.crosscorr_cross_sq.default, (z0, z1, 0, 6)),
        (torch.ops.sslfast.crosscorr_cross_sq.default, (z0, None, 1, 4)),
        (torch.ops.sslfast.crosscorr_cross_sq_backward.default, (torch.tensor(0.5), z0, z1, 0, 6)),
    ]
    for op, args in cases:
        args = tuple(a.clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
                     and op.name().endswith(("standardize", "gram", "cross_sq")) else a for a in args)
        torch.library.opcheck(op, args)


def test_compile_fullgraph_triton():
    z0, z1 = _views(16, 24, k=2)
    compiled = torch.compile(lambda a, b: SF.barlow_twins_loss(a, b, mode="gram", backend="triton"),
                             fullgraph=True, backend="aot_eager")
    got = compiled(z0, z1)
    want = SF.barlow_twins_loss(z0, z1, mode="gram", backend="triton")
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, z0)[0], torch.autograd.grad(want, z0)[0])


# ------------------------------------------------------------------------------------------------
# Dispatch
# ------------------------------------------------------------------------------------------------

def test_dispatch_choices():
    z = torch.randn(8, 4)
    for loss in LOSSES:
        assert dispatch.select(loss, z, z).name == ("triton" if z.is_cuda else "reference")
        assert dispatch.select(loss, z, z, backend="triton").name == "triton"
    with pytest.raises(RuntimeError, match="bfloat16 is computed wrongly by the Triton interpreter"):
        SF.barlow_twins_loss(z.bfloat16(), z.bfloat16(), backend="triton")
    with pytest.raises(RuntimeError, match="dtype torch.float64 not supported"):
        SF.vicreg_loss(z.double(), z.double(), backend="triton")


def test_info_shows_backends_and_modes():
    from sslfast import info

    text = info.report()
    for loss in LOSSES:
        assert f"{loss:<28} reference  available" in text
        assert f"{loss} (triton)" in text and f"{loss} (reference)" in text
    assert "N=256 D=8192: gram" in text


# ------------------------------------------------------------------------------------------------
# GPU: every dtype, larger shapes (skipped where the Triton backend cannot run on CUDA)
# ------------------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available() or bool(_triton_reasons("cuda")),
                         reason="needs a CUDA device the Triton backend supports")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,d,mode", [(256, 2048, "gram"), (512, 130, "cross"), (130, 300, "gram"),
                                      (130, 300, "cross"), (2, 7, "gram"), (3, 1, "cross")])
@pytest.mark.parametrize("loss", LOSSES)
def test_gpu_loss_matches_reference(loss, n, d, mode, dtype):
    _check_loss(loss, n, d, mode, dtype=dtype, device="cuda", seed=n * d)


@gpu
@pytest.mark.gpu
def test_gpu_auto_is_triton():
    z = torch.randn(64, 256, device="cuda")
    assert dispatch.select("barlow_twins", z, z).name == "triton"


# ------------------------------------------------------------------------------------------------
# The GPU build, checked without a GPU
# ------------------------------------------------------------------------------------------------

SM90_SCRIPT = textwrap.dedent("""
    import os
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from sslfast.kernels import crosscorr_matmul as M, crosscorr_standardize as S

    H100_SHARED_BYTES = 232448

    def compile_for_sm90(kernel, config, ptr_types, constexprs):
        constexprs = {**constexprs, **config.kwargs}
        jit = kernel.fn
        signature = {}
        for name in jit.arg_names:
            if name in constexprs:
                signature[name] = "constexpr"
            elif name.endswith("_ptr"):
                signature[name] = "*" + ptr_types.get(name, "fp32")
            else:
                signature[name] = "fp32" if name in ("scale", "inv_dof", "eps") else "i32"
        attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(jit.arg_names)
                 if signature[name].startswith("*")}
        compiled = triton.compile(ASTSource(fn=jit, signature=signature, constexprs=constexprs, attrs=attrs),
                                  target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
        assert compiled.metadata.shared <= H100_SHARED_BYTES, (kernel, config, compiled.metadata.shared)

    base = dict(SYMMETRIZE_A=False, SYMMETRIC_OUT=False, ACCUMULATE=False, SUM_SQUARES=False,
                HAS_SCALE_PTR=False, FP32_OPERANDS=False, DOT_PRECISION="ieee")
    half = {"a_ptr": "bf16", "b_ptr": "bf16"}
    matmul_cases = [  # the products of ops/crosscorr_gram.py and ops/crosscorr_cross_sq.py
        (half, dict(base, SYMMETRIC_OUT=True)),                                      # Gram, bf16
        ({"a_ptr": "fp16", "b_ptr": "fp16"}, dict(base, SYMMETRIC_OUT=True, SUM_SQUARES=True)),  # D x D loss
        ({}, dict(base, FP32_OPERANDS=True, DOT_PRECISION="tf32x3")),                 # fp32 data
        ({"b_ptr": "bf16", "c_ptr": "bf16"}, dict(base, SYMMETRIZE_A=True, FP32_OPERANDS=True, DOT_PRECISION="tf32")),
        ({"a_ptr": "bf16"}, dict(base, ACCUMULATE=True, HAS_SCALE_PTR=True, FP32_OPERANDS=True, DOT_PRECISION="tf32")),
    ]
    for ptr_types, flags in matmul_cases:
        compile_for_sm90(M.crosscorr_matmul_kernel, M._GPU_CONFIGS[0], ptr_types, flags)
    for dtype, pair, rescale in (("bf16", True, True), ("fp32", False, False)):
        names = ("z0_ptr", "z1_ptr", "y0_ptr", "y1_ptr", "g0_ptr", "g1_ptr", "dz0_ptr", "dz1_ptr")
        types = {name: dtype for name in names}
        compile_for_sm90(S.standardize_fwd_kernel, S._GPU_CONFIGS[0], types, dict(PAIR=pair, RESCALE=rescale))
        compile_for_sm90(S.standardize_bwd_kernel, S._GPU_CONFIGS[0], types, dict(PAIR=pair, RESCALE=rescale))
    print("OK")
""")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the tests above compile the kernels for real")
def test_kernels_compile_for_sm90():
    """The interpreter runs kernels as numpy and accepts code the GPU compiler rejects (types,
    layouts, early returns, constexpr misuse): compile each kernel variant for sm_90 with the ptxas
    bundled with Triton, in a child process without TRITON_INTERPRET, and check its shared memory
    fits an H100/H200."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", SM90_SCRIPT], capture_output=True, text=True, timeout=600, env=env)
    if out.returncode != 0 and "ptxas" in out.stderr and "not found" in out.stderr:
        pytest.skip("ptxas is not available")
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-4000:]
