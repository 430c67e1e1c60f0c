"""bad_input tier: every invalid argument raises the documented error, names the argument, writes nothing."""

from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from attention_suite import build, same_bits, tables

FP8 = getattr(torch, "float8_e4m3fn")


@dataclass(frozen=True)
class ErrorInput:
    """An invalid call: ``mutate(args, kwargs, inputs)`` breaks one argument."""

    name: str
    mutate: Callable
    error: type
    regex: str
    gpu_only: bool = False


def _set(index):
    def mutate_with(value_fn):
        def mutate(args, kwargs, inputs):
            args[index] = value_fn(args[index], inputs)
        return mutate
    return mutate_with


Q, K, V, OUT, CU, MAXQ, SEQUSED, MAXK, SCALE, CAUSAL, WINDOW, TABLE, SOFTCAP, QDESC, KDESC, VDESC = range(16)


def _kw(name, value_fn):
    def mutate(args, kwargs, inputs):
        kwargs[name] = value_fn(inputs)
    return mutate


def _max_segments() -> int:
    from paged_kernels.plan import MAX_SEGMENTS

    return MAX_SEGMENTS


def _both(*mutations):
    def mutate(args, kwargs, inputs):
        for m in mutations:
            m(args, kwargs, inputs)
    return mutate


def _fp8_cache(args, kwargs, inputs):
    args[K], args[V] = args[K].to(FP8), args[V].to(FP8)


def _fp8_out(args, kwargs, inputs):
    args[OUT] = torch.empty_like(args[OUT], dtype=FP8)


def _extra_query_head(args, kwargs, inputs):
    """One more query head in q and out alike, so only the head-ratio check can object."""
    args[Q] = torch.cat([args[Q], args[Q][:, :1]], 1)
    args[OUT] = torch.cat([args[OUT], args[OUT][:, :1]], 1)


def _narrow_heads(args, kwargs, inputs):
    for index in (Q, K, V, OUT):
        args[index] = args[index][..., :8]


def _small_workspace(args, kwargs, inputs):
    import paged_kernels

    kwargs["split_kv"] = True
    kwargs["workspace"] = paged_kernels.Workspace(1, inputs.q.shape[1], inputs.q.shape[2], 2, inputs.q.device)


ERROR_INPUTS = [
    ErrorInput("q-rank", _set(Q)(lambda t, i: t[0]), ValueError, r"^q: expected 3 dimensions"),
    ErrorInput("q-int-dtype", _set(Q)(lambda t, i: t.to(torch.int32)), TypeError, r"^q: expected dtype"),
    ErrorInput("q-descale", _set(QDESC)(lambda t, i: torch.ones(1)), ValueError, r"^q_descale:"),
    ErrorInput("q-last-dim-strided", _set(Q)(lambda t, i: t.transpose(1, 2).contiguous().transpose(1, 2)),
               ValueError, r"^q: last dimension must be contiguous"),
    ErrorInput("k-v-dtype-mismatch", _set(V)(lambda t, i: t.float()), TypeError, r"^(v|k): expected"),
    ErrorInput("v-shape", _set(V)(lambda t, i: t[:-1]), ValueError, r"^v: expected the same shape"),
    ErrorInput("k-head-size", _set(K)(lambda t, i: t[..., :16]), ValueError, r"^(k|v): "),
    ErrorInput("gqa-ratio", _extra_query_head, ValueError, r"^k: num_q_heads \(\d+\) must be a multiple"),
    ErrorInput("head-size-unsupported", _narrow_heads, ValueError, r"^q: head size must be in"),
    ErrorInput("out-shape", _set(OUT)(lambda t, i: t[:-1]), ValueError, r"^out: expected q's shape"),
    ErrorInput("out-dtype", _set(OUT)(lambda t, i: t.float() if t.dtype != torch.float32 else t.half()),
               TypeError, r"^out: expected dtype"),
    ErrorInput("cu-seqlens-int64", _set(CU)(lambda t, i: t.long()), TypeError, r"^cu_seqlens_q: expected dtype"),
    ErrorInput("cu-seqlens-too-short", _set(CU)(lambda t, i: t[:1]), ValueError, r"^cu_seqlens_q:"),
    ErrorInput("seqused-k-length", _set(SEQUSED)(lambda t, i: t[:-1]), ValueError, r"^seqused_k: expected"),
    ErrorInput("block-table-rows", _set(TABLE)(lambda t, i: t[:-1]), ValueError, r"^block_table: expected"),
    ErrorInput("block-table-int64", _set(TABLE)(lambda t, i: t.long()), TypeError, r"^block_table: expected dtype"),
    ErrorInput("max-seqlen-negative", _set(MAXQ)(lambda t, i: -1), ValueError, r"^max_seqlen_q:"),
    ErrorInput("scale-nan", _set(SCALE)(lambda t, i: float("nan")), TypeError, r"^softmax_scale:"),
    ErrorInput("causal-not-bool", _set(CAUSAL)(lambda t, i: "yes"), TypeError, r"^causal:"),
    ErrorInput("window-bad", _set(WINDOW)(lambda t, i: (-5, 0)), ValueError, r"^window_size:"),
    ErrorInput("softcap-negative", _set(SOFTCAP)(lambda t, i: -1.0), ValueError, r"^softcap:"),
    ErrorInput("softcap-inf", _set(SOFTCAP)(lambda t, i: float("inf")), ValueError, r"^softcap:"),
    ErrorInput("window-int", _set(WINDOW)(lambda t, i: 8), TypeError, r"^window_size:"),
    ErrorInput("window-length", _set(WINDOW)(lambda t, i: (8, -1, 0)), ValueError, r"^window_size:"),
    ErrorInput("split-kv-not-bool", _kw("split_kv", lambda i: "yes"), TypeError, r"^split_kv:"),
    ErrorInput("batch-invariant-not-bool", _kw("batch_invariant", lambda i: 1), TypeError, r"^batch_invariant:"),
    ErrorInput("num-segments-past-grid", _kw("num_segments", lambda i: 10 ** 6), ValueError, r"^num_segments:"),
    # The limit holds on the 2D path too: the argument is checked before the planner picks a path.
    ErrorInput("num-segments-past-max-2d", _both(_kw("num_segments", lambda i: _max_segments() + 1),
                                                 _kw("split_kv", lambda i: False)), ValueError, r"^num_segments:"),
    ErrorInput("cu-seqlens-one-too-long", _set(CU)(lambda t, i: torch.cat([t, t[-1:]])), ValueError,
               r"^cu_seqlens_q:"),
    ErrorInput("alibi-length", _kw("alibi_slopes", lambda i: torch.ones(3, device=i.q.device)), ValueError,
               r"^alibi_slopes:"),
    ErrorInput("sinks-length", _kw("sinks", lambda i: torch.ones(3, device=i.q.device)), ValueError, r"^sinks:"),
    ErrorInput("fp8-cache-no-descale", _fp8_cache, ValueError, r"^k_descale: required"),
    ErrorInput("fp8-out-no-scale", _fp8_out, ValueError, r"^output_scale: required"),
    ErrorInput("num-segments-zero", _kw("num_segments", lambda i: 0), ValueError, r"^num_segments:"),
    ErrorInput("workspace-too-small", _small_workspace, ValueError, r"^workspace:"),
    ErrorInput("batch-invariant-with-split", lambda a, kw, i: kw.update(batch_invariant=True, split_kv=True),
               ValueError, r"split_kv"),
    ErrorInput("cpu-metadata-on-gpu", _set(CU)(lambda t, i: t.cpu()), ValueError, r"^cu_seqlens_q: expected device",
               gpu_only=True),
]
OURS_ONLY = {"num-segments-zero", "workspace-too-small", "batch-invariant-with-split", "split-kv-not-bool",
             "batch-invariant-not-bool", "num-segments-past-grid", "num-segments-past-max-2d"}


@pytest.mark.bad_input
@pytest.mark.quick
@pytest.mark.parametrize("bad", ERROR_INPUTS, ids=[e.name for e in ERROR_INPUTS])
def test_bad_input_raises_and_writes_nothing(ctx, bad):
    if bad.gpu_only and ctx.device == "cpu":
        pytest.skip("needs two devices")
    if bad.name in OURS_ONLY and not ctx.impl.is_ours:
        pytest.skip("argument specific to paged_kernels.unified_attention")
    inputs = build(tables.composition_case("mixed"), ctx.device, ctx.seed)
    out = inputs.fresh_out()
    args, kwargs = list(inputs.call_args(out)), dict(inputs.call_kwargs())
    bad.mutate(args, kwargs, inputs)
    before = args[OUT].clone()
    with pytest.raises(bad.error, match=bad.regex if ctx.impl.is_ours else None):
        ctx.impl.func(*args, **kwargs)
    assert same_bits(args[OUT], before), "out was written before the error"


def _metadata_args(inputs):
    return dict(q=inputs.q, k=inputs.k, cu_seqlens_q=inputs.cu_seqlens_q, max_seqlen_q=inputs.max_seqlen_q,
                seqused_k=inputs.seqused_k, max_seqlen_k=inputs.max_seqlen_k, block_table=inputs.block_table)


METADATA_ERRORS = {
    "cu-not-monotonic": (lambda a: a["cu_seqlens_q"].flip(0), "cu_seqlens_q"),
    "q-longer-than-kv": (lambda a: a["seqused_k"] * 0, "seqused_k"),
    "kv-past-block-table": (lambda a: a["seqused_k"] + 10_000, "seqused_k"),
    "block-id-out-of-range": (lambda a: a["block_table"] + 10_000, "block_table"),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("name", list(METADATA_ERRORS))
def test_validate_metadata(ctx, name):
    if not ctx.impl.is_ours:
        pytest.skip("validate_metadata belongs to kernels")
    from paged_kernels import validate_metadata

    inputs = build(tables.composition_case("mixed"), ctx.device, ctx.seed)
    args = _metadata_args(inputs)
    validate_metadata(**args)  # the valid batch passes
    change, arg = METADATA_ERRORS[name]
    target = {"cu-not-monotonic": "cu_seqlens_q", "q-longer-than-kv": "seqused_k",
              "kv-past-block-table": "seqused_k", "block-id-out-of-range": "block_table"}[name]
    args[target] = change(args)
    if name == "kv-past-block-table":
        args["max_seqlen_k"] += 10_000
    with pytest.raises(ValueError, match=f"^{arg}:"):
        validate_metadata(**args)
