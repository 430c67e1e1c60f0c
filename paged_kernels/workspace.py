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

    @classmethod
    def over_buffers(cls, acc: torch.Tensor, max: torch.Tensor, expsum: torch.Tensor, head_size: int, *,
                     num_segments: int | None = None, merge_counters: torch.Tensor | None = None,
                     names: tuple[str, str, str] = ("acc", "max", "expsum")) -> "Workspace":
        """A workspace over caller-owned buffers, nothing copied or allocated: float32 ``acc``
        ``[max_num_tokens, num_q_heads, S, next_power_of_2(head_size)]`` and ``max``/``expsum``
        ``[max_num_tokens, num_q_heads, S]``, all contiguous on one device (vLLM's split-KV scratch
        buffers have this layout).

        ``num_segments`` (default S, at most S) caps the segments a call may use. ``merge_counters``:
        int32, contiguous, all zero (``__init__`` sizes them); None gives none, so every split call
        takes the reduction launch. ``names`` name the three buffers in errors (a caller's argument
        names). Raises ValueError naming the buffer or argument at fault.
        """
        acc_name, max_name, sum_name = names
        buffers = ((acc_name, acc, 4), (max_name, max, 3), (sum_name, expsum, 3))
        for name, t, ndim in buffers:
            if not isinstance(t, torch.Tensor) or t.dim() != ndim:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name}: expected a {ndim}-dimensional tensor, got {shape}")
            if t.dtype != torch.float32:
                raise ValueError(f"{name}: expected dtype torch.float32, got {t.dtype}")
            if t.device != acc.device:
                raise ValueError(f"{name}: on {t.device}, {acc_name} is on {acc.device}")
            # The kernels index all three with max's (token, head) strides and dense segments.
            if not t.is_contiguous():
                raise ValueError(f"{name}: expected a contiguous tensor, got strides {t.stride()}")
        if min(acc.shape) < 1:
            raise ValueError(f"{acc_name}: every size must be >= 1, got shape {tuple(acc.shape)}")
        for name, t in ((max_name, max), (sum_name, expsum)):
            if t.shape != acc.shape[:3]:
                raise ValueError(f"{name}: expected shape {tuple(acc.shape[:3])} ({acc_name}'s first three), "
                                 f"got {tuple(t.shape)}")
        if acc.shape[3] != next_power_of_2(head_size):
            raise ValueError(f"{acc_name}: last dimension must be {next_power_of_2(head_size)} (head size "
                             f"{head_size} padded to a power of two), got {acc.shape[3]}")
        capacity = acc.shape[2]
        num_segments = capacity if num_segments is None else num_segments
        if isinstance(num_segments, bool) or not isinstance(num_segments, int) or not 1 <= num_segments <= capacity:
            raise ValueError(f"num_segments: expected an int in [1, {capacity}] (the buffers' segments), "
                             f"got {num_segments!r}")
        if merge_counters is None:
            merge_counters = torch.empty(0, dtype=torch.int32, device=acc.device)
        elif (merge_counters.dtype != torch.int32 or merge_counters.dim() != 1 or not merge_counters.is_contiguous()
              or merge_counters.device != acc.device):
            raise ValueError(f"merge_counters: expected a contiguous 1-dimensional torch.int32 tensor on "
                             f"{acc.device}, got {merge_counters.dtype} {tuple(merge_counters.shape)} on "
                             f"{merge_counters.device}")
        workspace = cls.__new__(cls)
        workspace.max_num_tokens, workspace.num_q_heads = acc.shape[0], acc.shape[1]
        workspace.head_size, workspace.head_pad = head_size, acc.shape[3]
        workspace.num_segments = num_segments
        workspace.acc, workspace.max, workspace.expsum = acc, max, expsum
        workspace.merge_counters = merge_counters
        return workspace

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
