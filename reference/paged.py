"""Slow, obviously-correct paged attention with the kernels' calling convention.

The reference loops over sequences, gathers each sequence's keys and values out of the paged
cache into dense tensors, and does textbook masked softmax attention on them. It reads only the
cache slots a sequence owns (positions ``0 .. seqused_k - 1`` through its block table), so
unreferenced blocks and block-table entries past the last block never matter, and it zeroes
values that no query of the sequence can see, so NaN/Inf there cannot leak into the output.

Before anything is computed every argument is checked (``checks.check_call``): a call the
reference cannot give one clear meaning raises ``ValueError``/``TypeError`` naming the argument,
and ``out`` is left untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import FP8_DTYPES, check_call, fail, is_fp8
from .masks import alibi_bias, stable_softcap, visibility

PRECISIONS = ("float64", "native")


def compute_dtype_for(q_dtype: torch.dtype, precision: str) -> torch.dtype:
    """float64 for the golden; the query's own dtype for the same-precision baseline."""
    if precision not in PRECISIONS:
        fail("precision", f"expected one of {PRECISIONS}, got {precision!r}")
    return torch.float64 if precision == "float64" else q_dtype


@dataclass(frozen=True)
class SequenceScores:
    """One sequence's masked logits and values, ready for softmax (all in the compute dtype).

    scores: ``[num_q_heads, q_len, seq_len]`` with -inf where a key is invisible.
    values: ``[num_q_heads, seq_len, head_size]`` (already dequantized, zero where no query sees it).
    sinks: ``[num_q_heads]`` or None.
    """

    scores: torch.Tensor
    values: torch.Tensor
    sinks: torch.Tensor | None


def _dequantize(cache_rows: torch.Tensor, descale, dtype: torch.dtype) -> torch.Tensor:
    rows = cache_rows.to(dtype)
    if is_fp8(cache_rows.dtype) and descale is not None:
        rows = rows * descale.to(dtype).reshape(())
    return rows


def sequence_scores(
    seq: int,
    q, k, v, cu_seqlens_q, seqused_k, softmax_scale, causal, window_size, block_table,
    softcap, k_descale, v_descale, alibi_slopes, sinks, dtype: torch.dtype,
) -> SequenceScores | None:
    """Masked logits and values for sequence ``seq``; None when it has no query tokens."""
    q_start, q_end = int(cu_seqlens_q[seq]), int(cu_seqlens_q[seq + 1])
    q_len, seq_len = q_end - q_start, int(seqused_k[seq])
    if q_len == 0:
        return None
    num_q_heads, num_kv_heads = q.shape[1], k.shape[2]
    group = num_q_heads // num_kv_heads
    block_size = k.shape[1]

    key_pos = torch.arange(seq_len, device=q.device)
    blocks = block_table[seq, key_pos // block_size].long()
    slots = key_pos % block_size
    keys = _dequantize(k[blocks, slots], k_descale, dtype).repeat_interleave(group, dim=1)
    values = _dequantize(v[blocks, slots], v_descale, dtype).repeat_interleave(group, dim=1)
    queries = q[q_start:q_end].to(dtype)

    visible = visibility(seq_len, q_len, causal, tuple(window_size), q.device)
    seen_by_any = visible.any(dim=0)
    values = torch.where(seen_by_any[:, None, None], values, torch.zeros((), dtype=dtype, device=q.device))

    scores = torch.einsum("qhd,khd->hqk", queries, keys) * softmax_scale
    scores = stable_softcap(scores, softcap)
    if alibi_slopes is not None:
        scores = scores + alibi_bias(alibi_slopes.to(dtype), seq_len, q_len)
    scores = scores.masked_fill(~visible[None], float("-inf"))
    return SequenceScores(
        scores=scores,
        values=values.transpose(0, 1),
        sinks=None if sinks is None else sinks.to(dtype),
    )


def softmax_with_sinks(scores: torch.Tensor, values: torch.Tensor, sinks) -> torch.Tensor:
    """``softmax([scores, sink]) @ [values, 0]`` per head; rows with nothing visible give zeros."""
    row_max = scores.amax(dim=-1, keepdim=True)
    if sinks is not None:
        row_max = torch.maximum(row_max, sinks[:, None, None])
    row_max = torch.where(torch.isinf(row_max) & (row_max < 0), torch.zeros_like(row_max), row_max)
    weights = torch.exp(scores - row_max)
    denom = weights.sum(dim=-1, keepdim=True)
    if sinks is not None:
        denom = denom + torch.exp(sinks[:, None, None] - row_max)
    numer = torch.matmul(weights, values)
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(denom > 0, numer / safe, torch.zeros_like(numer))


def write_output(out: torch.Tensor, rows: slice, result: torch.Tensor, output_scale) -> None:
    """Store ``[q_len, heads, head_size]`` rows into ``out``, quantizing when ``out`` is fp8."""
    if is_fp8(out.dtype):
        scale = 1.0 if output_scale is None else output_scale.to(result.dtype).reshape(())
        limit = torch.finfo(out.dtype).max
        result = (result / scale).clamp(-limit, limit)
    out[rows] = result.to(out.dtype)


def iter_sequences(
    q, k, v, cu_seqlens_q, seqused_k, softmax_scale, causal, window_size, block_table,
    softcap, k_descale, v_descale, alibi_slopes, sinks, dtype,
):
    """Yield ``(output rows, SequenceScores, seq_len)`` for every sequence with query tokens."""
    window_size = (-1, -1) if window_size is None else tuple(window_size)
    softcap = 0.0 if softcap is None else float(softcap)
    for seq in range(cu_seqlens_q.numel() - 1):
        parts = sequence_scores(
            seq, q, k, v, cu_seqlens_q, seqused_k, softmax_scale, causal, window_size, block_table,
            softcap, k_descale, v_descale, alibi_slopes, sinks, dtype,
        )
        if parts is not None:
            yield slice(int(cu_seqlens_q[seq]), int(cu_seqlens_q[seq + 1])), parts, int(seqused_k[seq])


def unified_attention(
    q, k, v, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, softmax_scale, causal,
    window_size, block_table, softcap, q_descale, k_descale, v_descale,
    alibi_slopes=None, sinks=None, output_scale=None, *,
    split_kv=None, num_segments=None, workspace=None, batch_invariant=False, precision="float64",
):
    """Paged attention written for obviousness; writes into ``out`` and returns it.

    ``precision="float64"`` computes the golden, ``"native"`` computes every step in q's dtype
    (the same-precision baseline for the tolerance rule). ``split_kv``, ``num_segments``,
    ``workspace``, ``batch_invariant``, ``max_seqlen_q`` and ``max_seqlen_k`` are launch knobs
    of the kernels and are accepted and ignored here.
    """
    check_call(q, k, v, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, softmax_scale, causal,
               window_size, block_table, softcap, q_descale, k_descale, v_descale, alibi_slopes, sinks, output_scale)
    dtype = compute_dtype_for(q.dtype, precision)
    for rows, parts, _ in iter_sequences(q, k, v, cu_seqlens_q, seqused_k, softmax_scale, causal, window_size,
                                         block_table, softcap, k_descale, v_descale, alibi_slopes, sinks, dtype):
        result = softmax_with_sinks(parts.scores, parts.values, parts.sinks)  # [heads, q_len, dim]
        write_output(out, rows, result.transpose(0, 1), output_scale)
    return out
