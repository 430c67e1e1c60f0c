"""``paged_kernels.vllm_compat.unified_attention``: vLLM 0.33.0's signature over our kernels.

Its signature must equal vLLM's (the peer copy in ``../shared/peers/vllm``, skipped without it)
plus ``softmax_lse``. The serving-path tests build the call as vLLM's ``TritonAttentionImpl.forward``
does: the ``[num_blocks, num_kv_heads, block_size, 2 * head_size]`` cache (per-token-head: each
half padded with its float32 scale) transposed and split into strided k/v views, descales expanded
to ``[num_seqs, num_kv_heads]``, 16-segment scratch buffers with a row per token and
``seq_threshold_3D = 128 // num_kv_heads``; the reference takes the same tensors in our convention.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from attention_suite import (Implementation, as_values, build, judge, reference_outputs, same_bits, tables,
                             vllm_peer_absent, vllm_peer_module)
from attention_suite import device as suite_device

suite_device.ensure()
from paged_kernels import vllm_compat  # noqa: E402  (after the device set-up: it imports triton)
from paged_kernels.vllm_compat import KVQuantMode, unified_attention  # noqa: E402

COMPAT_SPEC = "paged_kernels.vllm_compat:unified_attention"
SEGMENTS = 16  # vLLM's NUM_PAR_SOFTMAX_SEGMENTS
MIN_LAUNCH_GRID_SIZE_2D = 128  # vLLM's seq_threshold_3D = MIN_LAUNCH_GRID_SIZE_2D // num_kv_heads
SCALE_PAD = 4  # one float32 scale in one-byte elements, after each K and V half of a per-token-head cache

# (case dtype, kv dtype, Case.kv_quant_mode, vLLM's mode): the cache kinds vLLM's backend serves here.
MODES = {
    "auto": ("bfloat16", None, None, KVQuantMode.NONE),
    "fp8_per_tensor": ("bfloat16", "float8_e4m3fn", None, KVQuantMode.FP8_PER_TENSOR),
    "int8_per_token_head": ("float16", "int8", "int8_per_token_head", KVQuantMode.INT8_PER_TOKEN_HEAD),
    "fp8_per_token_head": ("bfloat16", "float8_e4m3fn", "fp8_per_token_head", KVQuantMode.FP8_PER_TOKEN_HEAD),
    # Packed: head_size // 2 bytes per row, then the scale's 4 bytes.
    "int4_per_token_head": ("bfloat16", "int4", "int4_per_token_head", KVQuantMode.INT4_PER_TOKEN_HEAD),
}


def serving_case(mode: str, batch: str, **fields):
    dtype, kv_dtype, quant, _ = MODES[mode]
    # vLLM's decoder window is (sliding_window - 1, 0); the case states the same window our way.
    fields = {**dict(head_size=32, dtype=dtype, kv_dtype=kv_dtype, kv_quant_mode=quant, sinks=True,
                     window_size=(40, -1)), **fields}
    return tables.composition_case(batch, **fields).with_(label=f"vllm-{mode}-{batch}")


def _skip_unusable(case) -> None:
    for dtype in (case.dtype, case.kv_dtype):
        if not suite_device.dtype_usable(dtype):
            pytest.skip(f"{dtype} on the interpreter: {suite_device.interpreter_status()}")


def _packed_cache(inputs, quant: str | None):
    """Views of vLLM's cache tensor holding ``inputs``' K and V: (k, v, k scales, v scales).

    Per-token-head caches hold ``[K | K scale | V | V scale]`` per (block, head, slot), the scales as
    float32 bytes in the padding (vLLM's ``_ensure_scale_caches``); the others ``[K | V]``."""
    num_blocks, block_size, num_kv_heads, head_size = inputs.k.shape  # INT4: head_size // 2 bytes
    pad = SCALE_PAD if quant else 0
    half = head_size + pad
    one_byte = inputs.k.element_size() == 1
    # vLLM allocates one-byte caches as uint8 and views the halves as fp8.
    store = torch.uint8 if one_byte else inputs.k.dtype
    cache = torch.zeros(num_blocks, num_kv_heads, block_size, 2 * half, dtype=store, device=inputs.k.device)
    for offset, t in ((0, inputs.k), (half, inputs.v)):
        cache[..., offset:offset + head_size] = (t.view(torch.uint8) if one_byte else t).transpose(1, 2)
    k_scales = v_scales = None
    if quant:
        words = cache.view(torch.float32)  # the same bytes, four to a word
        words[..., head_size // 4] = inputs.k_scale_cache.transpose(1, 2)
        words[..., (half + head_size) // 4] = inputs.v_scale_cache.transpose(1, 2)
        k_scales = words[..., head_size // 4].transpose(1, 2)
        v_scales = words[..., (half + head_size) // 4].transpose(1, 2)
    k, v = cache.transpose(1, 2).split(half, dim=-1)
    if one_byte:
        k, v = k.view(inputs.k.dtype), v.view(inputs.k.dtype)
    return k, v, k_scales, v_scales


def scratch_buffers(rows: int, num_q_heads: int, head_size: int, device, fill=float("nan")) -> dict:
    """vLLM's split-KV scratch, poisoned (nothing may read an entry before writing it)."""
    pad = 1 << (head_size - 1).bit_length()
    return {"softmax_segm_output": torch.full((rows, num_q_heads, SEGMENTS, pad), fill, device=device),
            "softmax_segm_max": torch.full((rows, num_q_heads, SEGMENTS), fill, device=device),
            "softmax_segm_expsum": torch.full((rows, num_q_heads, SEGMENTS), fill, device=device)}


def vllm_call(inputs, mode: str, rows: int | None = None):
    """(keyword arguments as TritonAttentionImpl.forward passes them, the same tensors in our convention)."""
    case = inputs.case
    quant = case.kv_quant_mode
    k, v, k_scales, v_scales = _packed_cache(inputs, quant)
    num_seqs, num_kv_heads = len(case.seq_lens), case.num_kv_heads
    if quant:
        descales = (None, None)  # its per-token-head branch passes no descales
    else:
        # layer._k_scale / _v_scale: 1.0 for a 16-bit cache, the per-tensor scale for fp8.
        scales = (inputs.k_descale, inputs.v_descale) if inputs.k_descale is not None else (
            torch.ones((), device=k.device), torch.ones((), device=k.device))
        descales = tuple(s.reshape(()).expand(num_seqs, num_kv_heads) for s in scales)
    kwargs = dict(
        q=inputs.q, k=k, v=v, out=inputs.fresh_out(), cu_seqlens_q=inputs.cu_seqlens_q,
        max_seqlen_q=inputs.max_seqlen_q, seqused_k=inputs.seqused_k, max_seqlen_k=inputs.max_seqlen_k,
        softmax_scale=inputs.softmax_scale, causal=True, alibi_slopes=None, use_alibi_sqrt=False,
        window_size=(case.window_size[0], 0), block_table=inputs.block_table, softcap=case.softcap,
        q_descale=None, k_descale=descales[0], v_descale=descales[1],
        seq_threshold_3D=MIN_LAUNCH_GRID_SIZE_2D // num_kv_heads, num_par_softmax_segments=SEGMENTS,
        **scratch_buffers(inputs.q.shape[0] if rows is None else rows, case.num_q_heads, case.head_size,
                          inputs.q.device),
        sinks=inputs.sinks, output_scale=None, mm_prefix_range=None, rswa_prefix_lens=None, rswa_window=None,
        kv_quant_mode=MODES[mode][3], k_scale_cache=k_scales, v_scale_cache=v_scales, chunk_lookback=-1,
        use_td=False, mm_prefix_clamp_sliding_window=False,
    )
    width = inputs.k.shape[-1]  # a row's elements (INT4: bytes)
    ours = dataclasses.replace(inputs, k=k[..., :width], v=v[..., :width], k_scale_cache=k_scales,
                               v_scale_cache=v_scales)
    return kwargs, ours


def assert_matches_reference(ours, out, what: str) -> None:
    golden, baseline = reference_outputs(ours)
    verdict = judge(as_values(out[:ours.num_tokens_used], ours.output_scale), golden, baseline, out.dtype)
    assert verdict.passed, f"{what}: {verdict.message()}"


@pytest.fixture(scope="module")
def vllm_function():
    peer = vllm_peer_module("vllm.v1.attention.ops.triton_unified_attention")
    if peer is None:
        pytest.skip(vllm_peer_absent())
    return peer.unified_attention


def _parameter_list(func) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]


@pytest.mark.harness
@pytest.mark.quick
def test_signature_is_vllms_plus_softmax_lse(vllm_function):
    ours = _parameter_list(unified_attention)
    assert ours[:-1] == _parameter_list(vllm_function)  # IntEnum defaults compare by value
    assert ours[-1] == ("softmax_lse", inspect.Parameter.KEYWORD_ONLY, None)
    assert Implementation.load(COMPAT_SPEC).style == "vllm"  # the suite's vLLM dialect drives it


@pytest.mark.numerics
@pytest.mark.parametrize("batch", ["mixed", "decode"])
@pytest.mark.parametrize("mode", list(MODES))
def test_serving_path_replay(device, mode, batch):
    case = serving_case(mode, batch)
    _skip_unusable(case)
    kwargs, ours = vllm_call(build(case, device, 0), mode)
    assert unified_attention(**kwargs) is None  # vLLM's returns nothing either
    assert_matches_reference(ours, kwargs["out"], case.name)


@pytest.mark.harness
@pytest.mark.quick
def test_decode_splits_over_callers_buffers(device, monkeypatch):
    """A decode batch the planner splits runs in the caller's buffers: they get written, the call
    constructs no workspace of its own, and the shared merge counters are back at zero."""
    import paged_kernels.api

    case = serving_case("auto", "decode", dtype="float16")
    kwargs, ours = vllm_call(build(case, device, 0), "auto")
    assert paged_kernels.api.make_plan(ours.q, ours.k, ours.cu_seqlens_q, 1, ours.max_seqlen_k).path == "3d"

    def no_allocation(*args, **kwargs):
        raise AssertionError("the call allocated a workspace of its own")

    monkeypatch.setattr(paged_kernels.api, "Workspace", no_allocation)
    unified_attention(**kwargs)
    assert not torch.isnan(kwargs["softmax_segm_max"]).all(), "the split path never wrote the buffers"
    assert vllm_compat._COUNTERS and all(not c.any() for c in vllm_compat._COUNTERS.values()), \
        "no merge counters, or one left non-zero"
    assert_matches_reference(ours, kwargs["out"], case.name)


@pytest.mark.harness
@pytest.mark.quick
@pytest.mark.parametrize("why", ["too-few-rows", "no-threshold", "threshold-0"])
def test_2d_without_usable_buffers(device, why):
    """Buffers with fewer rows than query tokens, or no threshold, give the 2D path: right answer,
    buffers untouched (never a partial overrun)."""
    case = serving_case("auto", "decode", dtype="float16")
    inputs = build(case, device, 0)
    kwargs, ours = vllm_call(inputs, "auto", rows=inputs.q.shape[0] - 1 if why == "too-few-rows" else None)
    kwargs["seq_threshold_3D"] = {"too-few-rows": kwargs["seq_threshold_3D"], "no-threshold": None,
                                  "threshold-0": 0}[why]
    unified_attention(**kwargs)
    for name in ("softmax_segm_output", "softmax_segm_max", "softmax_segm_expsum"):
        assert torch.isnan(kwargs[name]).all(), f"{why}: {name} was written"
    assert_matches_reference(ours, kwargs["out"], f"{case.name} {why}")


@pytest.mark.harness
@pytest.mark.quick
@pytest.mark.parametrize("mode", [KVQuantMode.NVFP4, 5, KVQuantMode.TURBOQUANT],
                         ids=["nvfp4", "plain-int-5", "turboquant"])
def test_unsupported_quant_mode_names_kv_quant_mode(device, mode):
    kwargs, _ = vllm_call(build(serving_case("auto", "decode", dtype="float16"), device, 0), "auto")
    out_before = kwargs["out"].clone()
    with pytest.raises(NotImplementedError, match="^kv_quant_mode: "):
        unified_attention(**{**kwargs, "kv_quant_mode": mode})
    assert same_bits(kwargs["out"], out_before)


@pytest.mark.harness
@pytest.mark.quick
@pytest.mark.parametrize("change", ["use_td", "no-descales", "other-descales"])
def test_no_effect_arguments_are_bit_identical(device, change):
    """use_td is a load strategy; descales of a 16-bit cache are ignored (vLLM's backend passes them)."""
    kwargs, _ = vllm_call(build(serving_case("auto", "decode", dtype="float16"), device, 0), "auto")
    num_seqs, num_kv_heads = kwargs["k_descale"].shape
    varied = {"use_td": {"use_td": True}, "no-descales": {"k_descale": None, "v_descale": None},
              "other-descales": {name: torch.full((num_seqs, num_kv_heads), 3.0, device=device)
                                 for name in ("k_descale", "v_descale")}}[change]
    outs = []
    for extra in ({}, varied):
        call = {**kwargs, **extra, "out": kwargs["out"].clone()}
        unified_attention(**call)
        outs.append(call["out"])
    assert same_bits(*outs), f"{change} changed the output"


@pytest.mark.harness
@pytest.mark.quick
def test_mapping_onto_ours(monkeypatch):
    """What reaches ``paged_kernels.unified_attention``: vLLM's readings of its arguments, every
    set feature by name, nothing vLLM ignores; a set feature ours lacks raises naming it."""
    calls = []
    monkeypatch.setattr(vllm_compat, "_unified_attention", lambda *args, **kwargs: calls.append((args, kwargs)))
    # As if ours took every feature already (the last part takes one away).
    features = {"qq_bias", "rswa_prefix_lens", "rswa_window", "use_alibi_sqrt", "softmax_lse"}
    monkeypatch.setattr(vllm_compat, "_OUR_PARAMETERS", vllm_compat._OUR_PARAMETERS | features)
    monkeypatch.delenv("VLLM_BATCH_INVARIANT", raising=False)
    q = torch.zeros(3, 4, 32, dtype=torch.float16)
    k = torch.zeros(2, 16, 2, 32 + SCALE_PAD, dtype=torch.int8)
    lens = torch.ones(2, dtype=torch.int32)
    base = dict(q=q, k=k, v=k, out=q, cu_seqlens_q=lens, max_seqlen_q=1, seqused_k=lens, max_seqlen_k=1,
                softmax_scale=0.1, causal=False, window_size=(7, 0), block_table=lens[:, None], softcap=0.0,
                q_descale=torch.ones(()), k_descale=torch.ones(()), v_descale=torch.ones(()))
    lse = torch.zeros(3, 4)
    unified_attention(**base, kv_quant_mode=KVQuantMode.INT8_PER_TOKEN_HEAD, use_td=True, rswa_window=9,
                      chunk_lookback=1, softmax_lse=lse)
    args, kwargs = calls.pop()
    assert args[1].shape[-1] == 32 and args[1].data_ptr() == k.data_ptr(), "k: the first head_size entries, a view"
    assert args[10] == (7, 7), "a non-causal window is window_size[0] on both sides"
    assert args[13:16] == (None, None, None), "descales of a per-token-head cache / 16-bit queries are ignored"
    assert kwargs.pop("softmax_lse") is lse and kwargs.pop("chunk_lookback") == 1
    assert kwargs == {"kv_quant_mode": KVQuantMode.INT8_PER_TOKEN_HEAD, "workspace": None, "split_kv": False}

    packed = torch.zeros(2, 16, 2, 32 // 2 + SCALE_PAD, dtype=torch.uint8)
    unified_attention(**{**base, "k": packed, "v": packed}, kv_quant_mode=KVQuantMode.INT4_PER_TOKEN_HEAD)
    args, kwargs = calls.pop()
    assert args[1].shape[-1] == 16 and args[1].data_ptr() == packed.data_ptr(), "INT4: the first head_size // 2 bytes"
    assert kwargs["kv_quant_mode"] == KVQuantMode.INT4_PER_TOKEN_HEAD

    unified_attention(**{**base, "window_size": (-1, -1)}, chunk_lookback=1)
    assert "chunk_lookback" not in calls.pop()[1], "vLLM turns chunking off without a window"

    monkeypatch.setattr(vllm_compat, "_OUR_PARAMETERS", vllm_compat._OUR_PARAMETERS - {"qq_bias"})
    with pytest.raises(NotImplementedError, match="^qq_bias: "):
        unified_attention(**base, qq_bias=torch.zeros(1, 1))
    assert not calls


@pytest.mark.harness
@pytest.mark.quick
def test_segment_buffers_checked_by_name(device):
    kwargs, _ = vllm_call(build(serving_case("auto", "decode", dtype="float16"), device, 0), "auto")
    bad = {"softmax_segm_max": kwargs["softmax_segm_max"].double(),
           "softmax_segm_expsum": kwargs["softmax_segm_expsum"][:, :, :8],
           "softmax_segm_output": kwargs["softmax_segm_output"].transpose(0, 1).contiguous().transpose(0, 1)}
    for name, tensor in bad.items():
        with pytest.raises(ValueError, match=f"^{name}: "):
            unified_attention(**{**kwargs, name: tensor})
    with pytest.raises(ValueError, match="^num_par_softmax_segments: "):
        unified_attention(**{**kwargs, "num_par_softmax_segments": SEGMENTS * 2})


CAPACITY_LEN = 1200


@pytest.mark.graph
def test_decode_graph_replay(device, seed):
    """One decode call with vLLM's scratch buffers, captured once, replayed on new lengths and block tables."""
    if device != "cuda":
        pytest.skip("CUDA-graph capture needs a CUDA GPU")
    num_seqs = 4
    case = serving_case("auto", "decode", seq_lens=(CAPACITY_LEN,) * num_seqs, query_lens=(1,) * num_seqs)
    kwargs, static = vllm_call(build(case, device, seed), "auto")
    unified_attention(**kwargs)  # compiles, and makes the merge counters outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        unified_attention(**kwargs)
    generator = torch.Generator().manual_seed(seed)
    for replay in range(3):
        lens = tuple(int(x) for x in torch.randint(1, CAPACITY_LEN + 1, (num_seqs,), generator=generator))
        fresh = build(case.with_(label=f"{case.label}-replay{replay}", seq_lens=lens), device, seed + replay)
        # New lengths, tables and cache contents go into the captured tensors.
        kwargs["q"].copy_(fresh.q)
        kwargs["sinks"].copy_(fresh.sinks)  # drawn from the replay's seed too
        kwargs["seqused_k"].copy_(fresh.seqused_k)
        kwargs["block_table"].zero_()
        kwargs["block_table"][:, : fresh.block_table.shape[1]].copy_(fresh.block_table)
        kwargs["k"][: fresh.k.shape[0]].copy_(fresh.k)
        kwargs["v"][: fresh.v.shape[0]].copy_(fresh.v)
        kwargs["out"].fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert_matches_reference(fresh, kwargs["out"], f"replay {replay} with lengths {lens}")
