"""The reference's own argument checks: it refuses a call rather than guess what it means.

Every check runs before anything is written to ``out``. A failure raises ``TypeError`` when an
argument has the wrong kind (not a tensor, wrong dtype, not an int) and ``ValueError`` when it
has the right kind but a wrong value (rank, shape, device, contents); the message always starts
with ``"ARGNAME: "``, the argument's name in the calling convention.

The contract follows the kernels' where the meaning is the same. It is deliberately looser where
a kernel limit is an implementation matter rather than semantics: any head size >= 1, any strides,
float64 queries, a float64 ``out`` (the golden is written into one) and the empty batch
(``cu_seqlens_q == [0]``). Unlike the kernels it always reads the metadata, because a wrong block
id or length would otherwise be silently "handled" (e.g. block id -1 indexes the last block).
"""

from __future__ import annotations

import enum
import itertools
import math

import torch

FP8_DTYPES = tuple(
    getattr(torch, name) for name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2") if hasattr(torch, name)
)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FP8_QUERY_DTYPE = torch.float8_e4m3fn
# The KV-cache quantization modes, in the order of vLLM's KVQuantMode values (0 .. 4).
KV_QUANT_MODES = ("none", "fp8_per_tensor", "int8_per_token_head", "fp8_per_token_head", "int4_per_token_head")
PER_TOKEN_HEAD_MODES = ("int8_per_token_head", "fp8_per_token_head", "int4_per_token_head")
INT4_MODE = "int4_per_token_head"  # packed: two 4-bit values per uint8, rows rotated (see reference.int4)


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in FP8_DTYPES


def fail(arg: str, message: str, exc=ValueError):
    raise exc(f"{arg}: {message}")


def is_int(value) -> bool:
    """A Python int that is not a bool (True would otherwise pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def expect_tensor(arg: str, value, ndim: int | None = None) -> None:
    if not isinstance(value, torch.Tensor):
        fail(arg, f"expected a torch.Tensor, got {type(value).__name__}", TypeError)
    if ndim is not None and value.dim() != ndim:
        fail(arg, f"expected {ndim} dimensions, got shape {tuple(value.shape)}")


def expect_dtype(arg: str, value: torch.Tensor, allowed) -> None:
    if value.dtype not in allowed:
        fail(arg, f"expected dtype in {tuple(allowed)}, got {value.dtype}", TypeError)


def expect_device(arg: str, value: torch.Tensor, device) -> None:
    if value.device != device:
        fail(arg, f"expected device {device} (q's), got {value.device}")


def expect_int32(arg: str, value, ndim: int, device) -> None:
    expect_tensor(arg, value, ndim)
    expect_dtype(arg, value, (torch.int32,))
    expect_device(arg, value, device)


def expect_scalar_scale(arg: str, value, device) -> None:
    """A one-element float32 tensor holding a finite, positive scale."""
    expect_tensor(arg, value)
    expect_dtype(arg, value, (torch.float32,))
    expect_device(arg, value, device)
    if value.numel() != 1:
        fail(arg, f"expected a one-element tensor (per-tensor scale), got shape {tuple(value.shape)}")
    scale = float(value.reshape(()))
    if not (math.isfinite(scale) and scale > 0):
        fail(arg, f"expected a finite positive scale, got {scale}")


def check_tensors(q, k, v, out, alibi_slopes, sinks, kv_quant_mode=None) -> None:
    """Ranks, dtypes, shapes and devices of the data tensors (k's width depends on the mode: an INT4
    cache holds ``head_size // 2`` bytes per row)."""
    expect_tensor("q", q, 3)
    expect_tensor("k", k, 4)
    expect_tensor("v", v, 4)
    expect_tensor("out", out, 3)
    expect_dtype("q", q, FLOAT_DTYPES + (FP8_QUERY_DTYPE,))
    packed = kv_quant_mode_name(kv_quant_mode, k.dtype) == INT4_MODE
    device = q.device
    for name, t in (("k", k), ("v", v), ("out", out)):
        expect_device(name, t, device)
    # k's dtype is checked against the quantization mode (check_quantization).
    if v.dtype != k.dtype:
        fail("v", f"expected the same dtype as k ({k.dtype}), got {v.dtype}", TypeError)
    if is_fp8(q.dtype):  # fp8 queries come from a model whose activations are 16/32-bit floats
        out_dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    else:
        out_dtypes = (q.dtype, torch.float64)
    if out.dtype not in out_dtypes and not is_fp8(out.dtype):
        fail("out", f"expected dtype in {out_dtypes} or fp8, got {out.dtype}", TypeError)
    if v.shape != k.shape:
        fail("v", f"expected the same shape as k {tuple(k.shape)}, got {tuple(v.shape)}")
    if out.shape != q.shape:
        fail("out", f"expected q's shape {tuple(q.shape)}, got {tuple(out.shape)}")
    _, num_q_heads, head_size = q.shape
    num_blocks, block_size, num_kv_heads, kv_head_size = k.shape
    if head_size < 1 or num_q_heads < 1:
        fail("q", f"expected at least one head of at least one element, got shape {tuple(q.shape)}")
    if packed:
        if head_size % 2:
            fail("q", f"kv_quant_mode {INT4_MODE!r} packs two values per byte: head size must be even, "
                      f"got {head_size}")
        if kv_head_size != head_size // 2:
            fail("k", f"expected {head_size // 2} bytes per row (head size {head_size}, two 4-bit values per "
                      f"byte) for kv_quant_mode {INT4_MODE!r}, got {kv_head_size}")
    elif kv_head_size != head_size:
        fail("k", f"head size {kv_head_size} differs from q's {head_size}")
    if num_kv_heads < 1 or num_q_heads % num_kv_heads:
        fail("k", f"num_q_heads ({num_q_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    if num_blocks < 1 or block_size < 1:
        fail("k", f"cache must have at least one block of at least one slot, got shape {tuple(k.shape)}")
    for name, t in (("alibi_slopes", alibi_slopes), ("sinks", sinks)):
        if t is None:
            continue
        expect_tensor(name, t, 1)
        if not t.dtype.is_floating_point:
            fail(name, f"expected a floating dtype, got {t.dtype}", TypeError)
        expect_device(name, t, device)
        if t.shape[0] != num_q_heads:
            fail(name, f"expected {num_q_heads} entries (one per query head), got {t.shape[0]}")


def check_scalars(max_seqlen_q, max_seqlen_k, softmax_scale, causal, window_size, softcap) -> None:
    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if not is_int(value):
            fail(name, f"expected an int, got {type(value).__name__}", TypeError)
        if value < 0:
            fail(name, f"expected a non-negative int, got {value}")
    if not is_real(softmax_scale):
        fail("softmax_scale", f"expected a float, got {type(softmax_scale).__name__}", TypeError)
    if not math.isfinite(softmax_scale):
        fail("softmax_scale", f"expected a finite float, got {softmax_scale}")
    # A tensor (per-sequence flags) is checked against the metadata in check_causal.
    if not isinstance(causal, (bool, torch.Tensor)):
        fail("causal", f"expected a bool or an int32 tensor [num_seqs], got {type(causal).__name__}", TypeError)
    if window_size is not None:
        if not isinstance(window_size, (tuple, list)):
            fail("window_size", f"expected None or a (left, right) pair, got {type(window_size).__name__}", TypeError)
        if len(window_size) != 2:
            fail("window_size", f"expected 2 entries (left, right), got {len(window_size)}")
        if not all(is_int(w) for w in window_size):
            fail("window_size", f"expected ints, got {window_size!r}", TypeError)
        if any(w < -1 for w in window_size):
            fail("window_size", f"entries must be >= -1 (-1 = unlimited), got {window_size!r}")
    if softcap is not None:
        if not is_real(softcap):
            fail("softcap", f"expected a float, got {type(softcap).__name__}", TypeError)
        if not math.isfinite(softcap) or softcap < 0:
            fail("softcap", f"expected a finite float >= 0 (0 disables it), got {softcap}")


def kv_quant_mode_name(mode, k_dtype: torch.dtype) -> str:
    """The mode as one of ``KV_QUANT_MODES``.

    None infers today's behaviour from the cache: an fp8 cache is per-tensor fp8, anything else
    is unquantized. An IntEnum is accepted by member name and value (vLLM's KVQuantMode) without
    importing its module; a plain int is refused, since a bare number says nothing about intent.
    """
    if mode is None:
        return "fp8_per_tensor" if is_fp8(k_dtype) else "none"
    if isinstance(mode, enum.IntEnum):
        name = mode.name.lower()
        if name not in KV_QUANT_MODES or KV_QUANT_MODES.index(name) != int(mode):
            fail("kv_quant_mode", f"{mode!r} is not one of NONE=0, FP8_PER_TENSOR=1, INT8_PER_TOKEN_HEAD=2, "
                                  "FP8_PER_TOKEN_HEAD=3, INT4_PER_TOKEN_HEAD=4")
        return name
    if not isinstance(mode, str):
        fail("kv_quant_mode", f"expected None, a str or a KVQuantMode IntEnum, got {type(mode).__name__}", TypeError)
    if mode not in KV_QUANT_MODES:
        fail("kv_quant_mode", f"expected one of {KV_QUANT_MODES}, got {mode!r}")
    return mode


def expect_descale(arg: str, value, num_seqs: int, num_kv_heads: int, device) -> None:
    """A per-tensor fp8 descale: one element, or one per (sequence, KV head)."""
    expect_tensor(arg, value)
    expect_dtype(arg, value, (torch.float32,))
    expect_device(arg, value, device)
    if value.numel() != 1 and tuple(value.shape) != (num_seqs, num_kv_heads):
        fail(arg, f"expected one element or shape {(num_seqs, num_kv_heads)} (num_seqs, num_kv_heads), "
                  f"got {tuple(value.shape)}")
    if not (torch.isfinite(value).all() and (value > 0).all()):
        fail(arg, "expected finite positive scales")


def check_quantization(q, k, out, cu_seqlens_q, q_descale, k_descale, v_descale, output_scale,
                       kv_quant_mode, k_scale_cache, v_scale_cache) -> str:
    """fp8 queries, the KV-cache quantization mode and its scales, fp8 output; returns the mode name."""
    device = q.device
    num_seqs = cu_seqlens_q.shape[0] - 1
    num_blocks, block_size, num_kv_heads = k.shape[:3]
    if is_fp8(q.dtype):
        if q_descale is None:
            fail("q_descale", "required for fp8 queries (pass a one-element float32 tensor)")
        expect_scalar_scale("q_descale", q_descale, device)
    elif q_descale is not None:
        fail("q_descale", f"only used with fp8 queries (q is {q.dtype}); pass None")

    mode = kv_quant_mode_name(kv_quant_mode, k.dtype)
    if mode == "none":
        if is_fp8(q.dtype):
            fail("kv_quant_mode", "fp8 queries need a quantized KV cache (fp8 or int8), got mode 'none'")
        if k.dtype != q.dtype:
            fail("k", f"expected dtype {q.dtype} (q's) for an unquantized cache, got {k.dtype}", TypeError)
    elif mode in ("fp8_per_tensor", "fp8_per_token_head"):
        if not is_fp8(k.dtype):
            fail("k", f"expected an fp8 cache for kv_quant_mode {mode!r}, got {k.dtype}", TypeError)
    elif mode == INT4_MODE:
        if k.dtype != torch.uint8:
            fail("k", f"expected a torch.uint8 cache (two 4-bit values per byte) for kv_quant_mode {mode!r}, "
                      f"got {k.dtype}", TypeError)
    elif k.dtype != torch.int8:
        fail("k", f"expected a torch.int8 cache for kv_quant_mode {mode!r}, got {k.dtype}", TypeError)

    for name, t in (("k_descale", k_descale), ("v_descale", v_descale)):
        if mode != "fp8_per_tensor":
            if t is not None:
                fail(name, f"only used with a per-tensor fp8 cache (mode is {mode!r}); pass None")
            continue
        if t is None:
            fail(name, "required for an fp8 cache (pass a one-element float32 tensor)")
        expect_descale(name, t, num_seqs, num_kv_heads, device)
    for name, t in (("k_scale_cache", k_scale_cache), ("v_scale_cache", v_scale_cache)):
        if mode not in PER_TOKEN_HEAD_MODES:
            if t is not None:
                fail(name, f"only used with a per-token-head kv_quant_mode (mode is {mode!r}); pass None")
            continue
        if t is None:
            fail(name, f"required for kv_quant_mode {mode!r}")
        expect_tensor(name, t, 3)
        expect_dtype(name, t, (torch.float32,))
        expect_device(name, t, device)
        if tuple(t.shape) != (num_blocks, block_size, num_kv_heads):
            fail(name, f"expected shape {(num_blocks, block_size, num_kv_heads)} (one scale per cached row), "
                       f"got {tuple(t.shape)}")
        # Entries are not checked: slots no query sees may hold anything, NaN included (INT4: the zero
        # point in the low mantissa bits too).

    if is_fp8(out.dtype) and output_scale is None:
        fail("output_scale", "required when out is fp8")
    if output_scale is not None:  # ignored unless out is fp8 (a float64 golden stays unscaled)
        expect_scalar_scale("output_scale", output_scale, device)
    return mode


def check_causal(causal, window_size, cu_seqlens_q, device, chunk_lookback) -> None:
    """Per-sequence causal flags: an int32 ``[num_seqs]`` tensor, with a left-only window and no chunking."""
    if not isinstance(causal, torch.Tensor):
        return
    num_seqs = cu_seqlens_q.shape[0] - 1
    expect_int32("causal", causal, 1, device)
    if causal.shape[0] != num_seqs:
        fail("causal", f"expected {num_seqs} entries (one flag per sequence), got {causal.shape[0]}")
    if window_size is not None and window_size[1] != -1:
        fail("window_size", f"with per-sequence causal the window is (left, -1): causal sequences look back "
                            f"only, bidirectional ones by left both ways; got {window_size!r}")
    if is_int(chunk_lookback) and chunk_lookback >= 0:
        fail("causal", "chunked attention is causal; per-sequence causal flags cannot be combined with it")


def check_masking(causal, window_size, cu_seqlens_q, device, chunk_lookback, mm_prefix_range,
                  mm_prefix_clamp_sliding_window) -> None:
    """Chunked attention and bidirectional prefix ranges."""
    check_causal(causal, window_size, cu_seqlens_q, device, chunk_lookback)
    if not is_int(chunk_lookback):
        fail("chunk_lookback", f"expected an int, got {type(chunk_lookback).__name__}", TypeError)
    if chunk_lookback < -1:
        fail("chunk_lookback", f"expected -1 (off) or a lookback >= 0, got {chunk_lookback}")
    if chunk_lookback >= 0:
        left = -1 if window_size is None else window_size[0]
        if not causal:
            fail("chunk_lookback", "chunked attention is causal; got causal=False")
        if left < 0:
            fail("chunk_lookback", f"needs a left window (window_size[0] >= 0) to size the chunks, got {window_size!r}")
        if (left + 1) // (chunk_lookback + 1) == 0:
            fail("chunk_lookback", f"chunk size (window_size[0] + 1) // (chunk_lookback + 1) is 0 for "
                                   f"window {left} and lookback {chunk_lookback}")
    if not isinstance(mm_prefix_clamp_sliding_window, bool):
        fail("mm_prefix_clamp_sliding_window", f"expected a bool, got {type(mm_prefix_clamp_sliding_window).__name__}",
             TypeError)
    if mm_prefix_range is not None:
        num_seqs = cu_seqlens_q.shape[0] - 1
        expect_int32("mm_prefix_range", mm_prefix_range, 3, device)
        if mm_prefix_range.shape[0] != num_seqs or mm_prefix_range.shape[2] != 2:
            fail("mm_prefix_range", f"expected shape ({num_seqs}, max_ranges, 2), got {tuple(mm_prefix_range.shape)}")
        for seq, ranges in enumerate(mm_prefix_range.tolist()):
            for start, end in ranges:
                if start < end and start < 0:
                    fail("mm_prefix_range", f"sequence {seq} has a range [{start}, {end}] starting before 0")


def check_qq_bias(qq_bias, max_seqlen_q: int, device) -> None:
    """One ``[Q, K]`` bias between a sequence's new tokens, shared by every sequence and head."""
    if qq_bias is None:
        return
    expect_tensor("qq_bias", qq_bias, 2)
    expect_dtype("qq_bias", qq_bias, (torch.float16, torch.bfloat16, torch.float32))
    expect_device("qq_bias", qq_bias, device)
    if qq_bias.shape[0] < max_seqlen_q:
        fail("qq_bias", f"expected at least max_seqlen_q = {max_seqlen_q} rows (one per new token), "
                        f"got shape {tuple(qq_bias.shape)}")


def check_rswa(rswa_prefix_lens, rswa_window, window_size, chunk_lookback, cu_seqlens_q, device) -> None:
    """R-SWA: per-sequence prefix lengths and one window, given together; it replaces the sliding window."""
    if rswa_prefix_lens is None and rswa_window is None:
        return
    if rswa_prefix_lens is None:
        fail("rswa_prefix_lens", "required with rswa_window (pass an int32 tensor [num_seqs])")
    if rswa_window is None:
        fail("rswa_window", "required with rswa_prefix_lens (pass an int >= 1)")
    num_seqs = cu_seqlens_q.shape[0] - 1
    expect_int32("rswa_prefix_lens", rswa_prefix_lens, 1, device)
    if rswa_prefix_lens.shape[0] != num_seqs:
        fail("rswa_prefix_lens", f"expected {num_seqs} entries (one per sequence), got {rswa_prefix_lens.shape[0]}")
    # The lengths themselves are metadata, not checked: negative acts as 0, past seq_len as seq_len.
    if not is_int(rswa_window):
        fail("rswa_window", f"expected an int, got {type(rswa_window).__name__}", TypeError)
    if rswa_window < 1:
        fail("rswa_window", f"expected a window >= 1, got {rswa_window}")
    if chunk_lookback >= 0:  # before the window check: chunking always brings a left window
        fail("rswa_window", f"R-SWA cannot be combined with chunked attention (chunk_lookback {chunk_lookback})")
    if window_size is not None and window_size[0] >= 0:
        fail("rswa_window", f"R-SWA replaces the sliding window; pass window_size[0] = -1, got {window_size!r}")


def check_alibi_sqrt(use_alibi_sqrt, alibi_slopes) -> None:
    if not isinstance(use_alibi_sqrt, bool):
        fail("use_alibi_sqrt", f"expected a bool, got {type(use_alibi_sqrt).__name__}", TypeError)
    if use_alibi_sqrt and alibi_slopes is None:
        fail("use_alibi_sqrt", "needs alibi_slopes (it changes the ALiBi bias's shape)")


def check_softmax_lse(softmax_lse, q) -> None:
    """The optional LSE output: float32 (or float64 for the golden) ``[num_tokens, num_q_heads]``."""
    if softmax_lse is None:
        return
    expect_tensor("softmax_lse", softmax_lse, 2)
    expect_dtype("softmax_lse", softmax_lse, (torch.float32, torch.float64))
    expect_device("softmax_lse", softmax_lse, q.device)
    if softmax_lse.shape != q.shape[:2]:
        fail("softmax_lse", f"expected shape {tuple(q.shape[:2])} (num_tokens, num_q_heads), "
                            f"got {tuple(softmax_lse.shape)}")


def check_num_segments(num_segments, allow_none: bool) -> None:
    """The kernels' split-KV segment count (a launch knob: the reference only checks its form)."""
    if num_segments is None and allow_none:
        return
    if not is_int(num_segments):
        fail("num_segments", f"expected {'None or ' if allow_none else ''}an int, got {type(num_segments).__name__}",
             TypeError)
    if num_segments < 1:
        fail("num_segments", f"expected a positive int, got {num_segments}")


def check_metadata(q, k, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, block_table) -> None:
    """Types and shapes of the metadata tensors, then every value a sequence depends on."""
    device = q.device
    expect_int32("cu_seqlens_q", cu_seqlens_q, 1, device)
    if cu_seqlens_q.shape[0] < 1:
        fail("cu_seqlens_q", "expected num_seqs + 1 >= 1 entries, got none")
    num_seqs = cu_seqlens_q.shape[0] - 1
    expect_int32("seqused_k", seqused_k, 1, device)
    expect_int32("block_table", block_table, 2, device)
    # Three tensors each say how many sequences there are; blame the one the other two outvote.
    if seqused_k.shape[0] == block_table.shape[0] != num_seqs:
        fail("cu_seqlens_q", f"{num_seqs + 1} entries describe {num_seqs} sequences, but seqused_k and "
                             f"block_table describe {seqused_k.shape[0]}")
    if seqused_k.shape[0] != num_seqs:
        fail("seqused_k", f"expected {num_seqs} entries (one per sequence), got {seqused_k.shape[0]}")
    if block_table.shape[0] != num_seqs:
        fail("block_table", f"expected {num_seqs} rows (one per sequence), got {block_table.shape[0]}")

    cu = cu_seqlens_q.tolist()
    num_tokens, (num_blocks, block_size) = q.shape[0], k.shape[:2]
    if cu[0] != 0:
        fail("cu_seqlens_q", f"must start at 0, got {cu[0]}")
    q_lens = [b - a for a, b in itertools.pairwise(cu)]
    if any(n < 0 for n in q_lens):
        fail("cu_seqlens_q", f"must be non-decreasing, got {cu}")
    if cu[-1] > num_tokens:
        fail("cu_seqlens_q", f"last entry {cu[-1]} exceeds q's {num_tokens} tokens")
    if q_lens and max(q_lens) > max_seqlen_q:
        fail("max_seqlen_q", f"{max_seqlen_q} is below the longest query length {max(q_lens)}")
    capacity = block_table.shape[1] * block_size
    for seq, (q_len, kv_len) in enumerate(zip(q_lens, seqused_k.tolist())):
        if kv_len < 0:
            fail("seqused_k", f"sequence {seq} has a negative key count {kv_len}")
        if kv_len < q_len:
            fail("seqused_k", f"sequence {seq} has {q_len} query tokens but only {kv_len} keys")
        if kv_len > capacity:
            fail("seqused_k", f"sequence {seq} has {kv_len} keys but its block-table row holds {capacity}")
        if kv_len > max_seqlen_k:
            fail("max_seqlen_k", f"{max_seqlen_k} is below sequence {seq}'s {kv_len} keys")
        # Only the blocks holding positions 0 .. kv_len - 1 are read; later columns may hold anything.
        used = block_table[seq, : -(-kv_len // block_size)].tolist()
        bad = [b for b in used if not 0 <= b < num_blocks]
        if bad:
            fail("block_table", f"sequence {seq} uses block id {bad[0]}, outside [0, {num_blocks})")


def check_call(q, k, v, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, softmax_scale, causal,
               window_size, block_table, softcap, q_descale, k_descale, v_descale, alibi_slopes, sinks,
               output_scale, *, kv_quant_mode=None, k_scale_cache=None, v_scale_cache=None, chunk_lookback=-1,
               mm_prefix_range=None, mm_prefix_clamp_sliding_window=False, qq_bias=None, rswa_prefix_lens=None,
               rswa_window=None, use_alibi_sqrt=False, softmax_lse=None) -> str:
    """Every check; raises before anything is written. Returns the KV quantization mode's name."""
    check_tensors(q, k, v, out, alibi_slopes, sinks, kv_quant_mode)
    check_scalars(max_seqlen_q, max_seqlen_k, softmax_scale, causal, window_size, softcap)
    check_metadata(q, k, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, block_table)
    mode = check_quantization(q, k, out, cu_seqlens_q, q_descale, k_descale, v_descale, output_scale,
                              kv_quant_mode, k_scale_cache, v_scale_cache)
    check_masking(causal, window_size, cu_seqlens_q, q.device, chunk_lookback, mm_prefix_range,
                  mm_prefix_clamp_sliding_window)
    check_qq_bias(qq_bias, max_seqlen_q, q.device)
    check_rswa(rswa_prefix_lens, rswa_window, window_size, chunk_lookback, cu_seqlens_q, q.device)
    check_alibi_sqrt(use_alibi_sqrt, alibi_slopes)
    check_softmax_lse(softmax_lse, q)
    return mode
