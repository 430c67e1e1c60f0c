"""A plain streaming read in Triton, one of the read measurements behind the HBM floor.

Each program sums ``ITERS`` consecutive ``BLOCK``-element blocks (one partial sum per program,
stored so the loads cannot be dropped); with several loads in flight per program (num_stages=4)
it streamed 4.56 TB/s on an H200 where ``torch.sum`` gave 4.23, so a floor from ``torch.sum``
alone would be beatable. Imported only on the GPU path (importing triton fixes the interpreter
choice, see attention_suite.device).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096
ITERS = 16
NUM_STAGES = 4


@triton.jit
def _stream_sum(src_ptr, partial_ptr, n, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    pid = tl.program_id(0)
    base = pid.to(tl.int64) * (BLOCK * ITERS)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in tl.range(0, ITERS):
        offs = base + i * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(src_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
    tl.store(partial_ptr + pid, tl.sum(acc, axis=0))


def partials_for(src: torch.Tensor) -> torch.Tensor:
    """The per-program output buffer ``stream_sum`` writes for ``src``."""
    return torch.empty(triton.cdiv(src.numel(), BLOCK * ITERS), dtype=torch.float32, device=src.device)


def stream_sum(src: torch.Tensor, partials: torch.Tensor) -> torch.Tensor:
    """Read every element of the contiguous ``src`` once; ``partials`` from ``partials_for``."""
    grid = (partials.numel(),)
    _stream_sum[grid](src, partials, src.numel(), BLOCK=BLOCK, ITERS=ITERS, num_stages=NUM_STAGES)
    return partials
