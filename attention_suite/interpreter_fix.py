"""Narrowly scoped fixes for three Triton interpreter bugs, installed by the test harness.

1. bf16 ``tl.dot`` (triton issue #11584): the interpreter keeps bf16 tensors as uint16 bit
   patterns and ``create_dot`` multiplies those integers. The fix widens bf16 operands to
   float32 first (exact: bf16 is a truncated float32).
2. float32 -> fp8 e4m3 casts: ``create_fp_to_fp`` drops the rounding carry into the exponent
   and rounds ties away from even. The fix does that one conversion through torch, which
   rounds to nearest-even like the GPU's ``cvt.rn``.
3. integer -> bf16 casts: ``cast_impl`` stores the integer as the bf16 bit pattern. The fix goes
   through float32 (exact for int8) and the interpreter's own float32 -> bf16 conversion.

Each fix is installed only when its probe (``paged_kernels._interpreter_probe``) shows the bug, only
on builders whose method has the known signature, and it checks itself: after installing, the
probe must pass, or the fix is removed again and the kernels keep refusing that dtype.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class _Fix:
    name: str
    method: str
    signature: tuple[str, ...]
    probe: str  # name of the probe in paged_kernels._interpreter_probe
    make: Callable  # original method -> replacement


def _fixed_dot(original):
    import triton.language as tl

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype.scalar == tl.bfloat16:
            a = self.cast_impl(a, tl.float32)
        if b.dtype.scalar == tl.bfloat16:
            b = self.cast_impl(b, tl.float32)
        return original(self, a, b, d, input_precision, max_num_imprecise_acc)

    return create_dot


def _fixed_fp8_cast(original):
    import triton.language as tl
    from triton.runtime.interpreter import TensorHandle

    def create_fp_to_fp(self, src, dst_type, rounding_mode):
        if dst_type.scalar == tl.float8e4nv and src.dtype.scalar == tl.float32:
            values = torch.from_numpy(np.ascontiguousarray(src.data, dtype=np.float32))
            bits = values.to(torch.float8_e4m3fn).view(torch.uint8).numpy()
            return TensorHandle(bits, dst_type.scalar)
        return original(self, src, dst_type, rounding_mode)

    return create_fp_to_fp


def _fixed_int_to_bf16(original):
    import triton.language as tl

    def create_si_to_fp(self, src, dst_type):
        if dst_type.scalar == tl.bfloat16:
            return self.cast_impl(self.cast_impl(src, tl.float32), dst_type)
        return original(self, src, dst_type)

    return create_si_to_fp


FIXES = (
    _Fix("bf16 tl.dot (triton #11584)", "create_dot",
         ("self", "a", "b", "d", "input_precision", "max_num_imprecise_acc"), "bf16_dot_is_exact", _fixed_dot),
    _Fix("fp32->fp8e4m3 cast rounding", "create_fp_to_fp",
         ("self", "src", "dst_type", "rounding_mode"), "fp8_cast_is_exact", _fixed_fp8_cast),
    _Fix("int -> bf16 cast", "create_si_to_fp", ("self", "src", "dst_type"), "int_to_bf16_is_exact",
         _fixed_int_to_bf16),
)
_installed: set[str] = set()


def _builder():
    from triton.runtime.interpreter import InterpreterBuilder

    return InterpreterBuilder


def _probe(fix: _Fix) -> bool:
    from paged_kernels import _interpreter_probe

    _interpreter_probe.reset()
    return getattr(_interpreter_probe, fix.probe)()


def _install_one(fix: _Fix) -> str:
    builder = _builder()
    if _probe(fix):
        return f"{fix.name}: exact, no fix needed"
    original = getattr(builder, fix.method, None)
    if original is None or tuple(inspect.signature(original).parameters) != fix.signature:
        return f"{fix.name}: WRONG and unknown to the fix, dtype stays refused"
    replacement = fix.make(original)
    replacement.__wrapped_original__ = original
    setattr(builder, fix.method, replacement)
    if not _probe(fix):
        setattr(builder, fix.method, original)
        _probe(fix)
        return f"{fix.name}: fix did not take, dtype stays refused"
    _installed.add(fix.name)
    return f"{fix.name}: fixed"


def install() -> str:
    """Install every needed fix; returns a one-line status for the session header."""
    return "; ".join(_install_one(fix) for fix in FIXES)


def uninstall(name: str | None = None) -> None:
    builder = _builder()
    for fix in FIXES:
        if name not in (None, fix.name):
            continue
        original = getattr(getattr(builder, fix.method), "__wrapped_original__", None)
        if original is not None:
            setattr(builder, fix.method, original)
        _installed.discard(fix.name)
    from paged_kernels import _interpreter_probe

    _interpreter_probe.reset()


def installed(name: str) -> bool:
    return name in _installed


def dtype_usable(dtype_name: str, status: str) -> bool:
    """Whether cases in ``dtype_name`` can run on the interpreter given the install status."""
    fix = {"bfloat16": FIXES[0], "float8_e4m3fn": FIXES[1]}.get(dtype_name)
    return fix is None or f"{fix.name}: fixed" in status or f"{fix.name}: exact" in status
