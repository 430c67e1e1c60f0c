"""Detects the Triton interpreter's bf16 ``tl.dot`` bug (triton issue #11584) before it can lie.

The interpreter stores bf16 tensors as uint16 and, in the affected versions, multiplies the bit
patterns. The probe runs a tiny bf16 dot and compares with torch; the kernels refuse bf16 under
the interpreter while it fails, instead of returning silently wrong results.
"""

import functools

import torch
import triton
import triton.language as tl


@triton.jit
def _dot_probe_kernel(a_ptr, b_ptr, c_ptr, N: tl.constexpr):
    idx = tl.arange(0, N)
    a = tl.load(a_ptr + idx[:, None] * N + idx[None, :])
    b = tl.load(b_ptr + idx[:, None] * N + idx[None, :])
    tl.store(c_ptr + idx[:, None] * N + idx[None, :], tl.dot(a, b))


def bf16_dot_error() -> float:
    """Max abs error of a 16x16 bf16 tl.dot against torch (0.0 when the interpreter is right)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(16, 16, generator=gen).to(torch.bfloat16)
    b = torch.randn(16, 16, generator=gen).to(torch.bfloat16)
    c = torch.empty(16, 16, dtype=torch.float32)
    _dot_probe_kernel[(1,)](a, b, c, N=16)
    return float((c - a.float() @ b.float()).abs().max())


@functools.lru_cache(maxsize=None)
def bf16_dot_is_exact() -> bool:
    return bf16_dot_error() < 1e-3


def reset() -> None:
    bf16_dot_is_exact.cache_clear()
