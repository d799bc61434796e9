r"""Cross-correlation losses: Barlow Twins, VICReg and the Mixed Barlow Twins regulariser, each
computed through the cheaper of the D x D cross form and the N x N Gram form.

Conventions (the source of each number)
---------------------------------------
Barlow Twins, official code (facebookresearch/barlowtwins, main.py, class BarlowTwins)::

    c = bn(z1).T @ bn(z2)            # bn = BatchNorm1d(D, affine=False), made SyncBatchNorm
    c.div_(args.batch_size)          # the *global* batch size
    torch.distributed.all_reduce(c)  # not autograd-aware (see "Distributed" below)
    loss = sum_i (1 - c_ii)^2 + lambd * sum_{i != j} c_ij^2          # lambd = 0.0051

  BatchNorm1d in training mode standardises each feature over the batch with the *biased*
  variance and eps = 1e-5 inside the square root: zn = (z - mean) / sqrt(var_biased + 1e-5).
  (An early version multiplied the loss by --scale-loss 1/32; the current code does not.)

Barlow Twins, lightly (lightly/loss/barlow_twins_loss.py, BarlowTwinsLoss): the same
  standardisation (F.batch_norm, training=True, eps 1e-5), c = zn_a.T @ zn_b / N and the same
  loss, with lambda_param = 5e-3 by default. It differs from the official code in two ways:
  the default lambda (5e-3, not 0.0051) and, with gather_distributed=True, the statistics:
  lightly standardises each rank's batch with that rank's mean and variance and averages the
  per-rank matrices (c = all_reduce(c_r / W)); the official code standardises with the global
  batch statistics (SyncBatchNorm) and sums c_r = zn_r.T @ zn_r / N_global. sslfast's
  BarlowTwinsLoss keeps lightly's constructor and default (lambda_param=5e-3, a drop-in
  replacement) and the official global statistics when gathering, so that the loss equals the
  single-process loss on the concatenated batch whatever the world size.

VICReg, official code (facebookresearch/vicreg, main_vicreg.py, class VICReg)::

    repr_loss = F.mse_loss(x, y)                         # on this rank's rows
    x, y = gather(x), gather(y)                          # FullGatherLayer
    x = x - x.mean(0); y = y - y.mean(0)
    std_x = torch.sqrt(x.var(0) + 0.0001)                # unbiased variance, eps 1e-4
    std_loss = mean(relu(1 - std_x)) / 2 + mean(relu(1 - std_y)) / 2
    cov_x = x.T @ x / (batch_size - 1)                   # global batch size
    cov_loss = offdiag(cov_x).pow(2).sum() / D + offdiag(cov_y).pow(2).sum() / D
    loss = 25 * repr_loss + 25 * std_loss + 1 * cov_loss

  lightly's VICRegLoss (lightly/loss/vicreg_loss.py) computes the same numbers with
  lambda_param (invariance) = 25, mu_param (variance) = 25, nu_param (covariance) = 1,
  eps = 1e-4; like the official code it computes the invariance term on the local rows.
  sslfast computes it on the gathered batch (same gradient, see below; the value is then the
  global one instead of this rank's).

Mixed Barlow Twins, official CIFAR code (wgcban/mix-bt, main.py, train())::

    z1n = (z1 - z1.mean(0)) / z1.std(0)                  # unbiased std, no eps
    c = z1n.T @ z2n / N;  loss_bt = sum_i (1 - c_ii)^2 + lmbda * sum_{i != j} c_ij^2
    x_m = alpha * x1 + (1 - alpha) * x2[index]           # alpha ~ Beta(1, 1), index = randperm(N)
    zmn = standardised embedding of x_m
    cc_m_1 = zmn.T @ z1n / N;  cc_m_1_gt = (alpha * z1n.T @ z1n + (1 - alpha) * z2n[index].T @ z1n) / N
    cc_m_2 = zmn.T @ z2n / N;  cc_m_2_gt = (alpha * z1n.T @ z2n + (1 - alpha) * z2n[index].T @ z2n) / N
    loss_mix = mixup_loss_scale * lmbda * (||cc_m_1 - cc_m_1_gt||_F^2 + ||cc_m_2 - cc_m_2_gt||_F^2)

  (main.py defaults: lmbda = 0.005, mixup_loss_scale = 5.0; the CIFAR-10 ResNet-18 script uses
  lmbda = 0.0078125 and mixup_loss_scale = 4.0. main_imagenet.py is a different form: SyncBN-free
  all-reduced matrices, a 0.5 factor and alpha * z2n.T @ z2n in cc_m_2_gt; it is not this one.)
  The four cross-correlations collapse into two through the residual
  R = zmn - alpha * z1n - (1 - alpha) * z2n[index]:  cc_m_k - cc_m_k_gt = R.T @ zkn / N, so
  loss_mix = scale * lmbda * (||R^T z1n||^2 + ||R^T z2n||^2) / N^2. sslfast adds eps (default 1e-5)
  under the square root of the variance so that a constant feature gives no NaN; eps -> 0 is the
  official number.

The Gram identity and the two modes
-----------------------------------
Every quadratic term above is a squared Frobenius norm of a cross product A^T B of two (N, D)
matrices, and

    ||A^T B||_F^2 = tr(A^T B B^T A) = <A A^T, B B^T>_F.

"cross" computes the D x D product (O(N D^2) FLOPs, D^2 memory); "gram" computes the N x N Gram
matrices (O(N^2 D) FLOPs, N^2 memory): D / N times fewer FLOPs when N < D (32x at N = 256,
D = 8192). The diagonal terms never need either matrix: c_ii = (1/N) sum_n a_ni b_ni are column
dot products (O(N D)), so the off-diagonal sum is ||C||_F^2 - sum_i c_ii^2. Each loss:

    Barlow Twins   a, b = standardised z0, z1 (biased variance, eps);  d_i = c_ii
                   L = sum_i (1 - d_i)^2 + lambda (||a^T b||^2 / N^2 - sum_i d_i^2)
    VICReg         x = centred z (per branch), v_i = sum_n x_ni^2 / (N - 1)
                   cov term = (||x^T x||^2 / (N - 1)^2 - sum_i v_i^2) / D
    Mixed BT       loss_bt as Barlow Twins (unbiased std) + scale * lambda *
                   (||R^T a||^2 + ||R^T b||^2) / N^2; in Gram form <G_R, G_a + G_b> with
                   G_a = a a^T, G_b, G_R each computed once and shared with <G_a, G_b>.

Gradients (for the Gram form; the cross form is the transpose of the same products):
d||A^T B||^2 / dA = 2 (B B^T) A = 2 B (A^T B)^T, and for A = B: d||X^T X||^2 / dX = 4 (X X^T) X.
The batch standardisation backward (zn = (z - mean) * r, r = (var + eps)^-1/2, var over N - ddof):
dz = r (g - mean_n g) - r / (N - ddof) * (sum_n g zn) zn.

Numerics: the off-diagonal sum is a difference ||C||^2 - sum_i c_ii^2. Since rank(C) <= N,
||C||^2 >= (sum_i c_ii)^2 / N, so when the diagonal approaches one (the training target) the
off-diagonal mass is at least D^2 / N - D and the difference loses at most a factor D / (D - N)
of relative precision: harmless exactly where the Gram form is used (N < D). Products accumulate
in float32 (float64 for float64 inputs). For float16/bfloat16 inputs the standardised matrices
are kept in the input dtype (the tensor cores consume them) and the column dot products are
taken from those same rounded values, so the difference above stays consistent.

Cost model (`mode="auto"`)
--------------------------
Each kernel set declares, per loss, the FLOPs of the quadratic part for forward + backward as
k_gram * N^2 D and k_cross * N D^2, and the bytes of its N x N or D x D fp32 intermediates. For
this reference (plain matmuls, the Gram and cross matrices saved for backward):

    loss                k_gram  k_cross   gram is cheaper when   intermediates (fp32)
    barlow_twins          8       6         N < 0.75 D            2 N^2   vs  D^2
    vicreg                8       8         N < D                 2 N^2   vs  2 D^2
    mixed_barlow_twins   12      18         N < 1.5 D             3 N^2   vs  3 D^2

Bytes count 12 per fp32 element of the intermediates (written once, read twice). "auto" minimises
FLOPs + MACHINE_BALANCE * bytes, MACHINE_BALANCE = 32 FLOP/byte, a nominal figure that only moves
the choice near the crossover. The Triton kernel set declares its own coefficients
(sslfast/ops/crosscorr.py: symmetric Grams halve its forward, the cross form recomputes C in its
backward instead of storing it): gram 6 / 6 / 9 against cross 8 / 10 / 24. With
gather_distributed, N is the global batch. The choice is logged at DEBUG level on the
"sslfast.dispatch" logger and shown by `python -m sslfast.info`.

Distributed (gather_distributed=True)
-------------------------------------
Every rank gathers z0 and z1 (sslfast.distributed.gather), standardises the global batch (global
mean and variance, as SyncBatchNorm), and splits the quadratic work: in Gram mode rank r computes
the rows of its own samples (P = A[rows] A^T: <P_A, P_B> summed over ranks is <G_A, G_B>); in
cross mode it computes a block of D / W columns of C. The partial sums are added with a
differentiable all-reduce; the O(N D) terms are computed on every rank. Every rank returns the
single-process loss on the concatenated batch and its input gradient is W times the
single-process gradient of its rows, which is what DDP's averaging over W ranks needs
(sslfast.distributed). The official Barlow Twins code uses a plain all_reduce and so delivers
1/W of that after DDP's averaging: the bug lightly fixed in PR #1980 (issue #1977).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from .. import distributed as _dist
from .._validation import compiling

log = logging.getLogger("sslfast.dispatch")

MODES = ("auto", "gram", "cross")
LOSSES = ("barlow_twins", "vicreg", "mixed_barlow_twins")
MACHINE_BALANCE = 32.0  # FLOP per byte: weighs the intermediates' traffic against the FLOPs


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# The three primitives every loss is built from. A kernel set provides them; the losses below
# only combine their results with O(N D + N^2 + D) PyTorch work.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CrossCorrKernels:
    """A backend's implementation of the three cross-correlation primitives.

    standardize(z0, z1, eps, ddof, rescale, rows) -> (out0, out1, stats)
        out_k = (z_k - mean_n z_k) * (var_k + eps)^-1/2 if rescale else z_k - mean_n z_k, with
        var over N - ddof, in z_k's dtype; z1 may be None (then out1 is None). stats (4, D) in
        the compute dtype, taken from the stored outputs: sum_n out0^2, sum_n out1^2,
        sum_n out0 * out1, sum_n (z0 - z1)^2 (rows 1-3 are zero when z1 is None). `rows` names
        the rows the caller reads; a kernel may leave the others zero (the reference skips
        them, a fused kernel computes all four at no extra cost).
    gram(x, row_start, row_end) -> x[row_start:row_end] @ x^T in the compute dtype.
    cross_sq(a, b, col_start, col_end) -> ||a^T b[:, col_start:col_end]||_F^2 (b None: b = a).
    flops / intermediates: per loss, (k_gram, k_cross) of the cost model above.
    """

    name: str
    standardize: Callable
    gram: Callable
    cross_sq: Callable
    flops: dict
    intermediates: dict


def _standardize_one(z, eps, ddof, rescale):
    x = z.to(compute_dtype(z.dtype))
    centred = x - x.mean(0)
    if not rescale:
        return centred.to(z.dtype)
    var = x.var(0, correction=ddof)  # one fused pass, no (N, D) temporary
    return (centred * torch.rsqrt(var + eps)).to(z.dtype)


def standardize(z0, z1, eps: float, ddof: int, rescale: bool, rows=(0, 1, 2, 3)):
    """Reference of the standardisation primitive (see CrossCorrKernels); plain autograd."""
    cdt = compute_dtype(z0.dtype)
    out0 = _standardize_one(z0, eps, ddof, rescale)
    out1 = None if z1 is None else _standardize_one(z1, eps, ddof, rescale)
    a = out0.to(cdt)
    b = None if z1 is None else out1.to(cdt)
    zero = torch.zeros_like(a[0])

    def column_sum(k):
        if k not in rows or (z1 is None and k > 0):
            return zero
        if k == 0:
            return (a * a).sum(0)
        if k == 1:
            return (b * b).sum(0)
        if k == 2:
            return (a * b).sum(0)
        diff = z0.to(cdt) - z1.to(cdt)
        return (diff * diff).sum(0)

    return out0, out1, torch.stack([column_sum(k) for k in range(4)])


class _Gram(torch.autograd.Function):
    """P = x[r0:r1] x^T. Backward: dx = dP^T x[r0:r1], plus dP x on rows r0:r1; for all rows
    that is (dP + dP^T) x, one matmul instead of the two plain autograd would run."""

    @staticmethod
    def forward(ctx, x, row_start, row_end):
        xc = x.to(compute_dtype(x.dtype))
        ctx.save_for_backward(x)
        ctx.rows = (row_start, row_end)
        return xc[row_start:row_end] @ xc.T

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        r0, r1 = ctx.rows
        xc = x.to(grad.dtype)
        if r0 == 0 and r1 == x.shape[0]:
            dx = (grad + grad.T) @ xc
        else:
            dx = grad.T @ xc[r0:r1]
            dx[r0:r1] += grad @ xc
        return dx.to(x.dtype), None, None


def gram(x, row_start: int, row_end: int):
    return _Gram.apply(x, row_start, row_end)


class _CrossSq(torch.autograd.Function):
    """s = ||A^T B_J||_F^2 with C = A^T B_J (D x |J|) saved. Backward: dA = 2g B_J C^T,
    dB_J = 2g A C; for A = B over all columns, dX = 4g X C (one matmul)."""

    @staticmethod
    def forward(ctx, a, b, col_start, col_end):
        cdt = compute_dtype(a.dtype)
        ac = a.to(cdt)
        bc = ac if b is None else b.to(cdt)
        c = ac.T @ bc[:, col_start:col_end]
        ctx.save_for_backward(a, b, c)
        ctx.cols = (col_start, col_end)
        return c.pow(2).sum()

    @staticmethod
    def backward(ctx, grad):
        a, b, c = ctx.saved_tensors
        c0, c1 = ctx.cols
        ac = a.to(c.dtype)
        g2 = 2 * grad.to(c.dtype)
        if b is None and c0 == 0 and c1 == a.shape[1]:
            return (2 * g2 * (ac @ c)).to(a.dtype), None, None, None
        bc = ac if b is None else b.to(c.dtype)
        da = g2 * (bc[:, c0:c1] @ c.T)
        db = torch.zeros_like(bc)
        db[:, c0:c1] = g2 * (ac @ c)
        if b is None:
            return (da + db).to(a.dtype), None, None, None
        return da.to(a.dtype), db.to(b.dtype), None, None


def cross_sq(a, b, col_start: int, col_end: int):
    return _CrossSq.apply(a, b, col_start, col_end)


REFERENCE_KERNELS = CrossCorrKernels(
    name="reference",
    standardize=standardize,
    gram=gram,
    cross_sq=cross_sq,
    flops={"barlow_twins": (8, 6), "vicreg": (8, 8), "mixed_barlow_twins": (12, 18)},
    intermediates={"barlow_twins": (2, 1), "vicreg": (2, 2), "mixed_barlow_twins": (3, 3)},
)


# --------------------------------------------------------------------------------------------
# Cost model
# --------------------------------------------------------------------------------------------

def mode_costs(loss: str, n: int, d: int, kernels: CrossCorrKernels = REFERENCE_KERNELS) -> dict:
    """{"gram": (flops, bytes), "cross": (flops, bytes)} of the quadratic part, forward +
    backward, for a (n, d) batch (n = the global batch when gathering)."""
    k_gram, k_cross = kernels.flops[loss]
    m_gram, m_cross = kernels.intermediates[loss]
    # each fp32 intermediate is written once and read twice (loss, backward)
    return {
        "gram": (k_gram * n * n * d, 12 * m_gram * n * n),
        "cross": (k_cross * n * d * d, 12 * m_cross * d * d),
    }


def choose_mode(loss: str, n: int, d: int, mode: str = "auto", kernels: CrossCorrKernels = REFERENCE_KERNELS) -> str:
    """"gram" or "cross": `mode` itself unless it is "auto", else the cheaper by the cost model."""
    if mode != "auto":
        return mode
    costs = mode_costs(loss, n, d, kernels)
    score = {m: flops + MACHINE_BALANCE * nbytes for m, (flops, nbytes) in costs.items()}
    chosen = "gram" if score["gram"] < score["cross"] else "cross"
    if not compiling() and log.isEnabledFor(logging.DEBUG):
        log.debug("%s (%s): mode %s for N=%d, D=%d (gram %.3g FLOPs + %.3g B, cross %.3g FLOPs + %.3g B)",
                  loss, kernels.name, chosen, n, d, *costs["gram"], *costs["cross"])
    return chosen


def describe_modes(kernels: CrossCorrKernels = REFERENCE_KERNELS,
                   shapes=((256, 8192), (2048, 8192), (8192, 2048))) -> list:
    """Lines for `python -m sslfast.info`: what auto picks for a few shapes."""
    lines = []
    for loss in LOSSES:
        k_gram, k_cross = kernels.flops[loss]
        picks = ", ".join(f"N={n} D={d}: {choose_mode(loss, n, d, 'auto', kernels)}" for n, d in shapes)
        lines.append(f"{loss} ({kernels.name}): gram {k_gram} N^2 D vs cross {k_cross} N D^2 FLOPs; auto -> {picks}")
    return lines


# --------------------------------------------------------------------------------------------
# The quadratic term, split across ranks when gathering
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Split:
    """This rank's share of the quadratic work on a gathered (n_global, d) batch."""

    rows: Tuple[int, int]
    cols: Tuple[int, int]
    distributed: bool

    @staticmethod
    def make(n_global: int, d: int, gathered: bool) -> "_Split":
        if not gathered:
            return _Split((0, n_global), (0, d), False)
        world, rank = _dist.world_size(), _dist.rank()
        n_local = n_global // world
        return _Split((rank * n_local, (rank + 1) * n_local), (rank * d // world, (rank + 1) * d // world), True)

    def reduce(self, partial: torch.Tensor) -> torch.Tensor:
        return _dist.all_reduce_sum(partial) if self.distributed else partial


def _gathered(z: torch.Tensor, gather: bool) -> torch.Tensor:
    return _dist.gather(z) if gather else z


def _use_gather(gather_distributed: bool) -> bool:
    return bool(gather_distributed) and _dist.world_size() > 1


# --------------------------------------------------------------------------------------------
# The losses
# --------------------------------------------------------------------------------------------

def barlow_twins_loss(
    z0: torch.Tensor,
    z1: torch.Tensor,
    lambda_param: float = 5e-3,
    *,
    eps: float = 1e-5,
    mode: str = "auto",
    gather_distributed: bool = False,
    kernels: CrossCorrKernels = REFERENCE_KERNELS,
) -> torch.Tensor:
    """Barlow Twins loss (see the module docstring for the formula and its sources).

    Inputs are (N, D) and validated by the caller (sslfast.functional). Returns a 0-d tensor
    in float32 (float64 for float64 inputs).
    """
    gather = _use_gather(gather_distributed)
    z0, z1 = _gathered(z0, gather), _gathered(z1, gather)
    n, d = z0.shape
    mode = choose_mode("barlow_twins", n, d, mode, kernels)
    split = _Split.make(n, d, gather)
    a, b, stats = kernels.standardize(z0, z1, eps, 0, True, (2,))
    diag = stats[2] / n  # c_ii
    if mode == "gram":
        (r0, r1) = split.rows
        sum_sq = (kernels.gram(a, r0, r1) * kernels.gram(b, r0, r1)).sum()
    else:
        sum_sq = kernels.cross_sq(a, b, *split.cols)
    sum_sq = split.reduce(sum_sq) / (n * n)  # ||C||_F^2
    on_diag = (1 - diag).pow(2).sum()
    off_diag = sum_sq - diag.pow(2).sum()
    return on_diag + lambda_param * off_diag


def vicreg_loss(
    z0: torch.Tensor,
    z1: torch.Tensor,
    lambda_param: float = 25.0,
    mu_param: float = 25.0,
    nu_param: float = 1.0,
    *,
    eps: float = 1e-4,
    mode: str = "auto",
    gather_distributed: bool = False,
    kernels: CrossCorrKernels = REFERENCE_KERNELS,
) -> torch.Tensor:
    """VICReg loss: lambda * invariance + mu * variance + nu * covariance (module docstring)."""
    gather = _use_gather(gather_distributed)
    z0, z1 = _gathered(z0, gather), _gathered(z1, gather)
    n, d = z0.shape
    mode = choose_mode("vicreg", n, d, mode, kernels)
    split = _Split.make(n, d, gather)
    x0, x1, stats = kernels.standardize(z0, z1, 0.0, 1, False, (0, 1, 3))  # centred only
    invariance = stats[3].sum() / (n * d)  # F.mse_loss(z0, z1)
    variance = 0.0
    covariance = 0.0
    for x, sq in ((x0, stats[0]), (x1, stats[1])):
        var = sq / (n - 1)
        variance = variance + F.relu(1 - torch.sqrt(var + eps)).mean() / 2
        if mode == "gram":
            p = kernels.gram(x, *split.rows)
            sum_sq = (p * p).sum()
        else:
            sum_sq = kernels.cross_sq(x, None, *split.cols)
        sum_sq = split.reduce(sum_sq) / ((n - 1) * (n - 1))  # ||cov||_F^2
        covariance = covariance + (sum_sq - var.pow(2).sum()) / d
    return lambda_param * invariance + mu_param * variance + nu_param * covariance


def mixed_barlow_twins_loss(
    z0: torch.Tensor,
    z1: torch.Tensor,
    z_mixed: torch.Tensor,
    index: torch.Tensor,
    alpha,
    lambda_param: float = 5e-3,
    mixup_loss_scale: float = 5.0,
    *,
    eps: float = 1e-5,
    mode: str = "auto",
    gather_distributed: bool = False,
    return_terms: bool = False,
    kernels: CrossCorrKernels = REFERENCE_KERNELS,
):
    """Mixed Barlow Twins (CIFAR form): loss_bt + loss_mix (module docstring).

    z_mixed embeds alpha * x0 + (1 - alpha) * x1[index]; `index` is a permutation of this
    rank's rows, `alpha` a float (each rank may use its own when gathering).
    Returns the sum, or (loss_bt, loss_mix) with return_terms=True.
    """
    gather = _use_gather(gather_distributed)
    n_local = z0.shape[0]
    cdt = compute_dtype(z0.dtype)
    alpha_rows = torch.as_tensor(alpha, dtype=cdt, device=z0.device).reshape(1).expand(n_local)
    if gather:
        _dist.check_same_rows(z0)  # before the first all_gather, which would abort on unequal batches
        rank_offset = _dist.rank() * n_local
        index = _all_gather_nograd(index.to(torch.int64) + rank_offset)
        alpha_rows = _all_gather_nograd(alpha_rows.contiguous())
    z0, z1, z_mixed = _gathered(z0, gather), _gathered(z1, gather), _gathered(z_mixed, gather)
    n, d = z0.shape
    mode = choose_mode("mixed_barlow_twins", n, d, mode, kernels)
    split = _Split.make(n, d, gather)
    a, b, stats = kernels.standardize(z0, z1, eps, 1, True, (2,))
    m, _, _ = kernels.standardize(z_mixed, None, eps, 1, True, ())
    w = alpha_rows[:, None]
    residual = (m.to(cdt) - w * a.to(cdt) - (1 - w) * b.to(cdt)[index]).to(a.dtype)
    diag = stats[2] / n
    if mode == "gram":
        (r0, r1) = split.rows
        ga, gb, gr = kernels.gram(a, r0, r1), kernels.gram(b, r0, r1), kernels.gram(residual, r0, r1)
        sum_sq_bt = (ga * gb).sum()
        sum_sq_mix = (gr * (ga + gb)).sum()
    else:
        sum_sq_bt = kernels.cross_sq(a, b, *split.cols)
        sum_sq_mix = kernels.cross_sq(residual, a, *split.cols) + kernels.cross_sq(residual, b, *split.cols)
    sum_sq_bt = split.reduce(sum_sq_bt) / (n * n)
    sum_sq_mix = split.reduce(sum_sq_mix) / (n * n)
    loss_bt = (1 - diag).pow(2).sum() + lambda_param * (sum_sq_bt - diag.pow(2).sum())
    loss_mix = mixup_loss_scale * lambda_param * sum_sq_mix
    return (loss_bt, loss_mix) if return_terms else loss_bt + loss_mix


def _all_gather_nograd(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def mix_views(x0: torch.Tensor, x1: torch.Tensor, *, alpha: Optional[float] = None,
              generator: Optional[torch.Generator] = None):
    """The official input mixing: x_m = alpha * x0 + (1 - alpha) * x1[index] with
    alpha ~ Beta(1, 1) (uniform on [0, 1]) and index a random permutation of the batch.

    Returns (x_mixed, index, alpha); pass index and alpha on to the loss.
    """
    n = x0.shape[0]
    if alpha is None:
        alpha = float(torch.rand((), generator=generator, dtype=torch.float64))
    index = torch.randperm(n, generator=generator).to(x0.device)
    return alpha * x0 + (1 - alpha) * x1[index], index, alpha


__all__ = [
    "CrossCorrKernels", "REFERENCE_KERNELS", "MODES", "LOSSES", "compute_dtype", "standardize", "gram",
    "cross_sq", "mode_costs", "choose_mode", "describe_modes", "barlow_twins_loss", "vicreg_loss",
    "mixed_barlow_twins_loss", "mix_views",
]
