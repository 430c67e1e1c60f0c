"""``unified_attention``: validate, plan, launch. Nothing else happens here."""

from __future__ import annotations

import functools
import os

import torch
import triton

from . import _attention
from .plan import HOPPER_SHARED_PER_BLOCK, INTERPRETER_NUM_SMS, LaunchPlan, plan_call
from .spec import CallSpec
from .validate import FP8_CACHE_DTYPES, check_arguments, describe_call, validate_metadata
from .workspace import Workspace

FP8_E4M3_MAX = 448.0


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


CHECK_METADATA_ENV = "ATTN_CHECK_METADATA"


def metadata_check_forced() -> bool:
    """``ATTN_CHECK_METADATA=1`` turns checked mode on for every call (read per call)."""
    value = os.environ.get(CHECK_METADATA_ENV, "0").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{CHECK_METADATA_ENV}: expected 0 or 1, got {value!r}")
    return value == "1"


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRETER_NUM_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.lru_cache(maxsize=None)
def _shared_memory_per_block(device: torch.device) -> int:
    """The opt-in shared memory one program may use, in bytes (the pipeline depth depends on it)."""
    if device.type != "cuda":
        return HOPPER_SHARED_PER_BLOCK  # the interpreter has no shared memory to run out of
    # Triton's own launch check reads this (the driver's opt-in per-block maximum).
    index = device.index if device.index is not None else torch.cuda.current_device()
    return int(triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"])


def _programmatic_launch(device: torch.device) -> bool:
    """Programmatic dependent launch of the reduction: CUDA (not ROCm) devices of compute capability 9+."""
    if device.type != "cuda" or interpreting() or torch.version.hip:
        return False
    return _compute_capability(device)[0] >= 9


@functools.lru_cache(maxsize=None)
def _compute_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def _check_backend(q: torch.Tensor, k: torch.Tensor, out: torch.Tensor) -> None:
    if q.device.type == "cpu" and not interpreting():
        raise ValueError("q: CPU tensors need the Triton interpreter; set TRITON_INTERPRET=1 before importing triton")
    if not interpreting():
        return
    from . import _interpreter_probe as probe

    if q.dtype == torch.bfloat16 and not probe.bf16_dot_is_exact():
        raise NotImplementedError(
            "q: bfloat16 tl.dot is wrong under this Triton interpreter (triton issue #11584); "
            "run on a GPU, or install the test harness's interpreter fix first")
    if q.dtype in FP8_CACHE_DTYPES and not probe.fp8_dot_is_exact():
        raise NotImplementedError(
            "q: float8_e4m3fn x float8_e4m3fn tl.dot is wrong under this Triton interpreter; run on a GPU")
    if q.dtype == torch.bfloat16 and k.dtype == torch.int8 and not probe.int_to_bf16_is_exact():
        raise NotImplementedError(
            "k: int8 -> bfloat16 casts store the integer as the bit pattern under this Triton interpreter; "
            "run on a GPU, or install the test harness's interpreter fix first")
    if out.dtype in FP8_CACHE_DTYPES and not probe.fp8_cast_is_exact():
        raise NotImplementedError(
            "out: float32 -> fp8 casts round wrongly under this Triton interpreter; "
            "run on a GPU, or install the test harness's interpreter fix first")


def _plan(spec: CallSpec, device: torch.device) -> LaunchPlan:
    """The plan of ``spec`` on ``device`` (its SM count and shared memory are cached host values)."""
    return plan_call(spec, num_sms=_num_sms(device), interpreter=interpreting(),
                     shared_memory_per_block=_shared_memory_per_block(device))


def make_plan(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k, *, split_kv=None, num_segments=None,
              workspace=None, batch_invariant=False, chunk_lookback=-1, window_size=None,
              kv_quant_mode=None) -> LaunchPlan:
    """The plan ``unified_attention`` would launch for these arguments (no device reads)."""
    spec = describe_call(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k, kv_quant_mode=kv_quant_mode,
                         window_size=window_size, chunk_lookback=chunk_lookback, split_kv=split_kv,
                         num_segments=num_segments, batch_invariant=batch_invariant, workspace=workspace)
    return _plan(spec, q.device)


def unified_attention(
    q, k, v, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, softmax_scale, causal,
    window_size, block_table, softcap, q_descale, k_descale, v_descale,
    alibi_slopes=None, sinks=None, output_scale=None, *,
    kv_quant_mode=None, k_scale_cache=None, v_scale_cache=None,
    chunk_lookback=-1, mm_prefix_range=None, mm_prefix_clamp_sliding_window=False,
    split_kv=None, num_segments=None, workspace=None, batch_invariant=False, check_metadata=False,
    qq_bias=None, rswa_prefix_lens=None, rswa_window=None, use_alibi_sqrt=False, softmax_lse=None,
):
    """Paged attention over a varlen batch; writes into ``out`` and returns it.

    Shapes: q/out ``[num_tokens, num_q_heads, head_size]``; k/v ``[num_blocks, block_size,
    num_kv_heads, head_size]`` (any strides, last dim contiguous); block_table int32
    ``[num_seqs, max_blocks]``; cu_seqlens_q int32 ``[num_seqs + 1]``; seqused_k int32
    ``[num_seqs]`` (keys per sequence, new tokens included). ``split_kv`` None lets the planner
    choose, True/False force the 3D/2D path; ``num_segments`` overrides the segment count;
    ``workspace`` (a ``Workspace``) makes the 3D path allocation-free; ``batch_invariant``
    makes a sequence's output independent of the rest of the batch. ``num_segments`` above
    ``plan.MAX_SEGMENTS`` (128) is an error (``num_segments: ...``), never a silent clamp.
    An empty batch (cu_seqlens_q ``[0]``, no sequences) returns ``out`` untouched. A split decode
    with a small merge (``LaunchPlan.fused_merge``) merges its segments in the 3D launch, counting
    arrivals in the workspace's ``merge_counters`` (left at zero by every call: calls sharing a
    workspace must be stream-ordered; a call without a workspace zeroes its own, one fill launch
    where the reduction launch would have been). Otherwise, on CUDA devices of compute capability
    9+, the split path's reduction is a programmatic dependent launch of the 3D kernel (scheduled
    while that kernel runs, it waits for it before reading a partial; CUDA graphs capture the
    dependency).

    Metadata values (cu_seqlens_q, seqused_k, block_table) are not read on the host, so a call
    never syncs and can be captured in a CUDA graph. With invalid metadata the output is
    unspecified but the call is memory-safe: the kernels read and write nothing outside the
    tensors they are given. Tokens outside ``[0, num_tokens)`` are neither read nor written,
    a decreasing cu_seqlens_q gives that sequence no tokens, block ids outside
    ``[0, num_blocks)`` (-1 and num_blocks included) read the cache's last block instead, seqused_k is
    bounded by the block table's capacity (``block_table.shape[1] * block_size``) and a negative
    one behaves as 0. Checked mode, ``check_metadata=True`` or ``ATTN_CHECK_METADATA=1`` in the
    environment (read per call), runs ``validate_metadata`` first (a device sync; not for
    graph capture) and raises its ValueError, naming the argument, before anything is
    launched or written; it also refuses a workspace whose merge counters are not zero.

    Keyword-only features (vLLM's names; the defaults compile the kernels without them):
      * ``k_descale``/``v_descale`` of an fp8 cache: one element, or ``[num_seqs, num_kv_heads]``
        applied per (sequence, KV head) (any strides).
      * ``kv_quant_mode``: None (infer: fp8 cache -> "fp8_per_tensor", else "none"), one of
        "none", "fp8_per_tensor", "int8_per_token_head", "fp8_per_token_head",
        "int4_per_token_head", or an IntEnum with those member names and values 0..4 (vLLM's
        KVQuantMode). The per-token-head modes take an int8 / fp8 e4m3 / packed uint8 cache and
        float32 ``k_scale_cache``/``v_scale_cache`` ``[num_blocks, block_size, num_kv_heads]`` (any
        strides): each cached row is dequantized by its own scale; scales of slots no query sees
        are never read.
      * "int4_per_token_head" (vLLM 0.33's INT4 format, ``reference.int4``): k/v are uint8
        ``[num_blocks, block_size, num_kv_heads, head_size // 2]`` (head size even), value 2i of a
        row in the low nibble of byte i, 2i + 1 in the high one; each scale entry holds its row's
        zero point in its 4 low mantissa bits (cleared before scaling). Rows are stored rotated by
        ``R = H D`` (Hadamard blocks of the largest power of two b dividing head_size, vLLM's fixed
        signs); the result is attention over the rows ``R^-1 ((u - zero) * scale)``, in q's and out's
        space. The kernels rotate q by ``R / b`` when they load it and the output by ``R^-1`` before
        storing it (or storing a 3D partial), so softmax_scale, softcap, ALiBi, sinks, qq_bias,
        softmax_lse, fp8 output and every mask mean what they mean for any cache (vLLM refuses
        non-causal calls with INT4; these kernels do not). Refused: fp8 queries
        (NotImplementedError naming ``kv_quant_mode``, as for every per-token-head cache), an odd
        head size (``q``), a cache that is not uint8 (``k``/``v``, TypeError) or not head_size // 2
        bytes wide (``k``).
      * fp8 queries: q in float8_e4m3fn with a one-element float32 ``q_descale``, against a
        per-tensor fp8 cache (out: float16/bfloat16/float32 or fp8). QK^T is an fp8 x fp8 dot, P @ V
        an f16 one (the normalizer sums the probabilities unrounded). Per-token-head caches with fp8
        queries are refused (NotImplementedError), as in vLLM.
      * With an fp8 cache (either mode) bf16 queries are rescaled by a power of two into f16 and
        both dots take f16 operands (e4m3 converts to f16 in one instruction per two values, to
        bf16 in three); the probabilities are rounded to f16 after a 2^14 scaling, not to bf16.
      * ``chunk_lookback`` (-1 off): chunked (block-local) attention. With left window w
        (``window_size[0] >= 0``, causal) and chunk size ``C = (w + 1) // (chunk_lookback + 1)``
        (> 0), key j is visible to query position p iff ``j <= p`` and
        ``p // C - j // C <= chunk_lookback``; it replaces the sliding window.
      * ``mm_prefix_range`` int32 ``[num_seqs, max_ranges, 2]``: inclusive ``[start, end]`` position
        ranges per sequence (``start >= end``: unused). A query inside a range also sees every key
        of that range, later ones included: visible = (causal and window) or (both in one range).
        ``mm_prefix_clamp_sliding_window=True`` keeps the window's left bound for the range's
        extra keys. Range values are metadata: never read on the host, bounds-safe when invalid
        (a range past the sequence adds no key past it), checked by ``validate_metadata``.
      * ``causal`` as an int32 ``[num_seqs]`` tensor: per-sequence flags (nonzero: causal; values are
        metadata, never read on the host). A causal sequence sees keys ``j <= p`` within ``p - j <=
        window_size[0]``, a bidirectional one every key of the sequence within ``|p - j| <=
        window_size[0]`` (-1: unlimited). Refused: window_size[1] other than -1 (``window_size``),
        chunked attention (``causal``).
      * ``qq_bias`` float16/bfloat16/float32 ``[Q, K]``, any strides, ``Q >= max_seqlen_q``: a bias
        between each sequence's new tokens (tree attention), shared by every sequence and head. Row i
        is the sequence's i-th new token, column j the key at ``seq_len - q_len + j`` (``0 <= j <
        K``); older keys get none. Added after softcap and ALiBi, to visible keys only: a masked key
        stays masked, and a -inf entry hides its key.
      * ``rswa_prefix_lens`` int32 ``[num_seqs]`` with ``rswa_window`` (int >= 1), both or neither:
        R-SWA. Key j is visible to position p iff the causal/bidirectional mask allows it and ``j <
        prefix_len`` or ``p - j < rswa_window``; it replaces the sliding window (refused with
        window_size[0] >= 0 or chunk_lookback >= 0, naming ``rswa_window``). Prefix ranges still add
        their keys (their clamp has no window to keep). Lengths are metadata: negative acts as 0,
        past the sequence as its length.
      * ``use_alibi_sqrt`` (needs ``alibi_slopes``): ALiBi's bias is ``-slope * sqrt(p - j)`` for keys
        ``j <= p`` and 0 for later ones, instead of ``slope * (j - p)``.
      * ``softmax_lse`` float32 ``[num_tokens, num_q_heads]``, any strides, written: each query row's
        natural-log log-sum-exp of its visible scores (after softcap, ALiBi and qq_bias) and its sink;
        -inf for a row that sees no key and has no sink. Rows past ``cu_seqlens_q[-1]`` are left as
        they are. On the split path it comes from the segments' merge.
    """
    spec = check_arguments(
        q, k, v, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, softmax_scale, causal,
        window_size, block_table, softcap, q_descale, k_descale, v_descale, alibi_slopes, sinks,
        output_scale, num_segments, workspace, chunk_lookback=chunk_lookback, mm_prefix_range=mm_prefix_range,
        mm_prefix_clamp_sliding_window=mm_prefix_clamp_sliding_window,
        kv_quant_mode=kv_quant_mode, k_scale_cache=k_scale_cache, v_scale_cache=v_scale_cache,
        split_kv=split_kv, batch_invariant=batch_invariant, check_metadata=check_metadata,
        qq_bias=qq_bias, rswa_prefix_lens=rswa_prefix_lens, rswa_window=rswa_window, use_alibi_sqrt=use_alibi_sqrt,
        softmax_lse=softmax_lse,
    )
    checked = check_metadata or metadata_check_forced()
    if checked:
        validate_metadata(q, k, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, block_table,
                          mm_prefix_range=mm_prefix_range)
    _check_backend(q, k, out)
    plan = _plan(spec, q.device)
    if spec.empty:
        return out  # nothing to attend: launch nothing, leave out as it is
    split = plan.path == "3d"
    if checked and plan.fused_merge and workspace is not None and bool(workspace.merge_counters.any()):
        # Only a launch that never finished (or one on another stream) leaves a counter non-zero; with
        # one the fused merge would merge early or never. Checked mode may sync, so it looks.
        raise ValueError("workspace: merge_counters are not all zero (a launch on this workspace did not "
                         "finish, or another stream shares it); call workspace.reset_counters_()")
    if split and workspace is None:
        workspace = Workspace(spec.num_tokens, spec.num_q_heads, spec.head_size, plan.num_segments, q.device,
                              max_num_seqs=spec.num_seqs)
    programmatic = _programmatic_launch(q.device)
    pdl = {"launch_pdl": True} if programmatic else {}
    partials = workspace if split else None
    ranges = mm_prefix_range if spec.use_prefix else None
    lse = softmax_lse if spec.store_lse else None
    # Parameters both kernels take, under the same names. A feature's own arguments are None while it is
    # off: None compiles as a constant, so the kernels' parameter lists stay as they were without it.
    shared = dict(
        out_ptr=out, part_acc_ptr=q if partials is None else partials.acc,
        part_max_ptr=q if partials is None else partials.max, part_sum_ptr=q if partials is None else partials.expsum,
        cu_seqlens_q_ptr=cu_seqlens_q, seqused_k_ptr=seqused_k, sinks_ptr=_or(sinks, q),
        output_scale_ptr=_or(output_scale, q), prefix_ptr=_or(mm_prefix_range, cu_seqlens_q),
        **_strides("o", out, "tok", "head", "dim"),
        **_strides("part", None if partials is None else partials.max, "tok", "head"),
        num_seqs=spec.num_seqs, num_tokens=spec.num_tokens, kv_capacity=spec.kv_capacity,
        window_left=spec.window_left, num_segments=plan.num_segments, chunk_size=spec.chunk_size,
        chunk_lookback=spec.chunk_lookback, **_strides("pr", ranges, "seq", "range", "end"),
        num_ranges=0 if ranges is None else ranges.shape[1],
        HEAD_SIZE=spec.head_size, HEAD_PAD=spec.head_pad, USE_SINKS=spec.use_sinks, OUT_FP8=spec.out_fp8,
        OUT_FP8_MAX=FP8_E4M3_MAX, CHUNKED=spec.chunked, USE_PREFIX=spec.use_prefix, PREFIX_CLAMP=spec.prefix_clamp,
        rswa_ptr=rswa_prefix_lens if spec.use_rswa else None, lse_ptr=lse,
        **_feature_strides("lse", lse, "tok", "head"), USE_RSWA=spec.use_rswa, STORE_LSE=spec.store_lse,
    )
    bias = qq_bias if spec.use_qq_bias else None
    attention = dict(
        shared, q_ptr=q, k_ptr=k, v_ptr=v, block_table_ptr=block_table, alibi_ptr=_or(alibi_slopes, q),
        k_descale_ptr=_or(k_descale, q), v_descale_ptr=_or(v_descale, q), q_descale_ptr=_or(q_descale, q),
        k_scale_ptr=_or(k_scale_cache, q), v_scale_ptr=_or(v_scale_cache, q),
        merge_counter_ptr=workspace.merge_counters if plan.fused_merge else cu_seqlens_q,
        **_strides("q", q, "tok", "head", "dim"), **_strides("k", k, "blk", "slot", "head", "dim"),
        **_strides("v", v, "blk", "slot", "head", "dim"), **_strides("bt", block_table, "seq", "blk"),
        num_blocks=spec.num_blocks, qk_scale=spec.qk_scale, softcap=spec.softcap, window_right=spec.window_right,
        **_strides("kds", _per_head(k_descale, spec), "seq", "head"),
        **_strides("vds", _per_head(v_descale, spec), "seq", "head"),
        **_strides("ks", k_scale_cache, "blk", "slot", "head"), **_strides("vs", v_scale_cache, "blk", "slot", "head"),
        NUM_QUERIES_PER_KV=spec.queries_per_kv, BLOCK_SIZE=spec.block_size, USE_SOFTCAP=spec.softcap > 0,
        USE_ALIBI=spec.use_alibi, KV_FP8=spec.kv_quant.per_tensor_fp8, SPLIT_KV=split,
        DOT_PRECISION=spec.dot_precision, DESCALE_PER_HEAD=spec.descale_per_head,
        KV_PER_TOKEN_HEAD=spec.kv_quant.per_token_head, Q_FP8=spec.q_fp8, PV_F16=spec.pv_f16,
        FOLD_SCALE=spec.fold_scale, FUSED_MERGE=plan.fused_merge, MERGE_HEADS=plan.merge_heads,
        MERGE_SEGMENTS=plan.segments_pad,
        qq_bias_ptr=bias, **_feature_strides("qqb", bias, "row", "col"),
        qq_bias_rows=None if bias is None else bias.shape[0], qq_bias_cols=None if bias is None else bias.shape[1],
        causal_ptr=causal if spec.per_seq_causal else None, USE_QQ_BIAS=spec.use_qq_bias, ALIBI_SQRT=spec.alibi_sqrt,
        PER_SEQ_CAUSAL=spec.per_seq_causal, KV_INT4=spec.kv_quant.packed_int4, RHT_BLOCK=spec.rht_block,
        RHT_SIGNS=spec.rht_signs,
    )
    narrow = plan.narrow
    _attention._paged_attention_kernel[plan.grid](
        **attention, BLOCK_M=plan.block_m, BLOCK_Q=plan.block_q, TILE=plan.tile_size, SEQ_GRID=plan.seq_grid,
        NARROW_Q=0 if narrow is None else narrow.block_q, AWAIT_PRIMARY=False, TABLE_AHEAD=plan.table_ahead,
        PROGRAMMATIC_LAUNCH=((split and not plan.fused_merge) or narrow is not None) and programmatic,
        num_warps=plan.num_warps, num_stages=plan.num_stages,
    )
    if narrow is not None:
        # A programmatic dependent of the wide launch where supported: its programs take the SMs the
        # wide grid's last wave leaves idle (the two write disjoint rows of out).
        _attention._paged_attention_kernel[narrow.grid](
            **attention, BLOCK_M=narrow.block_m, BLOCK_Q=narrow.block_q, TILE=narrow.tile_size, SEQ_GRID=True,
            NARROW_Q=0, AWAIT_PRIMARY=programmatic, TABLE_AHEAD=False, PROGRAMMATIC_LAUNCH=False,
            num_warps=narrow.num_warps, num_stages=narrow.num_stages, **pdl,
        )
    if split and not plan.fused_merge:
        _attention._reduce_segments_kernel[plan.reduce_grid](
            **shared, num_q_heads=spec.num_q_heads, TILE=plan.tile_size, SEGMENTS_PAD=plan.segments_pad,
            HEADS=plan.reduce_heads, DIMS=plan.reduce_dims, PROGRAMMATIC_LAUNCH=programmatic,
            SEQ_GRID_BLOCK_Q=plan.block_q if plan.seq_grid else 0, num_warps=plan.reduce_num_warps, **pdl,
        )
    return out


def _strides(name: str, tensor, *dims: str) -> dict:
    """The kernels' ``stride_<name>_<dim>`` arguments: ``tensor``'s leading strides, or zeros for an
    unused one (None), which also broadcasts a one-element descale."""
    strides = (0,) * len(dims) if tensor is None else tensor.stride()[:len(dims)]
    return {f"stride_{name}_{dim}": stride for dim, stride in zip(dims, strides)}


def _feature_strides(name: str, tensor, *dims: str) -> dict:
    """``_strides`` of an optional feature's tensor, or Nones while the feature is off (see ``shared``)."""
    if tensor is None:
        return {f"stride_{name}_{dim}": None for dim in dims}
    return _strides(name, tensor, *dims)


def _per_head(descale, spec: CallSpec):
    """A descale with one value per (sequence, KV head), else None."""
    return descale if spec.descale_per_head and descale.numel() != 1 else None


def _or(tensor, fallback):
    """Unused pointer arguments still need a tensor; the constexpr switches keep them unread."""
    return fallback if tensor is None else tensor
