"""vLLM 0.33.0's ``unified_attention`` signature over ``paged_kernels.unified_attention``.

Assign ``unified_attention`` over ``vllm.v1.attention.ops.triton_unified_attention.unified_attention``
(or call it with the arguments vLLM's Triton backend builds): every parameter has vLLM's name,
position, default and meaning. What vLLM's launcher decides by itself (2D or 3D, tiles, segments)
our planner decides here; the results agree whichever path runs.
"""

from __future__ import annotations

import enum
import inspect
import os

import torch

from .api import unified_attention as _unified_attention
from .workspace import Workspace


class KVQuantMode(enum.IntEnum):
    """vLLM's ``vllm.v1.kv_cache_interface.KVQuantMode``, by names and values (IntEnum members
    compare equal to vLLM's own). The first five are ours too; the rest raise NotImplementedError."""

    NONE = 0
    FP8_PER_TENSOR = 1
    INT8_PER_TOKEN_HEAD = 2
    FP8_PER_TOKEN_HEAD = 3
    INT4_PER_TOKEN_HEAD = 4
    NVFP4 = 5
    TURBOQUANT = 6


_SUPPORTED_MODES = frozenset({KVQuantMode.NONE, KVQuantMode.FP8_PER_TENSOR, KVQuantMode.INT8_PER_TOKEN_HEAD,
                              KVQuantMode.FP8_PER_TOKEN_HEAD, KVQuantMode.INT4_PER_TOKEN_HEAD})
# Read once: the keywords our kernels take now (features still being added raise by name until then).
_OUR_PARAMETERS = frozenset(inspect.signature(_unified_attention).parameters)
_SEGMENT_BUFFERS = ("softmax_segm_output", "softmax_segm_max", "softmax_segm_expsum")
# vLLM's defaults of the arguments forwarded by name only when a call sets them (None where absent).
_DEFAULTS = {"use_alibi_sqrt": False, "chunk_lookback": -1, "mm_prefix_clamp_sliding_window": False}
# One zeroed merge-counter tensor per (device, size): allocated by the first call that needs it
# (before any CUDA-graph capture, as vLLM warms up), reused after; every launch leaves it at zero.
_COUNTERS: dict[tuple[torch.device, int], torch.Tensor] = {}


def unified_attention(
    q,
    k,
    v,
    out,
    cu_seqlens_q,
    max_seqlen_q,
    seqused_k,
    max_seqlen_k,
    softmax_scale,
    causal,
    window_size,
    block_table,
    softcap,
    q_descale,
    k_descale,
    v_descale,
    seq_threshold_3D=None,
    num_par_softmax_segments=None,
    softmax_segm_output=None,
    softmax_segm_max=None,
    softmax_segm_expsum=None,
    alibi_slopes=None,
    output_scale=None,
    qq_bias=None,
    sinks=None,
    mm_prefix_range=None,
    rswa_prefix_lens=None,
    rswa_window: int | None = None,
    use_alibi_sqrt=False,
    kv_quant_mode: KVQuantMode = KVQuantMode.NONE,
    k_scale_cache=None,
    v_scale_cache=None,
    chunk_lookback=-1,
    use_td: bool = False,
    mm_prefix_clamp_sliding_window: bool = False,
    *,
    softmax_lse=None,
):
    """vLLM 0.33.0's ``unified_attention``, computed by ``paged_kernels.unified_attention``.

    Writes into ``out`` and returns None, as vLLM's does. Where vLLM ignores an argument, so does
    this: ``k_descale``/``v_descale`` unless ``kv_quant_mode`` is FP8_PER_TENSOR (its backend
    passes them expanded to ``[num_seqs, num_kv_heads]`` for every cache; ours reads one element or
    one per (sequence, KV head)); ``q_descale`` unless q is fp8; ``window_size[1]`` (a non-causal
    window is ``window_size[0]`` on both sides); ``chunk_lookback`` without a left window; R-SWA
    unless both ``rswa_prefix_lens`` and ``rswa_window`` are given. k and v wider than a row
    (``head_size`` entries, INT4: ``head_size // 2`` bytes; vLLM's per-token-head cache keeps its
    scales after the row) are read through their first row's width. ``use_td`` (tensor-descriptor loads for Intel GPUs) has no effect here.
    ``VLLM_BATCH_INVARIANT=1`` in the environment (read per call) selects our batch-invariant mode.

    Split-KV: with all three segment buffers (float32 ``[T, num_q_heads, S, next_pow2(head_size)]``
    and two ``[T, num_q_heads, S]``, contiguous), ``num_par_softmax_segments`` and a
    ``seq_threshold_3D`` of at least 1, the buffers are the split path's workspace (wrapped, never
    copied or reallocated) and our planner chooses the path and up to ``num_par_softmax_segments``
    segments: ``seq_threshold_3D`` is a hint the planner replaces. Without them, with a threshold
    below 1 (no batch fits, as in vLLM), or with fewer than ``q.shape[0]`` rows, the 2D path runs.
    Split decodes merge in the attention launch using one module-level counter tensor per (device,
    size), kept at zero, so calls sharing it must be stream-ordered as calls sharing the buffers are.

    ``kv_quant_mode`` INT4_PER_TOKEN_HEAD maps onto "int4_per_token_head" (the rotation of q and of the
    output happens inside our kernels; where vLLM asserts a causal call, ours also computes the others).
    NVFP4 and TURBOQUANT raise NotImplementedError naming ``kv_quant_mode``, as does a non-default
    argument our kernels do not take yet. Beyond vLLM: ``softmax_lse``, float32
    ``[num_tokens, num_q_heads]``, receives each row's natural-log log-sum-exp.
    """
    del use_td  # a load strategy for Intel GPUs; the result is the same without it
    mode = _quant_mode(kv_quant_mode, k)
    width = q.shape[-1] // 2 if mode == KVQuantMode.INT4_PER_TOKEN_HEAD else q.shape[-1]
    if k.dim() == 4 and k.shape[-1] > width:
        k, v = k[..., :width], v[..., :width]  # views; vLLM reads the first row's width too
    if mode != KVQuantMode.FP8_PER_TENSOR:
        k_descale = v_descale = None
    if q.dtype.itemsize != 1:
        q_descale = None
    if window_size is not None and window_size[0] >= 0:
        window = (window_size[0], window_size[0])
    else:
        window = (-1, -1)
        chunk_lookback = -1  # vLLM turns chunking off without a sliding window
    given = dict(alibi_slopes=alibi_slopes, output_scale=output_scale, qq_bias=qq_bias, sinks=sinks,
                 mm_prefix_range=mm_prefix_range, use_alibi_sqrt=use_alibi_sqrt, k_scale_cache=k_scale_cache,
                 v_scale_cache=v_scale_cache, chunk_lookback=chunk_lookback,
                 mm_prefix_clamp_sliding_window=mm_prefix_clamp_sliding_window, softmax_lse=softmax_lse)
    if rswa_prefix_lens is not None and rswa_window is not None:  # vLLM ignores one without the other
        given.update(rswa_prefix_lens=rswa_prefix_lens, rswa_window=rswa_window)
    extras = {name: value for name, value in given.items() if not _is_default(value, _DEFAULTS.get(name))}
    missing = sorted(set(extras) - _OUR_PARAMETERS)
    if missing:
        raise NotImplementedError(f"{missing[0]}: not supported by this paged_kernels.unified_attention yet")
    if bool(int(os.environ.get("VLLM_BATCH_INVARIANT", "0"))):
        extras["batch_invariant"] = True
    workspace = _segment_workspace(q, seq_threshold_3D, num_par_softmax_segments, softmax_segm_output,
                                   softmax_segm_max, softmax_segm_expsum)
    _unified_attention(
        q, k, v, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, softmax_scale, causal, window,
        block_table, softcap, q_descale, k_descale, v_descale, kv_quant_mode=mode, workspace=workspace,
        split_kv=False if workspace is None else None, **extras,
    )


def _quant_mode(mode, k) -> KVQuantMode:
    """vLLM's mode (its IntEnum, ours, a plain int, a member name, or None: inferred from the cache
    as ours infers it) as ours; modes our kernels lack raise NotImplementedError."""
    try:
        if mode is None:
            resolved = KVQuantMode.FP8_PER_TENSOR if k.dtype.is_floating_point and k.dtype.itemsize == 1 \
                else KVQuantMode.NONE
        elif isinstance(mode, str):
            resolved = KVQuantMode[mode.upper()]
        else:
            resolved = KVQuantMode(int(mode))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"kv_quant_mode: expected a KVQuantMode, got {mode!r}") from None
    if resolved not in _SUPPORTED_MODES:
        raise NotImplementedError(f"kv_quant_mode: {resolved.name} caches are not supported by paged_kernels "
                                  f"(supported: {', '.join(m.name for m in sorted(_SUPPORTED_MODES))})")
    return resolved


def _is_default(value, default) -> bool:
    if isinstance(value, torch.Tensor):
        return False  # a tensor is never a default
    return value is None or value == default


def _segment_workspace(q, threshold, segments, acc, maxima, expsum) -> Workspace | None:
    """The caller's segment buffers as our workspace, or None for the 2D path."""
    if threshold is None or segments is None or acc is None or maxima is None or expsum is None:
        return None
    if threshold < 1:
        return None
    if min(t.shape[0] for t in (acc, maxima, expsum)) < q.shape[0]:
        return None  # too few rows for this batch: 2D, as vLLM does, never a partial overrun
    num_q_heads, head_size = q.shape[1], q.shape[2]
    if acc.dim() >= 2 and acc.shape[1] != num_q_heads:
        raise ValueError(f"softmax_segm_output: expected {num_q_heads} query heads (q's), got shape {tuple(acc.shape)}")
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise ValueError(f"num_par_softmax_segments: expected a positive int, got {segments!r}")
    if acc.dim() == 4 and segments > acc.shape[2]:
        raise ValueError(f"num_par_softmax_segments: {segments} exceeds the {acc.shape[2]} segments "
                         "softmax_segm_output holds")
    counters = _merge_counters(acc.device, 2 * acc.shape[0] * num_q_heads)
    return Workspace.over_buffers(acc, maxima, expsum, head_size, num_segments=segments, merge_counters=counters,
                                  names=_SEGMENT_BUFFERS)


def _merge_counters(device: torch.device, size: int) -> torch.Tensor | None:
    """The shared zeroed counters for ``size`` arrivals on ``device``; None while a CUDA graph is
    being captured before any call made them (allocating there would tie them to the graph's pool)."""
    key = (device, size)
    counters = _COUNTERS.get(key)
    if counters is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None  # the reduction launch needs no counters
        counters = _COUNTERS[key] = torch.zeros(size, dtype=torch.int32, device=device)
    return counters
