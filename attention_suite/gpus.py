"""Pinning pytest-xdist workers to GPUs: worker N of a run uses visible GPU N mod count.

Pinning is by ``torch.cuda.set_device`` in the worker, so every ``"cuda"`` tensor a test
makes lands on its GPU and no test depends on which one that is.
"""

from __future__ import annotations

import os
import re


def worker_index(worker_id: str | None) -> int | None:
    """0 for 'gw0', 5 for 'gw5'; None outside xdist (or for the controller)."""
    if not worker_id:
        return None
    match = re.fullmatch(r"gw(\d+)", worker_id)
    return int(match.group(1)) if match else None


def assign_gpu(worker_id: str | None, num_gpus: int) -> int | None:
    """Round-robin GPU index for a worker; None when there is no GPU or no worker."""
    index = worker_index(worker_id)
    if num_gpus <= 0:
        return None
    return 0 if index is None else index % num_gpus


def assignment_table(num_workers: int, num_gpus: int) -> dict[str, int]:
    return {f"gw{i}": assign_gpu(f"gw{i}", num_gpus) for i in range(num_workers)}


def pin_current_worker() -> int | None:
    """Pin this process to its GPU; returns the GPU index (None without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return None
    gpu = assign_gpu(os.environ.get("PYTEST_XDIST_WORKER"), torch.cuda.device_count())
    torch.cuda.set_device(gpu)
    return gpu
