"""Choosing the device, once per process, before anything imports triton.

Triton decides when a kernel is decorated whether it runs compiled or in the interpreter, so
``TRITON_INTERPRET`` must be set before ``paged_kernels`` (or anything else that imports triton) is
imported. ``setup`` does that for every entry point (the pytest conftest, the main job, the
memsafety driver, triage and eval), installs the interpreter fixes on CPU, and can put a
mutant's copy of ``paged_kernels`` first on ``sys.path``.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

CHOICES = ("auto", "cpu", "cuda", "gpu")
_state: dict = {}


def resolve(requested: str = "auto") -> str:
    """"cpu" or "cuda" for a requested device (gpu is cuda; auto is cuda when torch sees one)."""
    import torch  # torch does not import triton

    requested = (requested or "auto").lower()
    if requested not in CHOICES:
        raise ValueError(f"device must be one of {', '.join(CHOICES)}, got {requested!r}")
    if requested in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {requested!r} requested but torch sees no CUDA device")
        return "cuda"
    if requested == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def setup(requested: str = "auto", kernels_root: Path | str | None = None) -> str:
    """Pick the device, set the interpreter up for CPU, and fix where ``paged_kernels`` comes from.

    ``kernels_root``: a folder holding a ``paged_kernels`` package (a mutant's copy) that must shadow
    the installed one. Returns "cpu" or "cuda". A second call with the same outcome is a no-op;
    one that would change the device or the kernels after triton was loaded raises.
    """
    device = resolve(requested)
    key = (device, None if kernels_root is None else str(Path(kernels_root).resolve()))
    if _state:
        if _state["key"] != key:
            raise RuntimeError(f"the device was set up as {_state['key']}; it cannot become {key} in this process")
        return device
    if kernels_root is not None:
        if "paged_kernels" in sys.modules:
            raise RuntimeError("kernels was imported before the mutant's copy could be put first on sys.path")
        sys.path.insert(0, key[1])
    wanted = "1" if device == "cpu" else "0"
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") != wanted:
        raise RuntimeError("triton was imported before the device was chosen; TRITON_INTERPRET can no longer change")
    os.environ["TRITON_INTERPRET"] = wanted
    status = "not interpreting"
    if device == "cpu":
        # The interpreter evaluates kernels with numpy: masked-off lanes overflow harmlessly (inf or
        # NaN the kernel then discards), and the stable tanh overflows exp2 on purpose.
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"triton\.runtime\.interpreter")
        warnings.filterwarnings("ignore", "overflow encountered in exp2", RuntimeWarning)
        from . import interpreter_fix, interpreter_speed

        status = f"{interpreter_fix.install()}; {interpreter_speed.install()}"
    import paged_kernels

    _state.update(key=key, device=device, interpreter=status, kernels_file=paged_kernels.__file__)
    return device


def ensure() -> str:
    """The device already set up in this process, or set it up now: the interpreter when the
    environment already asks for it (``TRITON_INTERPRET=1``), else auto."""
    if _state:
        return _state["device"]
    return setup("cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "auto")


def current() -> str:
    """The device ``setup`` chose (raises before ``setup``)."""
    if not _state:
        raise RuntimeError("attention_suite.device.setup() has not run in this process")
    return _state["device"]


def interpreter_status() -> str:
    return _state.get("interpreter", "not set up")


def kernels_file() -> str:
    return _state.get("kernels_file", "?")


def dtype_usable(dtype_name: str | None) -> bool:
    """Whether the interpreter can run ``dtype_name`` (always true off the interpreter)."""
    if not dtype_name or _state.get("device") != "cpu":
        return True
    from .interpreter_fix import dtype_usable as usable

    return usable(dtype_name, interpreter_status())
