"""Argument checks, and the description of a call they establish.

``check_arguments`` runs on every call: it looks only at shapes, dtypes, strides and devices,
never at tensor contents, so it costs no device sync and is safe inside CUDA-graph capture. It
returns the call's ``CallSpec`` (``describe_call`` builds one for ``make_plan``).
``validate_metadata`` reads the metadata (it syncs) and is meant for tests, debugging and
users who want to check a batch before launching it.
"""

from __future__ import annotations

import enum
import math

import torch

from .plan import MAX_SEGMENTS
from .spec import INT32_MAX, LOG2E, UNLIMITED, CallSpec, KVQuant

QUERY_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
QQ_BIAS_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8_CACHE_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn",) if hasattr(torch, n))
MIN_HEAD_SIZE, MAX_HEAD_SIZE = 16, 512
# kv_quant_mode's string forms: KVQuant's member names.
KV_QUANT_MODES = tuple(mode.label for mode in KVQuant)
FLOAT32_MIN_NORMAL = float(torch.finfo(torch.float32).tiny)
# softmax_scale and softcap reach the kernels as float32 in log2 units: magnitudes outside this
# range would arrive as inf, or a softcap as 0 (then 0 / 0 = NaN).
LOG2_UNITS_MAX = float(torch.finfo(torch.float32).max) / LOG2E
LOG2_UNITS_MIN_NORMAL = FLOAT32_MIN_NORMAL / LOG2E


def _fail(arg: str, message: str, exc=ValueError):
    raise exc(f"{arg}: {message}")


def _expect_tensor(arg: str, value, ndim: int | None = None):
    if not isinstance(value, torch.Tensor):
        _fail(arg, f"expected a torch.Tensor, got {type(value).__name__}", TypeError)
    if ndim is not None and value.dim() != ndim:
        _fail(arg, f"expected {ndim} dimensions, got shape {tuple(value.shape)}")


def _expect_int32_vector(arg: str, value, length: int | None):
    _expect_tensor(arg, value, 1)
    if value.dtype != torch.int32:
        _fail(arg, f"expected dtype torch.int32, got {value.dtype}", TypeError)
    if length is not None and value.shape[0] != length:
        _fail(arg, f"expected {length} entries, got {value.shape[0]}")


def _expect_scale(arg: str, value, device):
    _expect_tensor(arg, value)
    if value.numel() != 1:
        _fail(arg, f"expected a one-element tensor (per-tensor scale), got shape {tuple(value.shape)}")
    if value.dtype != torch.float32:
        _fail(arg, f"expected dtype torch.float32, got {value.dtype}", TypeError)
    if value.device != device:
        _fail(arg, f"expected device {device}, got {value.device}")


def _expect_descale(arg: str, value, num_seqs: int, num_kv_heads: int, device):
    """A per-tensor fp8 descale: one element, or one per (sequence, KV head). Values are not read."""
    _expect_tensor(arg, value)
    if value.dtype != torch.float32:
        _fail(arg, f"expected dtype torch.float32, got {value.dtype}", TypeError)
    if value.numel() != 1 and tuple(value.shape) != (num_seqs, num_kv_heads):
        _fail(arg, f"expected one element or shape {(num_seqs, num_kv_heads)} (num_seqs, num_kv_heads), "
                   f"got {tuple(value.shape)}")
    if value.device != device:
        _fail(arg, f"expected device {device}, got {value.device}")


def _expect_bool(arg: str, value, allow_none: bool = False):
    if (value is None and allow_none) or isinstance(value, bool):
        return
    _fail(arg, f"expected {'None or ' if allow_none else ''}a bool, got {value!r}", TypeError)


def _expect_float(arg: str, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(arg, f"expected a finite float, got {value!r}", TypeError)


def _check_counts(cu_seqlens_q, seqused_k, block_table) -> int:
    """num_seqs, from three tensors that each imply it; the odd one out is the one blamed."""
    from_cu, from_seqused, from_table = cu_seqlens_q.shape[0] - 1, seqused_k.shape[0], block_table.shape[0]
    if from_cu < 0:
        _fail("cu_seqlens_q", "expected at least 1 entry (num_seqs + 1; [0] is the empty batch)")
    if from_cu == from_seqused == from_table:
        return from_cu
    if from_seqused == from_table:
        _fail("cu_seqlens_q", f"{from_cu + 1} entries describe {from_cu} sequences, but seqused_k and "
                              f"block_table describe {from_seqused}")
    if from_cu == from_table:
        _fail("seqused_k", f"expected {from_cu} entries (one per sequence), got {from_seqused}")
    if from_cu == from_seqused:
        _fail("block_table", f"expected {from_cu} rows (one per sequence), got {from_table}")
    _fail("cu_seqlens_q", f"{from_cu + 1} entries ({from_cu} sequences) disagree with seqused_k's "
                          f"{from_seqused} entries and block_table's {from_table} rows")


def _kv_quant(mode, k_dtype) -> KVQuant:
    """``kv_quant_mode`` as a KVQuant: None infers it from the cache (fp8 -> FP8_PER_TENSOR, else
    NONE); a str by its lower-case member name; an IntEnum (vLLM's KVQuantMode) by member name and
    value; a plain int is refused (a bare number says nothing about intent)."""
    if mode is None:
        return KVQuant.FP8_PER_TENSOR if k_dtype in FP8_CACHE_DTYPES else KVQuant.NONE
    if isinstance(mode, enum.IntEnum):
        name = mode.name.lower()
        if name not in KV_QUANT_MODES or KV_QUANT_MODES.index(name) != int(mode):
            _fail("kv_quant_mode", f"{mode!r} is not one of NONE=0, FP8_PER_TENSOR=1, INT8_PER_TOKEN_HEAD=2, "
                                   "FP8_PER_TOKEN_HEAD=3, INT4_PER_TOKEN_HEAD=4")
        return KVQuant[name.upper()]
    if not isinstance(mode, str):
        _fail("kv_quant_mode", f"expected None, a str or a KVQuantMode IntEnum, got {type(mode).__name__}", TypeError)
    if mode not in KV_QUANT_MODES:
        _fail("kv_quant_mode", f"expected one of {KV_QUANT_MODES}, got {mode!r}")
    return KVQuant[mode.upper()]


def _check_quant_cache(q, k, quant: KVQuant, k_scale_cache, v_scale_cache) -> None:
    """The cache dtype the mode needs, and its per-token-head scale caches (shapes only)."""
    mode = quant.label
    if quant is KVQuant.NONE:
        if k.dtype != q.dtype:
            _fail("k", f"expected dtype {q.dtype} (q's) for an unquantized cache, got {k.dtype}", TypeError)
    elif quant.fp8_cache:
        if k.dtype not in FP8_CACHE_DTYPES:
            _fail("k", f"expected an fp8 e4m3 cache for kv_quant_mode {mode!r}, got {k.dtype}", TypeError)
    elif quant.packed_int4:
        if k.dtype != torch.uint8:
            _fail("k", f"expected a torch.uint8 cache (two 4-bit values per byte) for kv_quant_mode {mode!r}, "
                       f"got {k.dtype}", TypeError)
    elif k.dtype != torch.int8:
        _fail("k", f"expected a torch.int8 cache for kv_quant_mode {mode!r}, got {k.dtype}", TypeError)
    for name, t in (("k_scale_cache", k_scale_cache), ("v_scale_cache", v_scale_cache)):
        if not quant.per_token_head:
            if t is not None:
                _fail(name, f"only used with a per-token-head kv_quant_mode (mode is {mode!r}); pass None")
            continue
        if t is None:
            _fail(name, f"required for kv_quant_mode {mode!r}")
        _expect_tensor(name, t, 3)
        if t.dtype != torch.float32:
            _fail(name, f"expected dtype torch.float32, got {t.dtype}", TypeError)
        if tuple(t.shape) != tuple(k.shape[:3]):
            _fail(name, f"expected shape {tuple(k.shape[:3])} (one scale per cached row), got {tuple(t.shape)}")
        if t.device != q.device:
            _fail(name, f"expected device {q.device}, got {t.device}")


def _check_chunk_lookback(chunk_lookback) -> None:
    """The lookback's form (what it asks of the window: ``_mask_geometry``)."""
    if isinstance(chunk_lookback, bool) or not isinstance(chunk_lookback, int):
        _fail("chunk_lookback", f"expected an int (-1 = off), got {type(chunk_lookback).__name__}", TypeError)
    if chunk_lookback < -1:
        _fail("chunk_lookback", f"expected -1 (off) or a lookback >= 0, got {chunk_lookback}")


def _check_causal(causal, window_size, chunk_lookback, num_seqs: int, device) -> bool:
    """``causal``: a bool, or int32 ``[num_seqs]`` per-sequence flags (nonzero: causal) with a window of
    ``(left, -1)`` and no chunking. Returns whether it is per-sequence. Flag values are not read."""
    if isinstance(causal, bool):
        return False
    if not isinstance(causal, torch.Tensor):
        _fail("causal", f"expected a bool or an int32 tensor [num_seqs], got {causal!r}", TypeError)
    _expect_int32_vector("causal", causal, num_seqs)
    if causal.device != device:
        _fail("causal", f"expected device {device} (q's), got {causal.device}")
    if window_size is not None and window_size[1] != -1:
        _fail("window_size", f"with per-sequence causal the window is (left, -1): causal sequences look back "
                             f"only, bidirectional ones by left both ways; got {window_size!r}")
    if chunk_lookback >= 0:
        _fail("causal", "chunked attention is causal; per-sequence causal flags cannot be combined with it")
    return True


def _mask_geometry(window_size, causal, chunk_lookback: int) -> dict:
    """The CallSpec's window_left, window_right, chunked, chunk_size and chunk_lookback: the window
    and chunks as the kernels take them.

    Window bounds are non-negative: causal is right = 0, -1 is UNLIMITED, and bounds past
    UNLIMITED are capped there (they mean the same, and would make the window arithmetic int64).
    Per-sequence flags (a tensor, checked by ``_check_causal``) give the right bound of a
    bidirectional sequence, the left one mirrored; the kernels use 0 for causal sequences.
    Chunked attention (lookback >= 0) needs a causal call and a left window w, and has chunks of
    ``(w + 1) // (lookback + 1)`` keys, capped at INT32_MAX (a chunk that large holds every key),
    with the lookback capped at UNLIMITED; unchunked, the kernels get size 1 and lookback 0, unused.
    """
    left, right = (-1, -1) if window_size is None else (int(window_size[0]), int(window_size[1]))
    window_left = UNLIMITED if left < 0 else min(left, UNLIMITED)
    if isinstance(causal, torch.Tensor):
        window_right = window_left
    else:
        window_right = 0 if causal else (UNLIMITED if right < 0 else min(right, UNLIMITED))
    bounds = dict(window_left=window_left, window_right=window_right)
    if chunk_lookback < 0:
        return dict(bounds, chunked=False, chunk_size=1, chunk_lookback=0)
    if not causal:
        _fail("chunk_lookback", "chunked attention is causal; got causal=False")
    if left < 0:
        _fail("chunk_lookback", f"needs a left window (window_size[0] >= 0) to size the chunks, got {window_size!r}")
    chunk_size = (left + 1) // (chunk_lookback + 1)
    if chunk_size == 0:
        _fail("chunk_lookback", f"chunk size (window_size[0] + 1) // (chunk_lookback + 1) is 0 for "
                                f"window {left} and lookback {chunk_lookback}")
    return dict(bounds, chunked=True, chunk_size=min(chunk_size, INT32_MAX),
                chunk_lookback=min(chunk_lookback, UNLIMITED))


def _check_qq_bias(qq_bias, max_seqlen_q: int, device) -> None:
    """A float ``[Q, K]`` bias between a sequence's new tokens (any strides), Q >= max_seqlen_q."""
    if qq_bias is None:
        return
    _expect_tensor("qq_bias", qq_bias, 2)
    if qq_bias.dtype not in QQ_BIAS_DTYPES:
        _fail("qq_bias", f"expected dtype in {QQ_BIAS_DTYPES}, got {qq_bias.dtype}", TypeError)
    if qq_bias.device != device:
        _fail("qq_bias", f"expected device {device} (q's), got {qq_bias.device}")
    if qq_bias.shape[0] < max_seqlen_q:
        _fail("qq_bias", f"expected at least max_seqlen_q = {max_seqlen_q} rows (one per new token), "
                         f"got shape {tuple(qq_bias.shape)}")


def _check_rswa(rswa_prefix_lens, rswa_window, window_size, chunk_lookback: int, num_seqs: int, device) -> bool:
    """R-SWA's int32 ``[num_seqs]`` prefix lengths (values are metadata, not read) and window (int >= 1),
    both or neither; it replaces the sliding window. Returns whether R-SWA is on."""
    if rswa_prefix_lens is None and rswa_window is None:
        return False
    if rswa_prefix_lens is None:
        _fail("rswa_prefix_lens", "required with rswa_window (pass an int32 tensor [num_seqs])")
    if rswa_window is None:
        _fail("rswa_window", "required with rswa_prefix_lens (pass an int >= 1)")
    _expect_int32_vector("rswa_prefix_lens", rswa_prefix_lens, num_seqs)
    if rswa_prefix_lens.device != device:
        _fail("rswa_prefix_lens", f"expected device {device} (q's), got {rswa_prefix_lens.device}")
    if isinstance(rswa_window, bool) or not isinstance(rswa_window, int):
        _fail("rswa_window", f"expected an int >= 1, got {rswa_window!r}", TypeError)
    if rswa_window < 1:
        _fail("rswa_window", f"expected a window >= 1, got {rswa_window}")
    if chunk_lookback >= 0:
        _fail("rswa_window", f"R-SWA cannot be combined with chunked attention (chunk_lookback {chunk_lookback})")
    if window_size is not None and window_size[0] >= 0:
        _fail("rswa_window", f"R-SWA replaces the sliding window; pass window_size[0] = -1, got {window_size!r}")
    return True


def _check_softmax_lse(softmax_lse, num_tokens: int, num_q_heads: int, device) -> None:
    """The optional float32 ``[num_tokens, num_q_heads]`` log-sum-exp output (any strides)."""
    if softmax_lse is None:
        return
    _expect_tensor("softmax_lse", softmax_lse, 2)
    if softmax_lse.dtype != torch.float32:
        _fail("softmax_lse", f"expected dtype torch.float32, got {softmax_lse.dtype}", TypeError)
    if softmax_lse.device != device:
        _fail("softmax_lse", f"expected device {device} (q's), got {softmax_lse.device}")
    if tuple(softmax_lse.shape) != (num_tokens, num_q_heads):
        _fail("softmax_lse", f"expected shape {(num_tokens, num_q_heads)} (num_tokens, num_q_heads), "
                             f"got {tuple(softmax_lse.shape)}")


def check_arguments(
    q, k, v, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, softmax_scale, causal,
    window_size, block_table, softcap, q_descale, k_descale, v_descale, alibi_slopes, sinks,
    output_scale, num_segments, workspace, *, chunk_lookback=-1, mm_prefix_range=None,
    mm_prefix_clamp_sliding_window=False, split_kv=None, batch_invariant=False,
    check_metadata=False, kv_quant_mode=None, k_scale_cache=None, v_scale_cache=None,
    qq_bias=None, rswa_prefix_lens=None, rswa_window=None, use_alibi_sqrt=False, softmax_lse=None,
) -> CallSpec:
    """Cheap checks; raises ValueError/TypeError naming the argument before anything is written.
    Returns the call's description.

    Shapes, dtypes, strides, devices and host scalars only: never a tensor's contents, so it
    works on ``meta`` tensors and inside CUDA-graph capture.
    """
    _expect_tensor("q", q, 3)
    _expect_tensor("k", k, 4)
    _expect_tensor("v", v, 4)
    _expect_tensor("out", out, 3)
    q_fp8 = q.dtype in FP8_CACHE_DTYPES
    if q.dtype not in QUERY_DTYPES and not q_fp8:
        _fail("q", f"expected dtype in {QUERY_DTYPES} or float8_e4m3fn, got {q.dtype}", TypeError)
    if q_fp8:
        if q_descale is None:
            _fail("q_descale", "required for fp8 queries (pass a one-element float32 tensor)")
        _expect_scale("q_descale", q_descale, q.device)
    elif q_descale is not None:
        _fail("q_descale", f"only used with fp8 queries (q is {q.dtype}); pass None")
    quant = _kv_quant(kv_quant_mode, k.dtype)
    if q_fp8 and quant is KVQuant.NONE:
        _fail("kv_quant_mode", "fp8 queries need a quantized KV cache (fp8 or int8), got mode 'none'")
    if q_fp8 and quant.per_token_head:
        _fail("kv_quant_mode", f"fp8 queries with a per-token-head cache ({quant.label!r}) are not supported "
                               "by these kernels; use a per-tensor fp8 cache", NotImplementedError)
    for name, cache in (("k", k), ("v", v)):
        # (Whether the quantized dtype suits the mode is _check_quant_cache's question.)
        quantized = cache.dtype in FP8_CACHE_DTYPES or (cache.dtype in (torch.int8, torch.uint8) and quant.per_token_head)
        if cache.dtype != q.dtype and not quantized:
            _fail(name, f"expected dtype {q.dtype} (q's) or an fp8 e4m3 cache, got {cache.dtype}", TypeError)
    if v.dtype != k.dtype:
        _fail("v", f"expected the same dtype as k ({k.dtype}), got {v.dtype}", TypeError)
    if v.shape != k.shape:
        _fail("v", f"expected the same shape as k {tuple(k.shape)}, got {tuple(v.shape)}")
    if q_fp8:  # fp8 queries come from a model whose activations are 16/32-bit floats
        if out.dtype not in QUERY_DTYPES and out.dtype not in FP8_CACHE_DTYPES:
            _fail("out", f"expected dtype in {QUERY_DTYPES} or fp8 e4m3 for fp8 queries, got {out.dtype}", TypeError)
    elif out.dtype != q.dtype and out.dtype not in FP8_CACHE_DTYPES:
        _fail("out", f"expected dtype {q.dtype} (q's) or fp8 e4m3, got {out.dtype}", TypeError)
    if out.shape != q.shape:
        _fail("out", f"expected q's shape {tuple(q.shape)}, got {tuple(out.shape)}")

    num_tokens, num_q_heads, head_size = q.shape
    num_blocks, block_size, num_kv_heads, kv_head_size = k.shape
    if not MIN_HEAD_SIZE <= head_size <= MAX_HEAD_SIZE:
        _fail("q", f"head size must be in [{MIN_HEAD_SIZE}, {MAX_HEAD_SIZE}], got {head_size}")
    if quant.packed_int4:
        if head_size % 2:
            _fail("q", f"kv_quant_mode {quant.label!r} packs two values per byte: head size must be even, "
                       f"got {head_size}")
        if kv_head_size != head_size // 2:
            _fail("k", f"expected {head_size // 2} bytes per row (head size {head_size}, two 4-bit values per "
                       f"byte) for kv_quant_mode {quant.label!r}, got {kv_head_size}")
    elif kv_head_size != head_size:
        _fail("k", f"head size {kv_head_size} differs from q's {head_size}")
    if num_kv_heads == 0 or num_q_heads % num_kv_heads:
        _fail("k", f"num_q_heads ({num_q_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    if block_size < 1 or num_blocks < 1:
        _fail("k", f"cache must have at least one block of at least one slot, got shape {tuple(k.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v), ("out", out)):
        if t.stride(-1) != 1:
            _fail(name, f"last dimension must be contiguous (stride 1), got stride {t.stride(-1)}")

    _expect_int32_vector("cu_seqlens_q", cu_seqlens_q, None)
    _expect_int32_vector("seqused_k", seqused_k, None)
    _expect_tensor("block_table", block_table, 2)
    if block_table.dtype != torch.int32:
        _fail("block_table", f"expected dtype torch.int32, got {block_table.dtype}", TypeError)
    _check_counts(cu_seqlens_q, seqused_k, block_table)

    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            _fail(name, f"expected a non-negative int, got {value!r}", TypeError if not isinstance(value, int) else ValueError)
    _expect_float("softmax_scale", softmax_scale)
    if not math.isfinite(softmax_scale):
        _fail("softmax_scale", f"expected a finite float, got {softmax_scale!r}", TypeError)
    if abs(softmax_scale) > LOG2_UNITS_MAX:
        _fail("softmax_scale", f"{softmax_scale!r} overflows float32 in log2 units (|scale| <= {LOG2_UNITS_MAX:.3g})")
    if not isinstance(causal, (bool, torch.Tensor)):
        _fail("causal", f"expected a bool or an int32 tensor [num_seqs], got {causal!r}", TypeError)
    if window_size is not None:
        if not isinstance(window_size, (tuple, list)):
            _fail("window_size", f"expected None or a (left, right) tuple/list of ints >= -1, got {window_size!r}",
                  TypeError)
        if len(window_size) != 2:
            _fail("window_size", f"expected 2 entries (left, right), got {len(window_size)}: {window_size!r}")
        if any(isinstance(w, bool) or not isinstance(w, int) for w in window_size):
            _fail("window_size", f"expected ints (-1 means unlimited), got {window_size!r}", TypeError)
        if any(w < -1 for w in window_size):
            _fail("window_size", f"expected (left, right) ints >= -1, got {window_size!r}")
    if softcap is not None:
        if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
            _fail("softcap", f"expected a float >= 0 (0 disables it), got {softcap!r}", TypeError)
        if not math.isfinite(softcap) or softcap < 0:
            _fail("softcap", f"expected a finite float >= 0 (0 disables it), got {softcap!r}")
        if softcap > 0 and not LOG2_UNITS_MIN_NORMAL <= softcap <= LOG2_UNITS_MAX:
            _fail("softcap", f"{softcap!r} is outside the float32 range the kernels use "
                             f"([{LOG2_UNITS_MIN_NORMAL:.3g}, {LOG2_UNITS_MAX:.3g}], or 0 to disable)")
    _check_chunk_lookback(chunk_lookback)
    num_seqs = cu_seqlens_q.shape[0] - 1
    per_seq_causal = _check_causal(causal, window_size, chunk_lookback, num_seqs, q.device)
    geometry = _mask_geometry(window_size, causal, chunk_lookback)
    _check_qq_bias(qq_bias, max_seqlen_q, q.device)
    use_rswa = _check_rswa(rswa_prefix_lens, rswa_window, window_size, chunk_lookback, num_seqs, q.device)
    if use_rswa:
        # The kernels treat R-SWA's window as the sliding window, its prefix as a second key range.
        geometry["window_left"] = min(rswa_window - 1, UNLIMITED)
    _expect_bool("use_alibi_sqrt", use_alibi_sqrt)
    if use_alibi_sqrt and alibi_slopes is None:
        _fail("use_alibi_sqrt", "needs alibi_slopes (it changes the ALiBi bias's shape)")
    _check_softmax_lse(softmax_lse, q.shape[0], q.shape[1], q.device)
    _expect_bool("mm_prefix_clamp_sliding_window", mm_prefix_clamp_sliding_window)
    if mm_prefix_range is not None:
        _expect_tensor("mm_prefix_range", mm_prefix_range, 3)
        if mm_prefix_range.dtype != torch.int32:
            _fail("mm_prefix_range", f"expected dtype torch.int32, got {mm_prefix_range.dtype}", TypeError)
        if mm_prefix_range.shape[0] != num_seqs or mm_prefix_range.shape[2] != 2:
            _fail("mm_prefix_range", f"expected shape ({num_seqs}, max_ranges, 2), got {tuple(mm_prefix_range.shape)}")
        if mm_prefix_range.device != q.device:
            _fail("mm_prefix_range", f"expected device {q.device} (q's), got {mm_prefix_range.device}")
    _expect_bool("split_kv", split_kv, allow_none=True)
    _expect_bool("batch_invariant", batch_invariant)
    _expect_bool("check_metadata", check_metadata)

    device = q.device
    tensors = {"k": k, "v": v, "out": out, "cu_seqlens_q": cu_seqlens_q, "seqused_k": seqused_k, "block_table": block_table}
    for name, t in tensors.items():
        if t.device != device:
            _fail(name, f"expected device {device} (q's), got {t.device}")
    for name, t in (("alibi_slopes", alibi_slopes), ("sinks", sinks)):
        if t is None:
            continue
        _expect_tensor(name, t, 1)
        if t.shape[0] != num_q_heads:
            _fail(name, f"expected {num_q_heads} entries (one per query head), got {t.shape[0]}")
        if not t.dtype.is_floating_point:
            _fail(name, f"expected a floating dtype, got {t.dtype}", TypeError)
        if t.device != device:
            _fail(name, f"expected device {device}, got {t.device}")
    _check_quant_cache(q, k, quant, k_scale_cache, v_scale_cache)
    if quant.per_token_head:
        for name, t in (("k_descale", k_descale), ("v_descale", v_descale)):
            if t is not None:
                _fail(name, f"only used with a per-tensor fp8 cache (mode is {quant.label!r}); pass None")
    elif k.dtype in FP8_CACHE_DTYPES:
        for name, t in (("k_descale", k_descale), ("v_descale", v_descale)):
            if t is None:
                _fail(name, "required for an fp8 cache (pass a one-element float32 tensor)")
            _expect_descale(name, t, cu_seqlens_q.shape[0] - 1, num_kv_heads, device)
    if out.dtype in FP8_CACHE_DTYPES:
        if output_scale is None:
            _fail("output_scale", "required when out is fp8")
        _expect_scale("output_scale", output_scale, device)
    if num_segments is not None and (isinstance(num_segments, bool) or not isinstance(num_segments, int) or num_segments < 1):
        _fail("num_segments", f"expected a positive int, got {num_segments!r}")
    if num_segments is not None and num_segments > MAX_SEGMENTS:
        # An error, not a silent clamp: the reduction merges at most MAX_SEGMENTS per row.
        _fail("num_segments", f"expected at most {MAX_SEGMENTS} (the planner's MAX_SEGMENTS), got {num_segments}")
    if workspace is not None:
        workspace.check_fits(num_tokens, num_q_heads, head_size, device)
    return _describe(
        q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k, quant, geometry, out=out, block_table=block_table,
        softmax_scale=softmax_scale, softcap=softcap, k_descale=k_descale, v_descale=v_descale,
        alibi_slopes=alibi_slopes, sinks=sinks, mm_prefix_range=mm_prefix_range,
        mm_prefix_clamp_sliding_window=mm_prefix_clamp_sliding_window, split_kv=split_kv,
        num_segments=num_segments, batch_invariant=batch_invariant, workspace=workspace, qq_bias=qq_bias,
        use_alibi_sqrt=use_alibi_sqrt, per_seq_causal=per_seq_causal, use_rswa=use_rswa, softmax_lse=softmax_lse)


def describe_call(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k, *, kv_quant_mode=None, causal=True,
                  window_size=None, chunk_lookback=-1, split_kv=None, num_segments=None, batch_invariant=False,
                  workspace=None) -> CallSpec:
    """The description of a call with these arguments (what ``make_plan`` plans), the features
    it does not name left off. Unchecked, but for kv_quant_mode and chunking (named errors)."""
    return _describe(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k, _kv_quant(kv_quant_mode, k.dtype),
                     _mask_geometry(window_size, causal, chunk_lookback), split_kv=split_kv,
                     num_segments=num_segments, batch_invariant=batch_invariant, workspace=workspace)


def _describe(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k, quant: KVQuant, geometry: dict, *, out=None,
              block_table=None, softmax_scale=1.0, softcap=None, k_descale=None, v_descale=None, alibi_slopes=None,
              sinks=None, mm_prefix_range=None, mm_prefix_clamp_sliding_window=False, split_kv=None,
              num_segments=None, batch_invariant=False, workspace=None, qq_bias=None, use_alibi_sqrt=False,
              per_seq_causal=False, use_rswa=False, softmax_lse=None) -> CallSpec:
    num_tokens, num_q_heads, head_size = q.shape
    num_blocks, block_size, num_kv_heads = k.shape[:3]
    q_fp8 = q.dtype in FP8_CACHE_DTYPES
    qk_scale = softmax_scale * LOG2E
    softcap = float(softcap or 0.0)
    # Descales per (sequence, KV head) when either is [num_seqs, num_kv_heads] with more than one element.
    descale_per_head = quant.per_tensor_fp8 and any(t is not None and t.numel() != 1 for t in (k_descale, v_descale))
    use_prefix = mm_prefix_range is not None and mm_prefix_range.shape[1] > 0
    return CallSpec(
        num_tokens=num_tokens, num_q_heads=num_q_heads, head_size=head_size, num_seqs=cu_seqlens_q.shape[0] - 1,
        num_blocks=num_blocks, block_size=block_size, num_kv_heads=num_kv_heads, max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
        kv_capacity=None if block_table is None else min(block_table.shape[1] * block_size, INT32_MAX),
        kv_quant=quant, one_byte_kv=k.element_size() == 1, q_fp32=q.dtype == torch.float32, q_fp8=q_fp8,
        out_fp8=out is not None and out.dtype in FP8_CACHE_DTYPES, descale_per_head=descale_per_head,
        store_lse=softmax_lse is not None, qk_scale=qk_scale, softcap=softcap * LOG2E,
        use_alibi=alibi_slopes is not None, alibi_sqrt=use_alibi_sqrt, use_sinks=sinks is not None,
        use_qq_bias=qq_bias is not None,
        # Scores stay unscaled until exp2 only where the scale is known positive and normal here (fp8
        # descales are device values; softcap, ALiBi, qq_bias and per-key scales act on scaled scores).
        fold_scale=(qk_scale >= FLOAT32_MIN_NORMAL and softcap == 0 and alibi_slopes is None
                    and not (quant.per_token_head or quant.per_tensor_fp8 or q_fp8) and qq_bias is None),
        **geometry, per_seq_causal=per_seq_causal, use_rswa=use_rswa, use_prefix=use_prefix,
        # R-SWA's window is no sliding window: the ranges' clamp has none to keep (window_size[0] is -1).
        prefix_clamp=use_prefix and mm_prefix_clamp_sliding_window and not use_rswa,
        split_kv=split_kv, num_segments=num_segments, batch_invariant=batch_invariant,
        workspace_segments=None if workspace is None else workspace.num_segments,
        workspace_counters=None if workspace is None else workspace.merge_counters.numel(),
    )


def validate_metadata(q, k, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, block_table, *,
                      mm_prefix_range=None) -> None:
    """Checks that need the metadata's values (syncs the device). Raises ValueError naming the argument.

    Everything the kernels only survive (see ``unified_attention``) is an error here:
    cu_seqlens_q not starting at 0, decreasing, or ending past q's tokens; max_seqlen_q below the
    longest query; seqused_k negative, below its sequence's query length or past its block-table
    row's capacity; max_seqlen_k below a sequence's keys; a block id a sequence uses outside
    ``[0, num_blocks)``; a used prefix range (start < end) starting before 0. Expects tensors that
    passed ``check_arguments``.
    """
    num_tokens, num_blocks, block_size = q.shape[0], k.shape[0], k.shape[1]
    num_seqs = _check_counts(cu_seqlens_q, seqused_k, block_table)
    cu = cu_seqlens_q.tolist()
    lens_k = seqused_k.tolist()
    if cu[0] != 0:
        _fail("cu_seqlens_q", f"must start at 0, got {cu[0]}")
    q_lens = [b - a for a, b in zip(cu, cu[1:])]
    for seq, q_len in enumerate(q_lens):
        if q_len < 0:
            _fail("cu_seqlens_q", f"must be non-decreasing, but entry {seq + 1} ({cu[seq + 1]}) < entry {seq} ({cu[seq]})")
    if cu[-1] > num_tokens:
        _fail("cu_seqlens_q", f"last entry {cu[-1]} exceeds q's {num_tokens} tokens")
    if q_lens and max(q_lens) > max_seqlen_q:
        _fail("max_seqlen_q", f"{max_seqlen_q} is below the longest query length {max(q_lens)}")
    capacity = block_table.shape[1] * block_size
    for seq, (q_len, kv_len) in enumerate(zip(q_lens, lens_k)):
        if kv_len < 0:
            _fail("seqused_k", f"sequence {seq} has a negative key count {kv_len}")
        if kv_len < q_len:
            _fail("seqused_k", f"sequence {seq} has {q_len} query tokens but only {kv_len} keys")
        if kv_len > capacity:
            _fail("seqused_k", f"sequence {seq} has {kv_len} keys but its block table holds {capacity}")
        if kv_len > max_seqlen_k:
            _fail("max_seqlen_k", f"{max_seqlen_k} is below sequence {seq}'s {kv_len} keys")
    if mm_prefix_range is not None:
        for seq, ranges in enumerate(mm_prefix_range.tolist()):
            for start, end in ranges:
                if start < end and start < 0:
                    _fail("mm_prefix_range", f"sequence {seq} has a range [{start}, {end}] starting before 0")
    if num_seqs == 0 or block_table.shape[1] == 0:
        return
    # One pass over the whole table (one sync): entry (s, c) is used iff c < ceil(seqused_k[s] / block_size).
    used_blocks = (seqused_k.to(torch.int64) + block_size - 1) // block_size
    columns = torch.arange(block_table.shape[1], device=block_table.device)
    bad = (columns[None, :] < used_blocks[:, None]) & ((block_table < 0) | (block_table >= num_blocks))
    if bool(bad.any()):
        seq, col = (int(i) for i in bad.nonzero()[0])
        _fail("block_table", f"sequence {seq} uses block id {int(block_table[seq, col])} (column {col}), "
                             f"outside [0, {num_blocks})")
