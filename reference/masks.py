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
               prefix_ranges=(), clamp_ranges_to_window: bool = False, rswa_prefix_len: int | None = None,
               rswa_window: int | None = None) -> torch.Tensor:
    """Boolean ``[q_len, seq_len]``: may the query at row i see key j.

    ``window_size = (left, right)``, -1 meaning unlimited. Key j is visible to the query at
    position p iff ``p - j <= left`` (when left >= 0) and ``j - p <= right`` (when right >= 0);
    causal attention is the special case right = 0.

    Chunked (block-local) attention, ``chunk_lookback >= 0`` (causal, with left >= 0), replaces
    the sliding window: with chunk size ``C = chunk_size(left, chunk_lookback)`` key j is visible
    iff ``j <= p`` and ``p // C - j // C <= chunk_lookback``, i.e. the query's own chunk and the
    ``chunk_lookback`` chunks before it.

    R-SWA, ``rswa_window`` (>= 1, with the left window unlimited): the causal or bidirectional
    mask is further restricted to keys ``j < rswa_prefix_len`` (the prompt prefix, always
    visible) or ``p - j < rswa_window``. A negative prefix length acts as 0.

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
    if rswa_window is not None:
        prefix = 0 if rswa_prefix_len is None else rswa_prefix_len
        visible &= (key < prefix) | (pos - key < rswa_window)
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


def alibi_bias(slopes: torch.Tensor, seq_len: int, q_len: int, sqrt: bool = False) -> torch.Tensor:
    """``[heads, q_len, seq_len]`` bias ``slope * (j - p)``.

    With ``sqrt`` (vLLM's ALiBi-sqrt): ``-slope * sqrt(p - j)`` for keys ``j <= p``, 0 for later keys.
    """
    pos = query_positions(seq_len, q_len, slopes.device)
    key = torch.arange(seq_len, device=slopes.device)
    distance = (key[None, :] - pos[:, None]).to(slopes.dtype)
    if sqrt:
        distance = torch.where(distance <= 0, -torch.sqrt(-distance.clamp(max=0)), torch.zeros_like(distance))
    return slopes[:, None, None] * distance[None]


def qq_bias_block(qq_bias: torch.Tensor, seq_len: int, q_len: int, dtype) -> torch.Tensor:
    """``[q_len, seq_len]``: row i, key ``context_len + j`` gets ``qq_bias[i, j]``; other keys 0."""
    context_len = seq_len - q_len
    width = min(qq_bias.shape[1], q_len)  # columns past q_len would be keys past the sequence's end
    block = torch.zeros(q_len, seq_len, dtype=dtype, device=qq_bias.device)
    block[:, context_len:context_len + width] = qq_bias[:q_len, :width].to(dtype)
    return block
