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

from . import int4
from .checks import (  # noqa: F401 (re-exported)
    FP8_DTYPES,
    INT4_MODE,
    KV_QUANT_MODES,
    check_call,
    check_num_segments,
    fail,
    is_fp8,
)
from .masks import alibi_bias, qq_bias_block, stable_softcap, visibility

PRECISIONS = ("float64", "native")
NATIVE_FP8_QUERY_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def compute_dtype_for(q_dtype: torch.dtype, precision: str, out_dtype: torch.dtype | None = None) -> torch.dtype:
    """The dtype every step is computed in.

    float64 for the golden. For the same-precision baseline, the query's own dtype, except for
    fp8 queries: no kernel does softmax arithmetic in fp8 (and torch cannot), they feed fp8
    operands to the dot products and do the rest in the model's activation dtype. So the baseline
    uses out's dtype when it is a 16/32-bit float, else (fp8 or float64 out) bfloat16, the
    activation dtype of the models that ship fp8 attention.
    """
    if precision not in PRECISIONS:
        fail("precision", f"expected one of {PRECISIONS}, got {precision!r}")
    if precision == "float64":
        return torch.float64
    if is_fp8(q_dtype):
        return out_dtype if out_dtype in NATIVE_FP8_QUERY_DTYPES else torch.bfloat16
    return q_dtype


@dataclass(frozen=True)
class Call:
    """One checked call with its options normalized (window a pair, softcap a float, mode a name).

    ``causal`` is a bool or the int32 ``[num_seqs]`` per-sequence flags.

    ``prob_dtype``: when set, unnormalized probabilities are rounded to it before ``P @ V`` while
    the normalizer sums the unrounded ones (see ``probability_rounding``).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    cu_seqlens_q: torch.Tensor
    seqused_k: torch.Tensor
    block_table: torch.Tensor
    softmax_scale: float
    causal: bool | torch.Tensor
    window: tuple[int, int]
    softcap: float
    q_descale: torch.Tensor | None
    k_descale: torch.Tensor | None
    v_descale: torch.Tensor | None
    alibi_slopes: torch.Tensor | None
    sinks: torch.Tensor | None
    kv_quant_mode: str
    k_scale_cache: torch.Tensor | None
    v_scale_cache: torch.Tensor | None
    chunk_lookback: int
    mm_prefix_range: torch.Tensor | None
    mm_prefix_clamp_sliding_window: bool
    qq_bias: torch.Tensor | None
    rswa_prefix_lens: torch.Tensor | None
    rswa_window: int | None
    use_alibi_sqrt: bool
    dtype: torch.dtype
    prob_dtype: torch.dtype | None


def probability_rounding(q_dtype, v_dtype, precision: str) -> torch.dtype | None:
    """Which dtype the native baseline rounds probabilities to before ``P @ V`` (None: the compute dtype).

    The baseline models the roundings a correct kernel cannot avoid, and no others:
      * every quantized input (fp8/int8 q, K, V) is the same stored value in golden and baseline;
        the golden dequantizes it exactly in float64, the baseline into its compute dtype;
      * with fp8 queries and an fp8 V cache a kernel computes ``P @ V`` on fp8 tensor cores, so
        P (the unnormalized ``exp(s - max)``, in (0, 1]) is rounded to V's fp8 dtype first, while
        the normalizer is summed from the unrounded P in higher precision. That rounding (3
        mantissa bits) dominates such a kernel's error; a baseline without it would be ~10x too
        strict for a correct fp8 kernel. A wrong descale, scale-cache index or mask still moves
        the output by O(1) relative, far outside 2x this error. For a per-token-head fp8 V the
        kernel may fold the row scale into P before rounding; rounding is relative, so rounding
        P alone models it as well;
      * with 16/32-bit queries the kernels dequantize K/V into q's dtype and P stays in it (the
        behaviour the baseline always had), and an int8 V is dequantized before the dot, never
        multiplied against a rounded P in int8.
    The golden rounds nothing.
    """
    if precision == "native" and is_fp8(q_dtype) and is_fp8(v_dtype):
        return v_dtype
    return None


@dataclass(frozen=True)
class SequenceScores:
    """One sequence's masked logits and values, ready for softmax (all in the compute dtype).

    scores: ``[num_q_heads, q_len, seq_len]`` with -inf where a key is invisible.
    values: ``[num_q_heads, seq_len, head_size]`` (already dequantized, zero where no query sees it).
    sinks: ``[num_q_heads]`` or None.
    prob_dtype: round probabilities to this before ``P @ V`` (None: no extra rounding).
    """

    scores: torch.Tensor
    values: torch.Tensor
    sinks: torch.Tensor | None
    prob_dtype: torch.dtype | None = None


def dequantize(cache: torch.Tensor, blocks, slots, seq: int, descale, scale_cache, mode: str,
               dtype: torch.dtype) -> torch.Tensor:
    """``[seq_len, num_kv_heads, head_size]`` rows of one sequence in ``dtype``.

    fp8/int8 -> float64 is exact and so is the product with a float32 scale (at most 8 + 24
    significant bits), so the golden sees the stored values exactly; the baseline rounds the scale
    and the product to its compute dtype, as a kernel dequantizing into it does.

    INT4 rows are unpacked, dequantized with their zero points and rotated back (``int4.rows``):
    exact in float64; the baseline rounds the product and every stage of the rotation to its
    compute dtype.
    """
    if mode == INT4_MODE:
        return int4.rows(cache[blocks, slots], scale_cache[blocks, slots], dtype)
    rows = cache[blocks, slots].to(dtype)
    if mode == "fp8_per_tensor":
        if descale.numel() == 1:
            rows = rows * descale.to(dtype).reshape(())
        else:  # one scale per (sequence, KV head): this sequence's row, broadcast over positions and dims
            rows = rows * descale[seq].to(dtype)[None, :, None]
    elif mode in ("int8_per_token_head", "fp8_per_token_head"):
        rows = rows * scale_cache[blocks, slots].to(dtype)[:, :, None]  # each cached row by its own scale
    return rows


def sequence_mask_args(seq: int, call: Call) -> tuple[bool, tuple[int, int]]:
    """Sequence ``seq``'s causal flag and window.

    Per-sequence flags follow vLLM: a causal sequence keeps the left window, a bidirectional one
    gets it on both sides (the call's right bound is -1, checked).
    """
    if not isinstance(call.causal, torch.Tensor):
        return call.causal, call.window
    left = call.window[0]
    if bool(call.causal[seq]):
        return True, (left, -1)
    return False, (left, left)


def sequence_scores(seq: int, call: Call) -> SequenceScores | None:
    """Masked logits and values for sequence ``seq``; None when it has no query tokens."""
    q_start, q_end = int(call.cu_seqlens_q[seq]), int(call.cu_seqlens_q[seq + 1])
    q_len, seq_len = q_end - q_start, int(call.seqused_k[seq])
    if q_len == 0:
        return None
    q, dtype = call.q, call.dtype
    num_q_heads, num_kv_heads, block_size = q.shape[1], call.k.shape[2], call.k.shape[1]
    group = num_q_heads // num_kv_heads
    ranges = () if call.mm_prefix_range is None else [tuple(r) for r in call.mm_prefix_range[seq].tolist()]
    causal, window = sequence_mask_args(seq, call)
    rswa_prefix_len = None if call.rswa_prefix_lens is None else int(call.rswa_prefix_lens[seq])
    visible = visibility(seq_len, q_len, causal, window, q.device, chunk_lookback=call.chunk_lookback,
                         prefix_ranges=ranges, clamp_ranges_to_window=call.mm_prefix_clamp_sliding_window,
                         rswa_prefix_len=rswa_prefix_len, rswa_window=call.rswa_window)
    bias = None
    if call.qq_bias is not None:
        bias = qq_bias_block(call.qq_bias, seq_len, q_len, dtype)
        visible = visible & ~torch.isneginf(bias)  # a -inf bias hides the key, as a mask would
    seen_by_any = visible.any(dim=0)[:, None, None]
    zero = torch.zeros((), dtype=dtype, device=q.device)

    key_pos = torch.arange(seq_len, device=q.device)
    blocks = call.block_table[seq, key_pos // block_size].long()
    slots = key_pos % block_size
    # Rows no query sees are replaced (a select, not a multiply by a mask): NaN/Inf in their cache
    # entries or scales cannot reach a dot product.
    keys = dequantize(call.k, blocks, slots, seq, call.k_descale, call.k_scale_cache, call.kv_quant_mode, dtype)
    values = dequantize(call.v, blocks, slots, seq, call.v_descale, call.v_scale_cache, call.kv_quant_mode, dtype)
    keys = torch.where(seen_by_any, keys, zero).repeat_interleave(group, dim=1)
    values = torch.where(seen_by_any, values, zero).repeat_interleave(group, dim=1)
    queries = q[q_start:q_end].to(dtype)
    if call.q_descale is not None:  # fp8 queries: dequantize like the cache (exact in float64)
        queries = queries * call.q_descale.to(dtype).reshape(())

    scores = torch.einsum("qhd,khd->hqk", queries, keys) * call.softmax_scale
    scores = stable_softcap(scores, call.softcap)
    if call.alibi_slopes is not None:
        scores = scores + alibi_bias(call.alibi_slopes.to(dtype), seq_len, q_len, sqrt=call.use_alibi_sqrt)
    if bias is not None:
        scores = scores + bias[None]
    # Masking last: an invisible key stays invisible whatever bias (even NaN or +inf) it got.
    scores = scores.masked_fill(~visible[None], float("-inf"))
    return SequenceScores(
        scores=scores,
        values=values.transpose(0, 1),
        sinks=None if call.sinks is None else call.sinks.to(dtype),
        prob_dtype=call.prob_dtype,
    )


def round_probabilities(weights: torch.Tensor, prob_dtype) -> torch.Tensor:
    """The P operand of ``P @ V``: ``weights`` rounded through ``prob_dtype`` (unchanged when None)."""
    return weights if prob_dtype is None else weights.to(prob_dtype).to(weights.dtype)


def softmax_with_sinks(scores: torch.Tensor, values: torch.Tensor, sinks, prob_dtype=None) -> torch.Tensor:
    """``softmax([scores, sink]) @ [values, 0]`` per head; rows with nothing visible give zeros.

    "Nothing visible" is decided from the row max being -inf, not from the denominator: a NaN
    that reached a visible logit must come out as NaN, never be turned into a quiet zero row.
    """
    row_max = scores.amax(dim=-1, keepdim=True)
    if sinks is not None:
        row_max = torch.maximum(row_max, sinks[:, None, None])
    empty = torch.isneginf(row_max)
    row_max = torch.where(empty, torch.zeros_like(row_max), row_max)
    weights = torch.exp(scores - row_max)
    denom = weights.sum(dim=-1, keepdim=True)
    if sinks is not None:
        denom = denom + torch.exp(sinks[:, None, None] - row_max)
    numer = torch.matmul(round_probabilities(weights, prob_dtype), values)
    safe = torch.where(empty, torch.ones_like(denom), denom)
    return torch.where(empty, torch.zeros_like(numer), numer / safe)


def log_sum_exp(scores: torch.Tensor, sinks) -> torch.Tensor:
    """``[heads, q_len]`` natural-log LSE of each row's logits and the sink; -inf when both are empty."""
    if sinks is not None:
        sink_column = sinks[:, None, None].expand(-1, scores.shape[1], 1)
        scores = torch.cat([scores, sink_column], dim=-1)
    return torch.logsumexp(scores, dim=-1)


def write_lse(softmax_lse, rows: slice, lse: torch.Tensor) -> None:
    """Store ``[heads, q_len]`` into ``softmax_lse[rows]`` when the caller asked for it."""
    if softmax_lse is not None:
        softmax_lse[rows] = lse.transpose(0, 1).to(softmax_lse.dtype)


def write_output(out: torch.Tensor, rows: slice, result: torch.Tensor, output_scale) -> None:
    """Store ``[q_len, heads, head_size]`` rows into ``out``, quantizing when ``out`` is fp8."""
    if is_fp8(out.dtype):
        scale = 1.0 if output_scale is None else output_scale.to(result.dtype).reshape(())
        limit = torch.finfo(out.dtype).max
        result = (result / scale).clamp(-limit, limit)
    out[rows] = result.to(out.dtype)


def prepare_call(
    q, k, v, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, softmax_scale, causal,
    window_size, block_table, softcap, q_descale, k_descale, v_descale, alibi_slopes, sinks, output_scale,
    precision, kv_quant_mode, k_scale_cache, v_scale_cache, chunk_lookback, mm_prefix_range,
    mm_prefix_clamp_sliding_window, qq_bias=None, rswa_prefix_lens=None, rswa_window=None, use_alibi_sqrt=False,
    softmax_lse=None,
) -> Call:
    """Check every argument (raising before anything is written) and normalize the options."""
    mode = check_call(q, k, v, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, softmax_scale, causal,
                      window_size, block_table, softcap, q_descale, k_descale, v_descale, alibi_slopes, sinks,
                      output_scale, kv_quant_mode=kv_quant_mode, k_scale_cache=k_scale_cache,
                      v_scale_cache=v_scale_cache, chunk_lookback=chunk_lookback, mm_prefix_range=mm_prefix_range,
                      mm_prefix_clamp_sliding_window=mm_prefix_clamp_sliding_window, qq_bias=qq_bias,
                      rswa_prefix_lens=rswa_prefix_lens, rswa_window=rswa_window, use_alibi_sqrt=use_alibi_sqrt,
                      softmax_lse=softmax_lse)
    dtype = compute_dtype_for(q.dtype, precision, out.dtype)
    return Call(
        q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, seqused_k=seqused_k, block_table=block_table,
        softmax_scale=float(softmax_scale), causal=causal,
        window=(-1, -1) if window_size is None else tuple(window_size),
        softcap=0.0 if softcap is None else float(softcap),
        q_descale=q_descale, k_descale=k_descale, v_descale=v_descale, alibi_slopes=alibi_slopes, sinks=sinks,
        kv_quant_mode=mode, k_scale_cache=k_scale_cache, v_scale_cache=v_scale_cache,
        chunk_lookback=chunk_lookback, mm_prefix_range=mm_prefix_range,
        mm_prefix_clamp_sliding_window=mm_prefix_clamp_sliding_window,
        qq_bias=qq_bias, rswa_prefix_lens=rswa_prefix_lens, rswa_window=rswa_window, use_alibi_sqrt=use_alibi_sqrt,
        dtype=dtype, prob_dtype=probability_rounding(q.dtype, v.dtype, precision),
    )


def iter_sequences(call: Call):
    """Yield ``(output rows, SequenceScores, seq_len)`` for every sequence with query tokens."""
    for seq in range(call.cu_seqlens_q.numel() - 1):
        parts = sequence_scores(seq, call)
        if parts is not None:
            rows = slice(int(call.cu_seqlens_q[seq]), int(call.cu_seqlens_q[seq + 1]))
            yield rows, parts, int(call.seqused_k[seq])


def unified_attention(
    q, k, v, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, softmax_scale, causal,
    window_size, block_table, softcap, q_descale, k_descale, v_descale,
    alibi_slopes=None, sinks=None, output_scale=None, *,
    kv_quant_mode=None, k_scale_cache=None, v_scale_cache=None,
    chunk_lookback=-1, mm_prefix_range=None, mm_prefix_clamp_sliding_window=False,
    split_kv=None, num_segments=None, workspace=None, batch_invariant=False, precision="float64",
    qq_bias=None, rswa_prefix_lens=None, rswa_window=None, use_alibi_sqrt=False, softmax_lse=None,
):
    """Paged attention written for obviousness; writes into ``out`` and returns it.

    ``precision="float64"`` computes the golden, ``"native"`` the same-precision baseline for the
    tolerance rule (see ``compute_dtype_for`` and ``probability_rounding`` for what it rounds).
    ``split_kv``, ``num_segments``, ``workspace``, ``batch_invariant``, ``max_seqlen_q`` and
    ``max_seqlen_k`` are launch knobs of the kernels: checked where they have a meaning, else ignored.

    Keyword-only features (the defaults leave every older call unchanged):
      * fp8 queries: q in float8_e4m3fn with a one-element float32 ``q_descale``.
      * ``k_descale``/``v_descale`` (per-tensor fp8 cache): one element, or ``[num_seqs,
        num_kv_heads]`` applied per (sequence, KV head).
      * ``kv_quant_mode``: None (infer: fp8 cache -> "fp8_per_tensor", else "none"), one of
        "none", "fp8_per_tensor", "int8_per_token_head", "fp8_per_token_head",
        "int4_per_token_head", or an IntEnum with those member names and values 0..4 (vLLM's
        KVQuantMode). The per-token-head modes take float32 ``k_scale_cache``/``v_scale_cache``
        ``[num_blocks, block_size, num_kv_heads]``.
      * "int4_per_token_head" (vLLM's INT4 format, ``reference.int4``): k/v are uint8 ``[num_blocks,
        block_size, num_kv_heads, head_size // 2]`` (head size even), two 4-bit values per byte, of
        rows rotated by ``R = H D`` (Hadamard blocks of the largest power of two dividing head_size,
        fixed signs); each scale-cache entry carries its row's zero point in its 4 low mantissa
        bits. The mode promises attention over the rows ``R^-1 ((u - zero) * scale)``, in the
        original space of q and out: every other feature means what it means for any cache. vLLM
        refuses non-causal and per-sequence causal calls with INT4 and ignores R-SWA and chunking;
        here they are supported (the rotation is per row, independent of the mask).
      * ``chunk_lookback`` (-1 off): chunked attention, see ``masks.visibility``.
      * ``mm_prefix_range`` int32 ``[num_seqs, max_ranges, 2]`` and
        ``mm_prefix_clamp_sliding_window``: bidirectional ranges, see ``masks.visibility``.
      * ``causal`` may be an int32 ``[num_seqs]`` tensor (nonzero = causal). A causal sequence
        sees keys ``j <= p`` within ``p - j <= left``, a bidirectional one every key within
        ``|p - j| <= left`` (left = window_size[0], -1 unlimited). Needs window_size[1] == -1
        and no chunking.
      * ``qq_bias`` float ``[Q, K]``, Q >= max_seqlen_q, any strides: the bias between a
        sequence's new tokens (vLLM's tree attention), shared by every sequence and head. Row i
        is the i-th new token, column j the key at ``seq_len - q_len + j``; older keys and
        columns past K get none. Added after softcap and ALiBi, to visible keys only; a -inf
        entry hides the key.
      * ``rswa_prefix_lens`` int32 ``[num_seqs]`` with ``rswa_window`` (int >= 1), both or
        neither: R-SWA, see ``masks.visibility``. Replaces the sliding window (window_size[0]
        must be -1, no chunking); prefix ranges still widen it, their clamp has no window to use.
      * ``use_alibi_sqrt`` (needs alibi_slopes): the bias is ``-slope * sqrt(p - j)`` for
        ``j <= p`` and 0 for later keys, instead of ``slope * (j - p)``.
      * ``softmax_lse`` float32 (float64 accepted for the golden) ``[num_tokens, num_q_heads]``,
        any strides, written: each query row's natural-log log-sum-exp of its visible logits
        (after softcap, ALiBi, qq_bias) and the sink, -inf when it has neither; padding rows
        past ``cu_seqlens_q[-1]`` are left alone. Outputs over disjoint key shards merge as
        ``sum_r exp(lse_r - lse) * out_r`` with ``lse = logsumexp_r(lse_r)`` (context parallelism).
        The linear ALiBi term is ``slope * (j - p)``, so the LSE includes it with that origin.
    """
    check_num_segments(num_segments, allow_none=True)
    call = prepare_call(q, k, v, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, softmax_scale, causal,
                        window_size, block_table, softcap, q_descale, k_descale, v_descale, alibi_slopes, sinks,
                        output_scale, precision, kv_quant_mode, k_scale_cache, v_scale_cache, chunk_lookback,
                        mm_prefix_range, mm_prefix_clamp_sliding_window, qq_bias, rswa_prefix_lens, rswa_window,
                        use_alibi_sqrt, softmax_lse)
    for rows, parts, _ in iter_sequences(call):
        result = softmax_with_sinks(parts.scores, parts.values, parts.sinks, parts.prob_dtype)  # [heads, q_len, dim]
        write_output(out, rows, result.transpose(0, 1), output_scale)
        write_lse(softmax_lse, rows, log_sum_exp(parts.scores, parts.sinks))
    return out
