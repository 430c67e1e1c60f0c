"""Which keys each query token may see, and the score transforms, in plain PyTorch.

Everything here works on one sequence at a time and favours clarity over speed.
"""

from __future__ import annotations

import torch


def query_positions(seq_len: int, q_len: int, device) -> torch.Tensor:
    """Absolute positions of a sequence's query tokens: they are its last ``q_len`` positions."""
    return torch.arange(seq_len - q_len, seq_len, device=device)


def chunk_size(window_left: int, chunk_lookback: int) -> int:
    """Chunked attention's chunk length: the left window spread over the lookback chunks plus the own one."""
    return (window_left + 1) // (chunk_lookback + 1)


def visibility(seq_len: int, q_len: int, causal: bool, window_size, device, *, chunk_lookback: int = -1,
               prefix_ranges=(), clamp_ranges_to_window: bool = False) -> torch.Tensor:
    """Boolean ``[q_len, seq_len]``: may the query at row i see key j.

    ``window_size = (left, right)``, -1 meaning unlimited. Key j is visible to the query at
    position p iff ``p - j <= left`` (when left >= 0) and ``j - p <= right`` (when right >= 0);
    causal attention is the special case right = 0.

    Chunked (block-local) attention, ``chunk_lookback >= 0`` (causal, with left >= 0), replaces
    the sliding window: with chunk size ``C = chunk_size(left, chunk_lookback)`` key j is visible
    iff ``j <= p`` and ``p // C - j // C <= chunk_lookback``, i.e. the query's own chunk and the
    ``chunk_lookback`` chunks before it.

    ``prefix_ranges`` are one sequence's inclusive position ranges ``(start, end)``; entries with
    ``start >= end`` are unused. A query inside a range also sees every key of that range, later
    ones included (bidirectional image tokens / prefix-LM). With ``clamp_ranges_to_window`` those
    extra keys must also satisfy the window's left bound ``p - j <= left`` (when left >= 0).
    """
    left, right = window_size
    pos = query_positions(seq_len, q_len, device)[:, None]
    key = torch.arange(seq_len, device=device)[None, :]
    visible = torch.ones(q_len, seq_len, dtype=torch.bool, device=device)
    if chunk_lookback >= 0:
        size = chunk_size(left, chunk_lookback)
        visible &= key <= pos
        visible &= pos // size - key // size <= chunk_lookback
    else:
        if causal:
            visible &= key <= pos
        elif right >= 0:
            visible &= key - pos <= right
        if left >= 0:
            visible &= pos - key <= left
    for start, end in prefix_ranges:
        if start >= end:
            continue  # an unused entry
        both_inside = (pos >= start) & (pos <= end) & (key >= start) & (key <= end)
        if clamp_ranges_to_window and left >= 0:
            both_inside &= pos - key <= left
        visible |= both_inside
    return visible


def stable_softcap(scores: torch.Tensor, softcap: float) -> torch.Tensor:
    """``softcap * tanh(scores / softcap)``; torch.tanh saturates cleanly for any magnitude."""
    if softcap == 0:
        return scores
    return softcap * torch.tanh(scores / softcap)


def alibi_bias(slopes: torch.Tensor, seq_len: int, q_len: int) -> torch.Tensor:
    """``[heads, q_len, seq_len]`` bias ``slope * (j - p)``."""
    pos = query_positions(seq_len, q_len, slopes.device)
    key = torch.arange(seq_len, device=slopes.device)
    distance = (key[None, :] - pos[:, None]).to(slopes.dtype)
    return slopes[:, None, None] * distance[None]
