"""A speed-up for the Triton interpreter, installed with the interpreter fixes (CPU only).

Not a bug fix: results are bit-identical with and without it. The interpreter patches
``triton.language`` once per kernel launch (``GridExecutor``) and then again on every call of a
``@triton.jit`` helper inside the kernel (``InterpretedFunction.__call__``), each time walking the
language modules with ``inspect.getmembers``: about 2 ms per helper call, a third of the CPU time
of a 2D launch with our kernels' helpers. Inside a launch the language is already patched, so a
helper whose module sees no language module that the launch did not patch skips the walk.

Installed only when the interpreter has the known shape (``_patch_lang(fn)`` returning a scope
with ``restore()``), and it checks itself: a probe kernel with nested helpers must give the same
bits with and without the shortcut, twice in a row, or it is removed again.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
import triton
import triton.language as tl
import triton.runtime.interpreter as interpreter

_original_patch_lang = getattr(interpreter, "_patch_lang", None)
_patched: dict = {"langs": None}  # ids of the language modules the running launch patched


class _NothingToRestore:
    def restore(self) -> None:
        pass


def _languages(fn) -> frozenset:
    return frozenset(id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core))


def _patch_lang_once(fn):
    langs = _languages(fn)
    if _patched["langs"] is not None and langs <= _patched["langs"]:
        return _NothingToRestore()  # a helper inside a launch: already patched
    scope = _original_patch_lang(fn)
    if _patched["langs"] is None:  # a launch: the patch lives until its scope is restored
        _patched["langs"] = langs
        restore = scope.restore

        def restore_and_forget():
            _patched["langs"] = None
            restore()

        scope.restore = restore_and_forget
    else:  # a helper that sees another language module: patched by the original, as before
        _patched["langs"] = _patched["langs"] | langs
    return scope


@triton.jit
def _scaled(x, s):
    return tl.where(x > 0, x * s, -x)


@triton.jit
def _summed(x, s):
    return tl.sum(_scaled(x, s), axis=0) + tl.max(x, axis=0)


@triton.jit
def _probe_kernel(x_ptr, y_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    x = tl.load(x_ptr + tl.program_id(0) * N + offs)
    tl.store(y_ptr + tl.program_id(0), _summed(x, 3.0) + tl.sqrt(tl.abs(_scaled(x, 0.5)).to(tl.float32)).sum(0))


def _probe() -> np.ndarray:
    x = torch.linspace(-3.0, 5.0, 64, dtype=torch.float32).reshape(4, 16)
    y = torch.zeros(4, dtype=torch.float32)
    _probe_kernel[(4,)](x, y, N=16)
    return y.numpy().view(np.uint32).copy()


def install() -> str:
    if _original_patch_lang is None or tuple(inspect.signature(_original_patch_lang).parameters) != ("fn",):
        return "interpreter speed-up: unknown interpreter, not installed"
    if interpreter._patch_lang is _patch_lang_once:
        return "interpreter speed-up: installed"
    expected = _probe()
    interpreter._patch_lang = _patch_lang_once
    try:
        # Two launches: a shortcut that leaks its state breaks the second one.
        same = all(np.array_equal(_probe(), expected) and _patched["langs"] is None for _ in range(2))
    except Exception:  # noqa: BLE001 - any failure means the shortcut does not fit this interpreter
        same = False
    if not same:
        uninstall()
        return "interpreter speed-up: changed a probe's bits, not installed"
    return "interpreter speed-up: installed"


def uninstall() -> None:
    if _original_patch_lang is not None:
        interpreter._patch_lang = _original_patch_lang
    _patched["langs"] = None


def installed() -> bool:
    return _original_patch_lang is not None and interpreter._patch_lang is _patch_lang_once
