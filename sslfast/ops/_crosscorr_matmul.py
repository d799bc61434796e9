"""Host side of kernels/crosscorr_matmul.py: launch it on torch views.

A transpose or a column block is a torch view (x.T, x[:, c0:c1]); the kernel reads the view's
strides and data pointer, so no product here copies its operands.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..dispatch import triton_interpreter

_HALF = (torch.float16, torch.bfloat16)


def _operand_policy(a: torch.Tensor, b: torch.Tensor, symmetrize_a: bool) -> tuple:
    """(FP32_OPERANDS, DOT_PRECISION): 16-bit pairs run natively on the tensor cores; anything
    with an fp32 operand runs in fp32, 3xTF32 when all data is fp32, TF32 when 16-bit data
    bounds the accuracy anyway."""
    if a.dtype == b.dtype and a.dtype in _HALF and not symmetrize_a:
        return False, "ieee"
    if triton_interpreter():
        return True, "ieee"
    return True, ("tf32" if (a.dtype in _HALF or b.dtype in _HALF) else "tf32x3")


def matmul(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, scale: float = 1.0,
           scale_tensor: Optional[torch.Tensor] = None, symmetrize_a: bool = False, symmetric_out: bool = False,
           accumulate: bool = False) -> torch.Tensor:
    """out (=|+=) scale * scale_tensor * op(a) @ b, op(a) = a or a + a^T; fp32 accumulation."""
    from ..kernels.crosscorr_matmul import crosscorr_matmul_kernel, grid

    (m, k), (k_b, n) = a.shape, b.shape
    assert k == k_b and out.shape == (m, n), (a.shape, b.shape, out.shape)
    assert not (symmetric_out and accumulate) and (not symmetric_out or m == n) and (not symmetrize_a or m == k)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out if accumulate else out.zero_()
    fp32_operands, precision = _operand_policy(a, b, symmetrize_a)
    crosscorr_matmul_kernel[grid(m, n)](
        a, b, out, out, scale_tensor if scale_tensor is not None else out,
        m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1), float(scale),
        SYMMETRIZE_A=symmetrize_a, SYMMETRIC_OUT=symmetric_out, ACCUMULATE=accumulate, SUM_SQUARES=False,
        HAS_SCALE_PTR=scale_tensor is not None, FP32_OPERANDS=fp32_operands, DOT_PRECISION=precision)
    return out


def sum_squares(a: torch.Tensor, b: torch.Tensor, *, symmetric: bool = False) -> torch.Tensor:
    """||a @ b||_F^2 as a 0-d fp32 tensor, never storing a @ b (per-tile partial sums)."""
    from ..kernels.crosscorr_matmul import crosscorr_matmul_kernel, grid, max_programs

    (m, k), (_, n) = a.shape, b.shape
    if m == 0 or n == 0 or k == 0:
        return torch.zeros((), dtype=torch.float32, device=a.device)
    partials = torch.zeros(max_programs(m, n), dtype=torch.float32, device=a.device)
    fp32_operands, precision = _operand_policy(a, b, False)
    crosscorr_matmul_kernel[grid(m, n)](
        a, b, partials, partials, partials,
        m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1), 0, 0, 1.0,
        SYMMETRIZE_A=False, SYMMETRIC_OUT=symmetric, ACCUMULATE=False, SUM_SQUARES=True,
        HAS_SCALE_PTR=False, FP32_OPERANDS=fp32_operands, DOT_PRECISION=precision)
    return partials.sum()
