"""Keyword-only features of ``paged_kernels.unified_attention`` (vLLM's 2026 arguments): their argument
checks (named errors, nothing written, no tensor values read) and a few direct kernel checks
the case tables cannot express. Numerics, edges and poison live in the tables."""

import enum
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import reference
from attention_suite import VllmKVQuantMode as KVQuantMode, build, same_bits, tables

Q, K, V, OUT, CU, MAXQ, SEQUSED, MAXK, SCALE, CAUSAL, WINDOW, TABLE, SOFTCAP, QDESC, KDESC, VDESC = range(16)


@dataclass(frozen=True)
class FeatureError:
    name: str
    keyword: str  # the feature's keyword: implementations without it skip
    mutate: Callable  # (args, kwargs, inputs) -> None
    error: type
    regex: str


def _set(**changes):
    def mutate(args, kwargs, inputs):
        for key, value in changes.items():
            if isinstance(key, str) and key.isupper():
                args[globals()[key]] = value(inputs) if callable(value) else value
            else:
                kwargs[key] = value(inputs) if callable(value) else value
    return mutate


FEATURE_ERRORS = [
    FeatureError("chunk-not-int", "chunk_lookback", _set(chunk_lookback=1.0, WINDOW=(15, -1)), TypeError,
                 r"^chunk_lookback: expected an int"),
    FeatureError("chunk-bool", "chunk_lookback", _set(chunk_lookback=True, WINDOW=(15, -1)), TypeError,
                 r"^chunk_lookback: expected an int"),
    FeatureError("chunk-below-minus-1", "chunk_lookback", _set(chunk_lookback=-2, WINDOW=(15, -1)), ValueError,
                 r"^chunk_lookback: expected -1"),
    FeatureError("chunk-no-window", "chunk_lookback", _set(chunk_lookback=1), ValueError,
                 r"^chunk_lookback: needs a left window"),
    FeatureError("chunk-noncausal", "chunk_lookback", _set(chunk_lookback=1, WINDOW=(15, -1), CAUSAL=False),
                 ValueError, r"^chunk_lookback: chunked attention is causal"),
    FeatureError("chunk-size-0", "chunk_lookback", _set(chunk_lookback=4, WINDOW=(3, -1)), ValueError,
                 r"^chunk_lookback: chunk size .* is 0"),
    FeatureError("ranges-not-tensor", "mm_prefix_range", _set(mm_prefix_range=[[0, 3]]), TypeError,
                 r"^mm_prefix_range: expected a torch.Tensor"),
    FeatureError("ranges-int64", "mm_prefix_range",
                 _set(mm_prefix_range=lambda i: torch.zeros(4, 1, 2, dtype=torch.int64, device=i.q.device)),
                 TypeError, r"^mm_prefix_range: expected dtype"),
    FeatureError("ranges-rank", "mm_prefix_range",
                 _set(mm_prefix_range=lambda i: torch.zeros(4, 2, dtype=torch.int32, device=i.q.device)),
                 ValueError, r"^mm_prefix_range: expected 3 dimensions"),
    FeatureError("ranges-rows", "mm_prefix_range",
                 _set(mm_prefix_range=lambda i: torch.zeros(3, 1, 2, dtype=torch.int32, device=i.q.device)),
                 ValueError, r"^mm_prefix_range: expected shape"),
    FeatureError("ranges-last-dim", "mm_prefix_range",
                 _set(mm_prefix_range=lambda i: torch.zeros(4, 1, 3, dtype=torch.int32, device=i.q.device)),
                 ValueError, r"^mm_prefix_range: expected shape"),
    FeatureError("ranges-clamp-not-bool", "mm_prefix_clamp_sliding_window",
                 _set(mm_prefix_clamp_sliding_window=1), TypeError, r"^mm_prefix_clamp_sliding_window:"),
    FeatureError("descale-shape", "k_descale", lambda a, kw, i: _fp8_with_descales(a, (4,), (4, 2)), ValueError,
                 r"^k_descale: expected one element or shape \(4, 2\)"),
    FeatureError("descale-transposed", "v_descale", lambda a, kw, i: _fp8_with_descales(a, (4, 2), (2, 4)),
                 ValueError, r"^v_descale: expected one element or shape \(4, 2\)"),
    FeatureError("descale-float64", "k_descale",
                 lambda a, kw, i: _fp8_with_descales(a, (4, 2), (4, 2), torch.float64), TypeError,
                 r"^k_descale: expected dtype"),
    FeatureError("quant-mode-unknown", "kv_quant_mode", _set(kv_quant_mode="int4"), ValueError,
                 r"^kv_quant_mode: expected one of"),
    FeatureError("quant-mode-plain-int", "kv_quant_mode", _set(kv_quant_mode=2), TypeError, r"^kv_quant_mode:"),
    FeatureError("quant-mode-enum-mismatch", "kv_quant_mode", _set(kv_quant_mode=lambda i: _BadMode.INT8_PER_TOKEN_HEAD),
                 ValueError, r"^kv_quant_mode: .* is not one of"),
    FeatureError("quant-none-with-fp8", "kv_quant_mode", lambda a, kw, i: (_fp8_with_descales(a, (1,), (1,)),
                                                                          kw.update(kv_quant_mode="none")),
                 TypeError, r"^k: expected dtype .* for an unquantized cache"),
    FeatureError("quant-int8-mode-fp8-cache", "kv_quant_mode", lambda a, kw, i: _quant(a, kw, i, torch.float8_e4m3fn,
                                                                                        "int8_per_token_head"),
                 TypeError, r"^k: expected a torch.int8 cache"),
    FeatureError("quant-fp8-mode-int8-cache", "kv_quant_mode", lambda a, kw, i: _quant(a, kw, i, torch.int8,
                                                                                        "fp8_per_token_head"),
                 TypeError, r"^k: expected an fp8"),
    FeatureError("quant-no-scale-cache", "kv_quant_mode",
                 lambda a, kw, i: (_quant(a, kw, i, torch.int8, "int8_per_token_head"), kw.pop("v_scale_cache")),
                 ValueError, r"^v_scale_cache: required"),
    FeatureError("quant-scale-cache-shape", "kv_quant_mode",
                 lambda a, kw, i: (_quant(a, kw, i, torch.int8, "int8_per_token_head"),
                                   kw.update(k_scale_cache=kw["k_scale_cache"][:, :, :1])),
                 ValueError, r"^k_scale_cache: expected shape"),
    FeatureError("quant-scale-cache-dtype", "kv_quant_mode",
                 lambda a, kw, i: (_quant(a, kw, i, torch.int8, "int8_per_token_head"),
                                   kw.update(k_scale_cache=kw["k_scale_cache"].half())),
                 TypeError, r"^k_scale_cache: expected dtype"),
    FeatureError("quant-descale-with-per-token-head", "kv_quant_mode",
                 lambda a, kw, i: (_quant(a, kw, i, torch.int8, "int8_per_token_head"),
                                   a.__setitem__(KDESC, torch.ones(1, device=a[Q].device))),
                 ValueError, r"^k_descale: only used with a per-tensor"),
    # INT4 per-token-head caches: uint8, half the head size wide, an even head size, both scale caches.
    FeatureError("int4-int8-cache", "kv_quant_mode", lambda a, kw, i: _int4(a, kw, i, dtype=torch.int8), TypeError,
                 r"^k: expected a torch.uint8 cache"),
    FeatureError("int4-f16-cache", "kv_quant_mode", lambda a, kw, i: _int4(a, kw, i, dtype=torch.float16),
                 TypeError, r"^k: expected a torch.uint8 cache"),
    FeatureError("int4-full-width", "kv_quant_mode", lambda a, kw, i: _int4(a, kw, i, width=a[Q].shape[-1]),
                 ValueError, r"^k: expected \d+ bytes per row"),
    FeatureError("int4-odd-head-size", "kv_quant_mode", lambda a, kw, i: _int4(a, kw, i, width=31, head_size=63),
                 ValueError, r"^q: kv_quant_mode 'int4_per_token_head' packs two values per byte"),
    FeatureError("int4-no-scale-cache", "kv_quant_mode",
                 lambda a, kw, i: (_int4(a, kw, i), kw.pop("k_scale_cache")), ValueError, r"^k_scale_cache: required"),
    FeatureError("int4-scale-cache-shape", "kv_quant_mode",
                 lambda a, kw, i: (_int4(a, kw, i), kw.update(v_scale_cache=kw["v_scale_cache"][:1])),
                 ValueError, r"^v_scale_cache: expected shape"),
    FeatureError("int4-descale", "kv_quant_mode",
                 lambda a, kw, i: (_int4(a, kw, i), a.__setitem__(VDESC, torch.ones(1, device=a[Q].device))),
                 ValueError, r"^v_descale: only used with a per-tensor"),
    FeatureError("quant-scale-cache-without-mode", "k_scale_cache",
                 _set(k_scale_cache=lambda i: torch.ones(i.k.shape[:3], device=i.q.device)),
                 ValueError, r"^k_scale_cache: only used with a per-token-head"),
    FeatureError("fp8q-no-descale", "q_descale", lambda a, kw, i: _fp8_query(a, None), ValueError,
                 r"^q_descale: required for fp8 queries"),
    FeatureError("fp8q-descale-shape", "q_descale", lambda a, kw, i: _fp8_query(a, torch.ones(2)), ValueError,
                 r"^q_descale: expected a one-element"),
    FeatureError("fp8q-descale-dtype", "q_descale", lambda a, kw, i: _fp8_query(a, torch.ones(1, dtype=torch.float64)),
                 TypeError, r"^q_descale: expected dtype"),
    FeatureError("fp8q-unquantized-cache", "q_descale",
                 lambda a, kw, i: (_fp8_query(a, torch.ones(1)), a.__setitem__(K, a[K].to(torch.float8_e4m3fn)),
                                   a.__setitem__(K, torch.zeros_like(a[V])), a.__setitem__(KDESC, None),
                                   a.__setitem__(VDESC, None), kw.update(kv_quant_mode="none")),
                 ValueError, r"^kv_quant_mode: fp8 queries need a quantized KV cache"),
    FeatureError("fp8q-out-int", "q_descale",
                 lambda a, kw, i: (_fp8_query(a, torch.ones(1)), a.__setitem__(OUT, a[OUT].to(torch.int32))),
                 TypeError, r"^out: expected dtype"),
    # vLLM 0.33's arguments (the mixed composition: 4 sequences, max_seqlen_q 23).
    FeatureError("qq-bias-not-tensor", "qq_bias", _set(qq_bias=[[0.0]]), TypeError,
                 r"^qq_bias: expected a torch.Tensor"),
    FeatureError("qq-bias-rank", "qq_bias", _set(qq_bias=lambda i: _zeros(i, i.max_seqlen_q)), ValueError,
                 r"^qq_bias: expected 2 dimensions"),
    FeatureError("qq-bias-int", "qq_bias", _set(qq_bias=lambda i: _zeros(i, i.max_seqlen_q, 4, dtype=torch.int32)),
                 TypeError, r"^qq_bias: expected dtype"),
    FeatureError("qq-bias-float64", "qq_bias",
                 _set(qq_bias=lambda i: _zeros(i, i.max_seqlen_q, 4, dtype=torch.float64)), TypeError,
                 r"^qq_bias: expected dtype"),
    FeatureError("qq-bias-rows", "qq_bias", _set(qq_bias=lambda i: _zeros(i, i.max_seqlen_q - 1, 40)), ValueError,
                 r"^qq_bias: expected at least max_seqlen_q"),
    FeatureError("rswa-window-alone", "rswa_window", _set(rswa_window=4), ValueError, r"^rswa_prefix_lens: required"),
    FeatureError("rswa-lens-alone", "rswa_prefix_lens", _set(rswa_prefix_lens=lambda i: _lens(i)), ValueError,
                 r"^rswa_window: required"),
    FeatureError("rswa-lens-int64", "rswa_prefix_lens",
                 _set(rswa_prefix_lens=lambda i: _zeros(i, 4, dtype=torch.int64), rswa_window=4), TypeError,
                 r"^rswa_prefix_lens: expected dtype"),
    FeatureError("rswa-lens-length", "rswa_prefix_lens",
                 _set(rswa_prefix_lens=lambda i: _zeros(i, 3, dtype=torch.int32), rswa_window=4), ValueError,
                 r"^rswa_prefix_lens: expected 4 entries"),
    FeatureError("rswa-window-0", "rswa_window", _set(rswa_prefix_lens=lambda i: _lens(i), rswa_window=0),
                 ValueError, r"^rswa_window: expected a window >= 1"),
    FeatureError("rswa-window-float", "rswa_window", _set(rswa_prefix_lens=lambda i: _lens(i), rswa_window=4.0),
                 TypeError, r"^rswa_window: expected an int"),
    FeatureError("rswa-window-bool", "rswa_window", _set(rswa_prefix_lens=lambda i: _lens(i), rswa_window=True),
                 TypeError, r"^rswa_window: expected an int"),
    FeatureError("rswa-with-sliding-window", "rswa_window",
                 _set(rswa_prefix_lens=lambda i: _lens(i), rswa_window=4, WINDOW=(15, -1)), ValueError,
                 r"^rswa_window: R-SWA replaces the sliding window"),
    FeatureError("rswa-with-chunks", "rswa_window",
                 _set(rswa_prefix_lens=lambda i: _lens(i), rswa_window=4, WINDOW=(15, -1), chunk_lookback=0),
                 ValueError, r"^rswa_window: R-SWA cannot be combined with chunked"),
    FeatureError("sqrt-not-bool", "use_alibi_sqrt", _set(use_alibi_sqrt=1), TypeError,
                 r"^use_alibi_sqrt: expected a bool"),
    FeatureError("sqrt-without-slopes", "use_alibi_sqrt", _set(use_alibi_sqrt=True), ValueError,
                 r"^use_alibi_sqrt: needs alibi_slopes"),
    # Per-sequence causal flags came with the arguments above: implementations without qq_bias skip.
    FeatureError("causal-flags-int64", "qq_bias", _set(CAUSAL=lambda i: _ones(i, 4, dtype=torch.int64)), TypeError,
                 r"^causal: expected dtype"),
    FeatureError("causal-flags-bool-tensor", "qq_bias", _set(CAUSAL=lambda i: _ones(i, 4, dtype=torch.bool)),
                 TypeError, r"^causal: expected dtype"),
    FeatureError("causal-flags-length", "qq_bias", _set(CAUSAL=lambda i: _ones(i, 3, dtype=torch.int32)), ValueError,
                 r"^causal: expected 4 entries"),
    FeatureError("causal-flags-rank", "qq_bias", _set(CAUSAL=lambda i: _ones(i, 4, 1, dtype=torch.int32)), ValueError,
                 r"^causal: expected 1 dimensions"),
    FeatureError("causal-flags-right-window", "qq_bias",
                 _set(CAUSAL=lambda i: _ones(i, 4, dtype=torch.int32), WINDOW=(5, 3)), ValueError,
                 r"^window_size: with per-sequence causal the window is \(left, -1\)"),
    FeatureError("causal-flags-chunked", "qq_bias",
                 _set(CAUSAL=lambda i: _ones(i, 4, dtype=torch.int32), WINDOW=(15, -1), chunk_lookback=0), ValueError,
                 r"^causal: chunked attention is causal"),
    FeatureError("lse-not-tensor", "softmax_lse", _set(softmax_lse=0.0), TypeError,
                 r"^softmax_lse: expected a torch.Tensor"),
    FeatureError("lse-float16", "softmax_lse",
                 _set(softmax_lse=lambda i: _zeros(i, *i.q.shape[:2], dtype=torch.float16)), TypeError,
                 r"^softmax_lse: expected dtype"),
    FeatureError("lse-rank", "softmax_lse", _set(softmax_lse=lambda i: _zeros(i, i.q.shape[0])), ValueError,
                 r"^softmax_lse: expected 2 dimensions"),
    FeatureError("lse-transposed-shape", "softmax_lse",
                 _set(softmax_lse=lambda i: _zeros(i, i.q.shape[1], i.q.shape[0])), ValueError,
                 r"^softmax_lse: expected shape"),
]


def _zeros(inputs, *shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype, device=inputs.q.device)


def _ones(inputs, *shape, dtype=torch.float32):
    return torch.ones(shape, dtype=dtype, device=inputs.q.device)


def _lens(inputs):
    """Well-formed R-SWA prefix lengths for the mixed composition's 4 sequences."""
    return _zeros(inputs, 4, dtype=torch.int32)


def _fp8_query(args, q_descale):
    """fp8 queries (with ``q_descale``) against a per-tensor fp8 cache, bf16 output."""
    fp8 = torch.float8_e4m3fn
    dev = args[Q].device
    args[Q] = args[Q].to(fp8)
    args[K], args[V] = args[K].to(fp8), args[V].to(fp8)
    args[KDESC], args[VDESC] = torch.ones(1, device=dev), torch.ones(1, device=dev)
    args[OUT] = args[OUT].to(torch.bfloat16)
    args[QDESC] = None if q_descale is None else q_descale.to(dev)


class _BadMode(enum.IntEnum):
    NONE = 0
    INT8_PER_TOKEN_HEAD = 3  # vLLM's value is 2


def _quant(args, kwargs, inputs, dtype, mode):
    """A per-token-head cache of ``dtype`` under ``mode``, with well-formed scale caches."""
    args[K], args[V] = args[K].to(dtype), args[V].to(dtype)
    shape = tuple(args[K].shape[:3])
    kwargs.update(kv_quant_mode=mode, k_scale_cache=torch.ones(shape, device=args[Q].device),
                  v_scale_cache=torch.ones(shape, device=args[Q].device))


def _int4(args, kwargs, inputs, dtype=torch.uint8, width=None, head_size=None):
    """An INT4 per-token-head call: caches of ``dtype``, ``width`` bytes per row (default: half the head
    size), well-formed scale caches; ``head_size`` narrows q and out first."""
    if head_size is not None:
        args[Q], args[OUT] = args[Q][..., :head_size], args[OUT][..., :head_size]
    width = args[Q].shape[-1] // 2 if width is None else width
    args[K] = torch.zeros(*args[K].shape[:3], width, dtype=dtype, device=args[Q].device)
    args[V] = torch.zeros_like(args[K])
    shape = tuple(args[K].shape[:3])
    kwargs.update(kv_quant_mode="int4_per_token_head", k_scale_cache=torch.ones(shape, device=args[Q].device),
                  v_scale_cache=torch.ones(shape, device=args[Q].device))


def _fp8_with_descales(args, k_shape, v_shape, dtype=torch.float32):
    """An fp8 cache with descales of the given shapes (the mixed composition: 4 sequences, 2 KV heads)."""
    fp8 = torch.float8_e4m3fn
    args[K], args[V] = args[K].to(fp8), args[V].to(fp8)
    args[KDESC] = torch.full(k_shape, 0.5, dtype=dtype, device=args[Q].device)
    args[VDESC] = torch.full(v_shape, 0.5, dtype=torch.float32, device=args[Q].device)


def _feature_call(ctx, bad):
    if bad.keyword not in ctx.impl.params:
        pytest.skip(f"{ctx.impl.spec} has no '{bad.keyword}' argument")
    inputs = build(tables.composition_case("mixed"), ctx.device, ctx.seed)
    out = inputs.fresh_out()
    args, kwargs = list(inputs.call_args(out)), dict(inputs.call_kwargs())
    bad.mutate(args, kwargs, inputs)
    return args, kwargs


@pytest.mark.bad_input
@pytest.mark.quick
@pytest.mark.parametrize("bad", FEATURE_ERRORS, ids=[e.name for e in FEATURE_ERRORS])
def test_feature_bad_input_raises_and_writes_nothing(ctx, bad):
    args, kwargs = _feature_call(ctx, bad)
    before = args[OUT].clone()
    with pytest.raises(bad.error, match=bad.regex if ctx.impl.is_ours else None):
        ctx.impl.func(*args, **kwargs)
    assert same_bits(args[OUT], before), "out was written before the error"
    # The reference refuses the same call with the same argument named.
    with pytest.raises(bad.error, match=r"^" + bad.regex.lstrip("^").split(":")[0] + ":"):
        reference.unified_attention(*args, **kwargs)


@pytest.mark.bad_input
@pytest.mark.parametrize("bad", FEATURE_ERRORS, ids=[e.name for e in FEATURE_ERRORS])
def test_feature_checks_read_no_values(ctx, bad):
    """check_arguments on meta tensors: the same error, so no check reads a tensor's contents."""
    if not ctx.impl.is_ours:
        pytest.skip("check_arguments belongs to kernels")
    import inspect

    import paged_kernels

    args, kwargs = _feature_call(ctx, bad)
    meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
    kw = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    names = list(inspect.signature(paged_kernels.check_arguments).parameters)
    positional = meta + [kw.pop(n, None) for n in names[16:21]]  # alibi .. workspace
    with pytest.raises(bad.error, match=bad.regex):
        paged_kernels.check_arguments(*positional, **kw)


@pytest.mark.bad_input
@pytest.mark.quick
def test_prefix_range_values_are_metadata(ctx):
    """A used range starting before 0: refused by validate_metadata and checked mode (named), never by
    the cheap checks; unchecked, the call still runs (bounds-safe) and unused entries may hold anything."""
    if "mm_prefix_range" not in ctx.impl.params:
        pytest.skip(f"{ctx.impl.spec} has no 'mm_prefix_range' argument")
    case = tables.find("quick-prefix-ranges-unclamped")
    inputs = build(case, ctx.device, ctx.seed)
    ranges = inputs.mm_prefix_range.clone()
    ranges[0, 0] = torch.tensor([-3, 50], dtype=torch.int32)
    ranges[1, -1] = torch.tensor([-7, -9], dtype=torch.int32)  # unused (start >= end): fine
    kwargs = {**inputs.call_kwargs(), "mm_prefix_range": ranges}
    with pytest.raises(ValueError, match=r"^mm_prefix_range: sequence 0 has a range \[-3, 50\]"):
        reference.unified_attention(*inputs.call_args(inputs.fresh_out()), **kwargs)
    if ctx.impl.is_ours:
        import paged_kernels

        with pytest.raises(ValueError, match=r"^mm_prefix_range: sequence 0 has a range \[-3, 50\]"):
            paged_kernels.validate_metadata(inputs.q, inputs.k, inputs.cu_seqlens_q, inputs.max_seqlen_q, inputs.seqused_k,
                                      inputs.max_seqlen_k, inputs.block_table, mm_prefix_range=ranges)
    if "check_metadata" in ctx.impl.params:
        out = inputs.fresh_out()
        with pytest.raises(ValueError, match=r"^mm_prefix_range:"):
            ctx.impl.func(*inputs.call_args(out), **kwargs, check_metadata=True)
        assert same_bits(out, inputs.out), "out was written before the error"
    # Unchecked: garbage ranges (huge, negative, past the sequence) run and write only the used rows.
    ranges[0, 0] = torch.tensor([-2**31, 2**31 - 1], dtype=torch.int32)
    ranges[1, 0] = torch.tensor([0, 2**31 - 1], dtype=torch.int32)
    for path in ("2d", "3d"):
        out = inputs.fresh_out()
        kw = {**kwargs, "mm_prefix_range": ranges}
        if ctx.impl.style == "split_kv":
            kw["split_kv"] = path == "3d"
        ctx.impl.func(*inputs.call_args(out), **kw)
        rows = inputs.num_tokens_used
        assert same_bits(out[rows:], inputs.out[rows:])
        assert torch.isfinite(out[:rows].float()).all()


@pytest.mark.quick
@pytest.mark.numerics
@pytest.mark.parametrize("flag", [0, 1])
def test_uniform_causal_flags_match_the_bool(ctx, flag):
    """Per-sequence flags all equal to ``flag`` give, bit for bit, the bool call they mean: all causal is
    causal=True with the window (w, -1), all bidirectional is causal=False with the window (w, w)."""
    if "qq_bias" not in ctx.impl.params:
        pytest.skip(f"{ctx.impl.spec} predates per-sequence causal flags")
    inputs = build(tables.composition_case("mixed"), ctx.device, ctx.seed)
    num_seqs = inputs.cu_seqlens_q.shape[0] - 1
    flags = torch.full((num_seqs,), flag, dtype=torch.int32, device=inputs.q.device)
    for window in (-1, 9):
        for path in ("2d", "3d") if ctx.impl.style == "split_kv" else ("auto",):
            outs = []
            for causal, window_size in ((flags, (window, -1)), (bool(flag), (window, -1 if flag else window))):
                out = inputs.fresh_out()
                args = list(inputs.call_args(out))
                args[CAUSAL], args[WINDOW] = causal, window_size
                kwargs = dict(inputs.call_kwargs())
                if ctx.impl.style == "split_kv":
                    kwargs["split_kv"] = path == "3d"
                ctx.impl.func(*args, **kwargs)
                outs.append(out)
            assert same_bits(*outs), f"{path}, window {window}: flags {flag} differ from causal={bool(flag)}"


@pytest.mark.bad_input
@pytest.mark.quick
def test_rswa_lengths_and_causal_flags_are_metadata(ctx):
    """R-SWA prefix lengths and per-sequence causal flags are never read on the host: any values run on
    every path and give, bit for bit, what their meaning gives (a length below 0 acts as 0, one past the
    sequence as its length, as in the reference; any nonzero flag is causal); padding rows stay untouched."""
    if "rswa_prefix_lens" not in ctx.impl.params:
        pytest.skip(f"{ctx.impl.spec} has no 'rswa_prefix_lens' argument")
    inputs = build(tables.find("quick-causal-per-seq-rswa"), ctx.device, ctx.seed)
    dev = inputs.q.device
    garbage = (torch.tensor([-2**31, 2**31 - 1, -1, 5000], dtype=torch.int32, device=dev),
               torch.tensor([0, 7, -1, 2**31 - 1], dtype=torch.int32, device=dev))
    lens = inputs.seqused_k.clamp(max=2**31 - 1)
    meant = (torch.minimum(garbage[0].clamp(min=0), lens), (garbage[1] != 0).to(torch.int32))
    for path in ("2d", "3d") if ctx.impl.style == "split_kv" else ("auto",):
        outs = []
        for prefix_lens, flags in (garbage, meant):
            out = inputs.fresh_out()
            args = list(inputs.call_args(out))
            args[CAUSAL] = flags
            kwargs = {**inputs.call_kwargs(), "rswa_prefix_lens": prefix_lens}
            if ctx.impl.style == "split_kv":
                kwargs["split_kv"] = path == "3d"
            ctx.impl.func(*args, **kwargs)
            outs.append(out)
        rows = inputs.num_tokens_used
        assert same_bits(*outs), f"{path}: garbage metadata differs from the values it means"
        assert same_bits(outs[0][rows:], inputs.out[rows:])


@pytest.mark.quick
@pytest.mark.numerics
@pytest.mark.parametrize("form", ["str", "enum"])
def test_kv_quant_mode_forms_agree(ctx, form):
    """vLLM's KVQuantMode IntEnum and the mode's name give the same output, bit for bit; so do None
    and "fp8_per_tensor" for a per-tensor fp8 cache."""
    if not ctx.impl.is_ours:
        pytest.skip("the accepted forms of paged_kernels.unified_attention's kv_quant_mode")
    for label, member in (("quick-int8-pertokenhead", KVQuantMode.INT8_PER_TOKEN_HEAD),
                          ("quick-int4-pertokenhead", KVQuantMode.INT4_PER_TOKEN_HEAD)):
        inputs = build(tables.find(label), ctx.device, ctx.seed)
        runs = []
        for mode in (member.name.lower(), member if form == "enum" else member.name.lower()):
            out = inputs.fresh_out()
            ctx.impl.func(*inputs.call_args(out), **{**inputs.call_kwargs(), "kv_quant_mode": mode})
            runs.append(out)
        assert same_bits(*runs), label
    fp8 = build(tables.find("quick-fp8kv"), ctx.device, ctx.seed)
    runs = []
    for mode in (None, KVQuantMode.FP8_PER_TENSOR if form == "enum" else "fp8_per_tensor"):
        out = fp8.fresh_out()
        ctx.impl.func(*fp8.call_args(out), **{**fp8.call_kwargs(), "kv_quant_mode": mode})
        runs.append(out)
    assert same_bits(*runs)


@pytest.mark.bad_input
@pytest.mark.parametrize("mode", ["fp8_per_token_head", "int4_per_token_head"])
def test_fp8_query_with_per_token_head_cache_is_refused(ctx, mode):
    """A limit of these kernels (the reference supports it): named NotImplementedError, nothing written."""
    if not ctx.impl.is_ours:
        pytest.skip("a limit of paged_kernels.unified_attention")
    inputs = build(tables.composition_case("mixed"), ctx.device, ctx.seed)
    args, kwargs = list(inputs.call_args(inputs.fresh_out())), dict(inputs.call_kwargs())
    _fp8_query(args, torch.ones(1))
    if mode == "int4_per_token_head":
        _int4(args, kwargs, inputs)
    else:
        _quant(args, kwargs, inputs, torch.float8_e4m3fn, mode)
    args[KDESC] = args[VDESC] = None
    before = args[OUT].clone()
    with pytest.raises(NotImplementedError, match=r"^kv_quant_mode: fp8 queries with a per-token-head cache"):
        ctx.impl.func(*args, **kwargs)
    assert same_bits(args[OUT], before)
