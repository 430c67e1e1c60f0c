"""Reproducer files: everything needed to replay one failing call, loadable with weights_only=True.

A file holds the case (as a plain dict), the seed, the path, the implementation spec, the
device and versions, the observed and allowed errors, and the input tensors themselves, so it
stands alone; replay rebuilds the inputs from case + seed (keeping the memory layout) and
checks them against the stored tensors.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

import torch

TENSOR_FIELDS = ("q", "k", "v", "cu_seqlens_q", "seqused_k", "block_table", "k_descale", "v_descale",
                 "alibi_slopes", "sinks", "output_scale", "mm_prefix_range", "k_scale_cache", "v_scale_cache",
                 "q_descale")


def versions() -> dict:
    import triton

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor() or 'unknown'})"
    # str(): torch.__version__ is a TorchVersion, which weights_only=True loading refuses.
    return {"torch": str(torch.__version__), "triton": str(triton.__version__), "device": device,
            "python": platform.python_version()}


def _cpu(t):
    return None if t is None else t.detach().to("cpu").contiguous()


def save(ctx, inputs, path: str, verdict, run_kwargs: dict) -> str:
    case = inputs.case
    payload = {
        "format": 1,
        "case": case.describe(),
        "seed": inputs.seed,
        "path": path,
        "run_kwargs": {k: v for k, v in run_kwargs.items() if isinstance(v, (int, float, bool, str, type(None)))},
        "impl": ctx.impl.spec,
        "nodeid": ctx.nodeid,
        "versions": versions(),
        "error": {"max": verdict.max_err, "mean": verdict.mean_err, "allowed_max": verdict.allowed_max,
                  "allowed_mean": verdict.allowed_mean, "nonfinite": verdict.nonfinite},
        "tensors": {name: _cpu(getattr(inputs, name)) for name in TENSOR_FIELDS},
        "softmax_scale": inputs.softmax_scale,
        # Set by `python -m triage mutants` in the copy it runs; replay re-applies that mutant.
        "mutant": os.environ.get("ATTN_TRIAGE_MUTANT"),
        # A workspace object is not storable; replay gives the 3D path a NaN-filled one of this size.
        "workspace": _workspace_shape(run_kwargs.get("workspace")),
    }
    digest = hashlib.sha1(f"{ctx.nodeid}|{path}".encode()).hexdigest()[:10]
    Path(ctx.repro_dir).mkdir(parents=True, exist_ok=True)
    target = os.path.join(ctx.repro_dir, f"{case.name[:60]}-{path}-{digest}.pt")
    torch.save(payload, target)
    return target


def _workspace_shape(workspace):
    if workspace is None:
        return None
    return {"max_num_tokens": int(workspace.max_num_tokens), "num_segments": int(workspace.num_segments)}


def load(file: str) -> dict:
    return torch.load(file, weights_only=True, map_location="cpu")
