"""Which keys each query token may see, and the score transforms, in plain PyTorch.

Everything here works on one sequence at a time and favours clarity over speed.
"""

from __future__ import annotations

import torch


def query_positions(seq_len: int, q_len: int, device) -> torch.Tensor:
    """Absolute positions of a sequence's query tokens: they are its last ``q_len`` positions."""
    return torch.arange(seq_len - q_len, seq_len, device=device)


def visibility(seq_len: int, q_len: int, causal: bool, window_size, device) -> torch.Tensor:
    """Boolean ``[q_len, seq_len]``: may the query at row i see key j.

    ``window_size = (left, right)``, -1 meaning unlimited. Key j is visible to the query at
    position p iff ``p - j <= left`` (when left >= 0) and ``j - p <= right`` (when right >= 0);
    causal attention is the special case right = 0.
    """
    left, right = window_size
    pos = query_positions(seq_len, q_len, device)[:, None]
    key = torch.arange(seq_len, device=device)[None, :]
    visible = torch.ones(q_len, seq_len, dtype=torch.bool, device=device)
    if causal:
        visible &= key <= pos
    elif right >= 0:
        visible &= key - pos <= right
    if left >= 0:
        visible &= pos - key <= left
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
