"""Device and dtype defaults (the Triton interpreter switch is ``eval.setup``)."""

from __future__ import annotations

import torch


def has_cuda() -> bool:
    return torch.cuda.is_available()


def default_device() -> str:
    return "cuda" if has_cuda() else "cpu"


def default_dtype(device: str) -> str:
    # bf16 tl.dot is wrong under the Triton interpreter (triton issue 11584), so CPU runs use
    # float32; on a GPU bf16 is what the job is about.
    return "bfloat16" if str(device).startswith("cuda") else "float32"


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str | torch.dtype, device: str) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "auto"):
        name = default_dtype(device)
    name = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} or auto, got {name!r}")
    return DTYPES[name]
