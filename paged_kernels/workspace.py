"""Preallocated buffers for the split-KV path, so a call allocates nothing (CUDA-graph safe)."""

from __future__ import annotations

import torch

from .spec import next_power_of_2


class Workspace:
    """Per-segment partial outputs, maxima and exp-sums for up to ``max_num_tokens`` query tokens,
    and the fused merge's arrival counters.

    For decode batches one token is one sequence, so ``max_num_tokens`` is the largest batch.
    ``num_segments`` is the most segments a call may use. The partials need no initializing: the
    3D kernel writes every entry a merge reads. The counters (one per query block and KV head of a
    split decode grid, for up to ``max_num_seqs`` sequences, default ``max_num_tokens``) start at
    zero and every launch leaves them at zero; a call whose grid has more falls back to the
    reduction launch. Calls sharing a workspace must be ordered (one stream), as for the partials.
    """

    def __init__(self, max_num_tokens: int, num_q_heads: int, head_size: int, num_segments: int, device="cuda",
                 max_num_seqs: int | None = None):
        max_num_seqs = max_num_tokens if max_num_seqs is None else max_num_seqs
        if min(max_num_tokens, num_q_heads, head_size, num_segments, max_num_seqs) < 1:
            raise ValueError("Workspace: every size must be >= 1")
        self.max_num_tokens = max_num_tokens
        self.num_q_heads = num_q_heads
        self.head_size = head_size
        self.head_pad = next_power_of_2(head_size)
        self.num_segments = num_segments
        shape = (max_num_tokens, num_q_heads, num_segments)
        self.acc = torch.empty(*shape, self.head_pad, dtype=torch.float32, device=device)
        self.max = torch.empty(shape, dtype=torch.float32, device=device)
        self.expsum = torch.empty(shape, dtype=torch.float32, device=device)
        # A split grid has at most num_tokens + num_seqs query blocks, each with <= num_q_heads KV heads.
        self.merge_counters = torch.zeros((max_num_tokens + max_num_seqs) * num_q_heads, dtype=torch.int32,
                                          device=device)

    @property
    def device(self) -> torch.device:
        return self.acc.device

    def check_fits(self, num_tokens: int, num_q_heads: int, head_size: int, device) -> None:
        if num_tokens > self.max_num_tokens:
            raise ValueError(f"workspace: sized for {self.max_num_tokens} tokens, call has {num_tokens}")
        if num_q_heads != self.num_q_heads:
            raise ValueError(f"workspace: sized for {self.num_q_heads} query heads, call has {num_q_heads}")
        if head_size != self.head_size:
            raise ValueError(f"workspace: sized for head size {self.head_size}, call has {head_size}")
        if self.device != device:
            raise ValueError(f"workspace: on {self.device}, call is on {device}")

    def reset_counters_(self) -> "Workspace":
        """Zero the merge counters (needed only after a launch on this workspace failed mid-way)."""
        self.merge_counters.zero_()
        return self

    def fill_(self, value: float) -> "Workspace":
        """Poison the partials (tests use NaN to prove no unwritten entry is read); the counters
        are state, not scratch, and stay zero."""
        for t in (self.acc, self.max, self.expsum):
            t.fill_(value)
        return self
