"""``unified_attention``: validate, plan, launch. Nothing else happens here."""

from __future__ import annotations

import functools
import os

import torch
import triton

from . import _attention
from .plan import (HOPPER_SHARED_PER_BLOCK, INTERPRETER_NUM_SMS, UNLIMITED, LaunchPlan, effective_window,
                   next_power_of_2, plan_launch)
from .validate import FP8_CACHE_DTYPES, PER_TOKEN_HEAD_MODES, check_arguments, kv_quant_mode_name, validate_metadata
from .workspace import Workspace

FP8_E4M3_MAX = 448.0
# Kernel-side lengths are int32.
KV_CAPACITY_LIMIT = 2**31 - 1
# The smallest normal float32.
FLOAT32_TINY = 2.0**-126


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


def _check_backend(q: torch.Tensor, out: torch.Tensor) -> None:
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
    if out.dtype in FP8_CACHE_DTYPES and not probe.fp8_cast_is_exact():
        raise NotImplementedError(
            "out: float32 -> fp8 casts round wrongly under this Triton interpreter; "
            "run on a GPU, or install the test harness's interpreter fix first")


def _chunk_params(window_size, chunk_lookback) -> tuple[int, int]:
    """(chunk size, lookback) as the kernels take them (int32); (1, 0) when chunking is off (unused).

    A chunk of ``KV_CAPACITY_LIMIT`` or more keys holds every position a kernel can see, so the
    size is capped there; a lookback past ``UNLIMITED`` chunks reaches every chunk, so it is capped
    there (both keep the kernels' chunk arithmetic in int32 without changing the mask).
    """
    if chunk_lookback < 0:
        return 1, 0
    size = (int(window_size[0]) + 1) // (chunk_lookback + 1)
    return min(size, KV_CAPACITY_LIMIT), min(chunk_lookback, UNLIMITED)


def visible_key_span(max_seqlen_q, max_seqlen_k, window_size, chunk_lookback=-1) -> int:
    """Most keys one sequence's queries can see together (what the split-KV layout covers)."""
    if chunk_lookback < 0:
        return max_seqlen_k
    size, lookback = _chunk_params(window_size, chunk_lookback)
    # The first query's chunk start is at most (lookback + 1) * size - 1 keys before it.
    return min(max_seqlen_k, (lookback + 1) * size + max(max_seqlen_q, 1) - 1)


def make_plan(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k, *, split_kv=None, num_segments=None,
              workspace=None, batch_invariant=False, chunk_lookback=-1, window_size=None,
              kv_quant_mode=None) -> LaunchPlan:
    """The plan ``unified_attention`` would launch for these arguments (no device reads)."""
    return plan_launch(
        num_tokens=q.shape[0], num_seqs=cu_seqlens_q.shape[0] - 1, max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k, num_q_heads=q.shape[1], num_kv_heads=k.shape[2], head_size=q.shape[2],
        num_sms=_num_sms(q.device), interpreter=interpreting(), split_kv=split_kv, num_segments=num_segments,
        batch_invariant=batch_invariant, max_segments=None if workspace is None else workspace.num_segments,
        fp32=q.dtype == torch.float32, one_byte_kv=k.element_size() == 1,
        kv_per_token_head=kv_quant_mode_name(kv_quant_mode, k.dtype) in PER_TOKEN_HEAD_MODES,
        max_visible_keys=visible_key_span(max_seqlen_q, max_seqlen_k, window_size, chunk_lookback),
        shared_memory_per_block=_shared_memory_per_block(q.device),
        merge_counters=None if workspace is None else workspace.merge_counters.numel(),
    )


def unified_attention(
    q, k, v, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, softmax_scale, causal,
    window_size, block_table, softcap, q_descale, k_descale, v_descale,
    alibi_slopes=None, sinks=None, output_scale=None, *,
    kv_quant_mode=None, k_scale_cache=None, v_scale_cache=None,
    chunk_lookback=-1, mm_prefix_range=None, mm_prefix_clamp_sliding_window=False,
    split_kv=None, num_segments=None, workspace=None, batch_invariant=False, check_metadata=False,
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
    dependency): H200, bs1 decode L510 7.6 -> 6.6 us.

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
        "none", "fp8_per_tensor", "int8_per_token_head", "fp8_per_token_head", or an IntEnum with
        those member names and values 0..3 (vLLM's KVQuantMode). The per-token-head modes take an
        int8 / fp8 e4m3 cache and float32 ``k_scale_cache``/``v_scale_cache`` ``[num_blocks,
        block_size, num_kv_heads]`` (any strides): each cached row is dequantized by its own scale;
        scales of slots no query sees are never read.
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
    """
    check_arguments(
        q, k, v, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, softmax_scale, causal,
        window_size, block_table, softcap, q_descale, k_descale, v_descale, alibi_slopes, sinks,
        output_scale, num_segments, workspace, chunk_lookback=chunk_lookback, mm_prefix_range=mm_prefix_range,
        mm_prefix_clamp_sliding_window=mm_prefix_clamp_sliding_window,
        kv_quant_mode=kv_quant_mode, k_scale_cache=k_scale_cache, v_scale_cache=v_scale_cache,
        split_kv=split_kv, batch_invariant=batch_invariant, check_metadata=check_metadata,
    )
    checked = check_metadata or metadata_check_forced()
    if checked:
        validate_metadata(q, k, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, block_table,
                          mm_prefix_range=mm_prefix_range)
    _check_backend(q, out)
    chunked = chunk_lookback >= 0
    chunk_size, lookback = _chunk_params(window_size, chunk_lookback)
    plan = make_plan(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k, split_kv=split_kv,
                     num_segments=num_segments, workspace=workspace, batch_invariant=batch_invariant,
                     chunk_lookback=chunk_lookback, window_size=window_size, kv_quant_mode=kv_quant_mode)
    num_tokens, num_q_heads, head_size = q.shape
    num_seqs = cu_seqlens_q.shape[0] - 1
    if num_tokens == 0 or num_seqs == 0:
        return out  # nothing to attend: launch nothing, leave out as it is
    # Keys a sequence can address through its block-table row; the kernels clamp seqused_k to it.
    kv_capacity = min(block_table.shape[1] * k.shape[1], KV_CAPACITY_LIMIT)
    window_left, window_right = effective_window(window_size, causal)
    split = plan.path == "3d"
    if checked and plan.fused_merge and workspace is not None and bool(workspace.merge_counters.any()):
        # Only a launch that never finished (or one on another stream) leaves a counter non-zero; with
        # one the fused merge would merge early or never. Checked mode may sync, so it looks.
        raise ValueError("workspace: merge_counters are not all zero (a launch on this workspace did not "
                         "finish, or another stream shares it); call workspace.reset_counters_()")
    if split and workspace is None:
        workspace = Workspace(num_tokens, num_q_heads, head_size, plan.num_segments, q.device, max_num_seqs=num_seqs)
    part_acc, part_max, part_sum = (workspace.acc, workspace.max, workspace.expsum) if split else (q, q, q)
    merge_counters = workspace.merge_counters if plan.fused_merge else cu_seqlens_q
    part_strides = (part_max.stride(0), part_max.stride(1)) if split else (0, 0)
    softcap = float(softcap or 0.0)
    per_token_head = kv_quant_mode_name(kv_quant_mode, k.dtype) in PER_TOKEN_HEAD_MODES
    fp8_cache = k.dtype in FP8_CACHE_DTYPES  # per tensor or per token-head: f16 dot operands
    kv_fp8 = fp8_cache and not per_token_head  # per-tensor descales
    # Descales per (sequence, KV head) when either is [num_seqs, num_kv_heads] with more than one element.
    per_head = kv_fp8 and any(t.numel() != 1 for t in (k_descale, v_descale))
    use_prefix = mm_prefix_range is not None and mm_prefix_range.shape[1] > 0
    prefix_args = ((*mm_prefix_range.stride(), mm_prefix_range.shape[1]) if use_prefix else (0, 0, 0, 0))
    prefix_flags = dict(USE_PREFIX=use_prefix, PREFIX_CLAMP=use_prefix and mm_prefix_clamp_sliding_window)
    out_fp8 = out.dtype in FP8_CACHE_DTYPES
    q_fp8 = q.dtype in FP8_CACHE_DTYPES
    qk_scale = softmax_scale * _attention.LOG2E.value
    # Scores may stay unscaled until exp2 (see _attend_tiles) where the scale is known positive here
    # (normal in float32: a flushed subnormal would make masked scores -inf x 0); fp8 descales are
    # device values, and softcap, ALiBi and per-key scales act on scaled scores.
    fold_scale = (qk_scale >= FLOAT32_TINY and softcap == 0 and alibi_slopes is None
                  and not (per_token_head or kv_fp8 or q_fp8))
    programmatic = _programmatic_launch(q.device)
    common = dict(
        HEAD_SIZE=head_size, HEAD_PAD=next_power_of_2(head_size),
        USE_SINKS=sinks is not None, OUT_FP8=out_fp8, OUT_FP8_MAX=FP8_E4M3_MAX,
    )
    attention_args = (
        q, k, v, out, block_table, cu_seqlens_q, seqused_k,
        _or(alibi_slopes, q), _or(sinks, q), _or(k_descale, q), _or(v_descale, q), _or(output_scale, q),
        _or(q_descale, q),
        part_acc, part_max, part_sum, _or(mm_prefix_range, cu_seqlens_q),
        _or(k_scale_cache, q), _or(v_scale_cache, q), merge_counters,
        *q.stride(), *out.stride(), *k.stride(), *v.stride(), *block_table.stride(), *part_strides,
        num_seqs, num_tokens, k.shape[0], kv_capacity,
        qk_scale, softcap * _attention.LOG2E.value,
        window_left, window_right, plan.num_segments, chunk_size, lookback, *prefix_args,
        *_descale_strides(k_descale, per_head), *_descale_strides(v_descale, per_head),
        *(k_scale_cache.stride() if per_token_head else (0, 0, 0)),
        *(v_scale_cache.stride() if per_token_head else (0, 0, 0)),
    )
    attention_flags = dict(
        NUM_QUERIES_PER_KV=num_q_heads // k.shape[2],
        BLOCK_SIZE=k.shape[1], USE_SOFTCAP=softcap > 0, USE_ALIBI=alibi_slopes is not None,
        KV_FP8=kv_fp8, SPLIT_KV=split, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        CHUNKED=chunked, **prefix_flags, DESCALE_PER_HEAD=per_head, KV_PER_TOKEN_HEAD=per_token_head,
        Q_FP8=q_fp8, PV_F16=fp8_cache and q.dtype != torch.float32, FOLD_SCALE=fold_scale,
        FUSED_MERGE=plan.fused_merge, MERGE_HEADS=plan.merge_heads, MERGE_SEGMENTS=plan.segments_pad, **common,
    )
    narrow = plan.narrow
    _attention._paged_attention_kernel[plan.grid](
        *attention_args, BLOCK_M=plan.block_m, BLOCK_Q=plan.block_q, TILE=plan.tile_size,
        SEQ_GRID=plan.seq_grid, NARROW_Q=0 if narrow is None else narrow.block_q, AWAIT_PRIMARY=False,
        TABLE_AHEAD=plan.table_ahead,
        PROGRAMMATIC_LAUNCH=((split and not plan.fused_merge) or narrow is not None) and programmatic,
        num_warps=plan.num_warps, num_stages=plan.num_stages, **attention_flags,
    )
    if narrow is not None:
        # A programmatic dependent of the wide launch where supported: its programs take the SMs the
        # wide grid's last wave leaves idle (the two write disjoint rows of out).
        _attention._paged_attention_kernel[narrow.grid](
            *attention_args, BLOCK_M=narrow.block_m, BLOCK_Q=narrow.block_q, TILE=narrow.tile_size,
            SEQ_GRID=True, NARROW_Q=0, AWAIT_PRIMARY=programmatic, PROGRAMMATIC_LAUNCH=False, TABLE_AHEAD=False,
            num_warps=narrow.num_warps, num_stages=narrow.num_stages, **attention_flags,
            **({"launch_pdl": True} if programmatic else {}),
        )
    if split and not plan.fused_merge:
        _attention._reduce_segments_kernel[plan.reduce_grid](
            out, part_acc, part_max, part_sum, cu_seqlens_q, seqused_k, _or(sinks, q), _or(output_scale, q),
            _or(mm_prefix_range, cu_seqlens_q),
            *out.stride(), *part_strides, num_seqs, num_tokens, kv_capacity, num_q_heads, window_left,
            plan.num_segments, chunk_size, lookback, *prefix_args,
            SEGMENTS_PAD=plan.segments_pad, HEADS=plan.reduce_heads, DIMS=plan.reduce_dims,
            TILE=plan.tile_size, num_warps=plan.reduce_num_warps, CHUNKED=chunked, **prefix_flags, **common,
            PROGRAMMATIC_LAUNCH=programmatic, **({"launch_pdl": True} if programmatic else {}),
            SEQ_GRID_BLOCK_Q=plan.block_q if plan.seq_grid else 0,
        )
    return out


def _descale_strides(descale, per_head: bool) -> tuple[int, int]:
    """(sequence, KV head) strides of a per-head descale; (0, 0) for a one-element one or when unused."""
    if not per_head or descale.numel() == 1:
        return 0, 0
    return descale.stride(0), descale.stride(1)


def _or(tensor, fallback):
    """Unused pointer arguments still need a tensor; the constexpr switches keep them unread."""
    return fallback if tensor is None else tensor

