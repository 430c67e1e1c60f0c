"""Device and import setup shared by the commands that run kernels (replay, minimize).

Triton decides at decoration time whether a kernel is interpreted, so ``TRITON_INTERPRET``
must be set before ``kernels`` (or anything else that imports triton) is imported; and a
mutant's copy of ``kernels`` must be first on ``sys.path`` before the first ``import kernels``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
_state: dict = {}


def setup(device: str = "auto", kernels_root: Path | None = None) -> str:
    """Pick the device ("cpu" or "cuda"), set the interpreter up, and fix where ``kernels`` comes from.

    ``kernels_root``: a folder holding a ``kernels`` package (a mutant's copy) that must shadow
    the repository's. Returns the device. Idempotent for the same arguments.
    """
    key = (device, str(kernels_root))
    if _state.get("key") == key:
        return _state["device"]
    if _state:
        raise RuntimeError(f"triage.env.setup called twice with different arguments: {_state['key']} then {key}")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    if kernels_root is not None:
        if "kernels" in sys.modules:
            raise RuntimeError("kernels was imported before the mutant's copy could be put first on sys.path")
        sys.path.insert(0, str(kernels_root))
    import torch  # torch does not import triton

    device = {"gpu": "cuda"}.get(device, device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda or auto, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch sees no CUDA device")
    wanted = "1" if device == "cpu" else "0"
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") != wanted:
        raise RuntimeError("triton was imported before the device was chosen; TRITON_INTERPRET can no longer change")
    os.environ["TRITON_INTERPRET"] = wanted
    status = "not interpreting"
    if device == "cpu":
        import warnings

        # The interpreter evaluates kernels with numpy: masked-off lanes overflow harmlessly (inf / NaN
        # that the kernel then discards), and numpy warns about each one.
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"triton\.runtime\.interpreter")
        from tests.harness import interpreter_fix

        status = interpreter_fix.install()
    import kernels

    _state.update(key=key, device=device, interpreter=status, kernels_file=kernels.__file__)
    return device


def interpreter_status() -> str:
    return _state.get("interpreter", "not set up")


def kernels_file() -> str:
    return _state.get("kernels_file", "?")


def dtype_usable(dtype_name: str | None) -> bool:
    if not dtype_name or _state.get("device") != "cpu":
        return True
    from tests.harness.interpreter_fix import dtype_usable as usable

    return usable(dtype_name, interpreter_status())
