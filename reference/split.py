"""Split-KV semantics: per-segment partial results and their log-sum-exp merge.

A segment is a contiguous range of key positions. For each (query, head) it yields the running
max ``m`` of its logits, the exp-sum ``l = sum(exp(s - m))`` and the unnormalized output
``acc = sum(exp(s - m) * v)``. A segment with no visible key has ``m = -inf, l = 0, acc = 0`` and
contributes nothing to the merge. Merging all segments must equal single-pass attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_num_segments
from .paged import iter_sequences, prepare_call, round_probabilities, write_lse, write_output


@dataclass(frozen=True)
class Partials:
    """One sequence's split-KV partials, ``num_segments`` first.

    max, expsum: ``[num_segments, heads, q_len]``; acc: ``[num_segments, heads, q_len, head_size]``.
    """

    max: torch.Tensor
    expsum: torch.Tensor
    acc: torch.Tensor


def segment_bounds(seq_len: int, num_segments: int) -> list[tuple[int, int]]:
    """Split key positions ``0 .. seq_len`` into ``num_segments`` equal spans (later ones may be empty)."""
    span = -(-seq_len // num_segments) if seq_len else 0
    return [(min(s * span, seq_len), min((s + 1) * span, seq_len)) for s in range(num_segments)]


def segment_partials(scores: torch.Tensor, values: torch.Tensor, bounds, prob_dtype=None) -> Partials:
    """Each segment's partials; ``prob_dtype`` rounds the P of ``acc`` (not of ``expsum``), as in one pass."""
    maxes, sums, accs = [], [], []
    for start, end in bounds:
        seg_scores = scores[..., start:end]
        if end > start:
            m = seg_scores.amax(dim=-1)
        else:
            m = torch.full(scores.shape[:-1], float("-inf"), dtype=scores.dtype, device=scores.device)
        m_safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
        weights = torch.exp(seg_scores - m_safe[..., None])
        maxes.append(m)
        sums.append(weights.sum(dim=-1))
        accs.append(torch.matmul(round_probabilities(weights, prob_dtype), values[:, start:end]))
    return Partials(torch.stack(maxes), torch.stack(sums), torch.stack(accs))


def merge_partials(partials: Partials, sinks=None) -> torch.Tensor:
    """Log-sum-exp merge of segments (and the optional per-head sink logit) -> ``[heads, q_len, dim]``.

    Never divides by zero: when no segment holds a visible key (and there is no sink) the
    result is zeros.
    """
    m = partials.max.amax(dim=0)
    if sinks is not None:
        m = torch.maximum(m, sinks[:, None])
    empty = torch.isneginf(m)  # not "denom == 0": a NaN logit must stay NaN, as in the single pass
    m_safe = torch.where(empty, torch.zeros_like(m), m)
    rescale = torch.exp(partials.max - m_safe)  # exp(-inf) = 0 for empty segments
    denom = (partials.expsum * rescale).sum(dim=0)
    if sinks is not None:
        denom = denom + torch.exp(sinks[:, None] - m_safe)
    numer = (partials.acc * rescale[..., None]).sum(dim=0)
    safe = torch.where(empty, torch.ones_like(denom), denom)
    return torch.where(empty[..., None], torch.zeros_like(numer), numer / safe[..., None])


def merge_lse(partials: Partials, sinks=None) -> torch.Tensor:
    """``[heads, q_len]`` log-sum-exp over all segments (and the sink): each segment adds ``max + log(expsum)``.

    An empty segment adds ``-inf``; a row with no visible key and no sink is ``-inf``.
    """
    terms = partials.max + torch.log(partials.expsum)
    if sinks is not None:
        terms = torch.cat([terms, sinks[None, :, None].expand(1, -1, terms.shape[-1])])
    return torch.logsumexp(terms, dim=0)


def split_kv_attention(
    q, k, v, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, softmax_scale, causal,
    window_size, block_table, softcap, q_descale, k_descale, v_descale,
    alibi_slopes=None, sinks=None, output_scale=None, *,
    kv_quant_mode=None, k_scale_cache=None, v_scale_cache=None,
    chunk_lookback=-1, mm_prefix_range=None, mm_prefix_clamp_sliding_window=False,
    num_segments=4, precision="float64", split_kv=None, workspace=None, batch_invariant=False,
    qq_bias=None, rswa_prefix_lens=None, rswa_window=None, use_alibi_sqrt=False, softmax_lse=None,
):
    """Paged attention computed segment by segment and merged; must equal the single pass.

    Takes every feature keyword of ``unified_attention``; the launch knobs are ignored.
    """
    check_num_segments(num_segments, allow_none=False)
    call = prepare_call(q, k, v, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, softmax_scale, causal,
                        window_size, block_table, softcap, q_descale, k_descale, v_descale, alibi_slopes, sinks,
                        output_scale, precision, kv_quant_mode, k_scale_cache, v_scale_cache, chunk_lookback,
                        mm_prefix_range, mm_prefix_clamp_sliding_window, qq_bias, rswa_prefix_lens, rswa_window,
                        use_alibi_sqrt, softmax_lse)
    for rows, parts, seq_len in iter_sequences(call):
        bounds = segment_bounds(seq_len, num_segments)
        partials = segment_partials(parts.scores, parts.values, bounds, parts.prob_dtype)
        write_output(out, rows, merge_partials(partials, parts.sinks).transpose(0, 1), output_scale)
        write_lse(softmax_lse, rows, merge_lse(partials, parts.sinks))
    return out
