"""Detects Triton interpreter bugs that would make kernel results silently wrong on CPU.

- bf16 ``tl.dot`` (triton issue #11584): bf16 tensors are stored as uint16 and the affected
  versions multiply the bit patterns.
- fp8 e4m3 x fp8 e4m3 ``tl.dot`` (fp8 queries against an fp8 cache): checked the same way.
- float32 -> fp8 e4m3 casts: the affected versions drop the rounding carry into the exponent
  (31.99 becomes 16, not 32) and round ties away from even.
- integer -> bf16 casts: the affected versions store the integer itself as the bf16 bit pattern
  (1 becomes 9.2e-41, -1 NaN).
Each probe runs a tiny kernel and compares with torch; the kernels refuse the affected dtype
under the interpreter while its probe fails, instead of returning wrong results.
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




@triton.jit
def _cast_probe_kernel(x_ptr, y_ptr, N: tl.constexpr):
    idx = tl.arange(0, N)
    tl.store(y_ptr + idx, tl.load(x_ptr + idx).to(y_ptr.dtype.element_ty))


# Values whose rounding carries into the exponent (31.99 -> 32) or ties to even (100 -> 96).
_FP8_PROBE_VALUES = (31.99, -31.99, 1.99, 7.9, 100.0, -100.0, 0.3, 239.0, 0.1, 15.99, 3.99, 448.0, 0.0, -0.5, 55.0, 9.0)


def fp8_cast_mismatches() -> int:
    """How many probe values the interpreter's float32 -> fp8 e4m3 cast gets wrong (0 when right)."""
    x = torch.tensor(_FP8_PROBE_VALUES, dtype=torch.float32)
    y = torch.empty(len(_FP8_PROBE_VALUES), dtype=torch.float8_e4m3fn)
    _cast_probe_kernel[(1,)](x, y, N=len(_FP8_PROBE_VALUES))
    return int((y.float() != x.to(torch.float8_e4m3fn).float()).sum())


@functools.lru_cache(maxsize=None)
def fp8_cast_is_exact() -> bool:
    return fp8_cast_mismatches() == 0


# Every int8 value: an int8 cache's K/V convert to bf16 queries' dtype in the kernel.
_INT_PROBE_VALUES = tuple(range(-128, 128))


def int_to_bf16_mismatches() -> int:
    """How many int8 values the interpreter's int8 -> bf16 cast gets wrong (0 when right)."""
    x = torch.tensor(_INT_PROBE_VALUES, dtype=torch.int8)
    y = torch.empty(len(_INT_PROBE_VALUES), dtype=torch.bfloat16)
    _cast_probe_kernel[(1,)](x, y, N=len(_INT_PROBE_VALUES))
    return int((y.float() != x.float()).sum())


@functools.lru_cache(maxsize=None)
def int_to_bf16_is_exact() -> bool:
    return int_to_bf16_mismatches() == 0


def fp8_dot_error() -> float:
    """Max abs error of a 16x16 float8_e4m3fn x float8_e4m3fn tl.dot against torch (0.0 when right).

    Operands up to 16 in magnitude, so a dot that multiplied the stored bytes (as the bf16 bug
    does with uint16 patterns) or mis-decoded the format would be far off."""
    gen = torch.Generator().manual_seed(0)
    a = (torch.randn(16, 16, generator=gen) * 4).to(torch.float8_e4m3fn)
    b = (torch.randn(16, 16, generator=gen) * 4).to(torch.float8_e4m3fn)
    c = torch.empty(16, 16, dtype=torch.float32)
    _dot_probe_kernel[(1,)](a, b, c, N=16)
    return float((c - a.float() @ b.float()).abs().max())


@functools.lru_cache(maxsize=None)
def fp8_dot_is_exact() -> bool:
    return fp8_dot_error() < 1e-3


def reset() -> None:
    fp8_dot_is_exact.cache_clear()
    bf16_dot_is_exact.cache_clear()
    fp8_cast_is_exact.cache_clear()
    int_to_bf16_is_exact.cache_clear()
