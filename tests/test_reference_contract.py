"""The reference's contract: what it refuses, and its newer features against independent math.

Self-contained on purpose (imports only torch, pytest, math and ``reference``): batches are built
here by hand and the expected results come from a dense per-sequence float64 computation whose
visibility rule is written out pair by pair, not from ``reference.visibility``.
"""

import math

import pytest
import torch

import reference

POSITIONAL = ("q", "k", "v", "out", "cu_seqlens_q", "max_seqlen_q", "seqused_k", "max_seqlen_k", "softmax_scale",
              "causal", "window_size", "block_table", "softcap", "q_descale", "k_descale", "v_descale")
FUNCTIONS = {"single": reference.unified_attention, "split": reference.split_kv_attention}


def call(fn, args: dict, **kwargs):
    positional = [args[name] for name in POSITIONAL]
    keywords = {name: value for name, value in args.items() if name not in POSITIONAL}
    return fn(*positional, **keywords, **kwargs)


def make_batch(seq_lens=(5, 9), q_lens=(2, 3), num_q_heads=4, num_kv_heads=2, head_size=16, block_size=4,
               dtype=torch.float32, seed=0, extra_cols=1, spare_blocks=2) -> dict:
    """A small paged batch as a dict of keyword arguments: shuffled block table, spare blocks."""
    gen = torch.Generator().manual_seed(seed)
    need = [-(-n // block_size) for n in seq_lens]
    width = max(need + [0]) + extra_cols
    num_blocks = sum(need) + spare_blocks
    order = torch.randperm(num_blocks, generator=gen).tolist()
    table = torch.full((len(seq_lens), width), order[-1], dtype=torch.int32)  # unused columns: a spare block
    start = 0
    for seq, n in enumerate(need):
        table[seq, :n] = torch.tensor(order[start:start + n], dtype=torch.int32)
        start += n
    shape = (num_blocks, block_size, num_kv_heads, head_size)
    num_tokens = sum(q_lens)
    cu = [0]
    for n in q_lens:
        cu.append(cu[-1] + n)
    return {
        "q": torch.randn(num_tokens, num_q_heads, head_size, generator=gen).to(dtype),
        "k": torch.randn(shape, generator=gen).to(dtype),
        "v": torch.randn(shape, generator=gen).to(dtype),
        "out": torch.full((num_tokens, num_q_heads, head_size), float("nan"), dtype=dtype),
        "cu_seqlens_q": torch.tensor(cu, dtype=torch.int32),
        "max_seqlen_q": max(q_lens + (0,)),
        "seqused_k": torch.tensor(seq_lens, dtype=torch.int32),
        "max_seqlen_k": max(seq_lens + (0,)),
        "softmax_scale": head_size ** -0.5,
        "causal": True,
        "window_size": (-1, -1),
        "block_table": table,
        "softcap": 0.0,
        "q_descale": None,
        "k_descale": None,
        "v_descale": None,
    }


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


E4M3 = torch.float8_e4m3fn


def quantized(a: dict, mode: str, *, q_fp8=False, per_seq_descale=False, seed=1) -> dict:
    """The batch with a quantized cache (and optionally fp8 queries): random stored values and scales.

    Stored values are drawn directly (not quantized from a float cache): the reference's meaning of a
    quantized cache is "stored value times its scale", whatever produced it.
    """
    gen = torch.Generator().manual_seed(seed)
    b = dict(a)
    num_blocks, block_size, num_kv_heads, _ = a["k"].shape
    num_seqs = a["seqused_k"].shape[0]
    b["kv_quant_mode"] = mode
    if mode == "fp8_per_tensor":
        b["k"], b["v"] = a["k"].to(E4M3), a["v"].to(E4M3)
        if per_seq_descale:  # deliberately different per (sequence, KV head)
            b["k_descale"] = 0.25 + 1.5 * torch.rand(num_seqs, num_kv_heads, generator=gen)
            b["v_descale"] = 0.25 + 1.5 * torch.rand(num_seqs, num_kv_heads, generator=gen)
        else:
            b["k_descale"], b["v_descale"] = torch.tensor([0.8]), torch.tensor([1.25])
    elif mode == "int8_per_token_head":
        b["k"] = torch.randint(-127, 128, a["k"].shape, generator=gen, dtype=torch.int8)
        b["v"] = torch.randint(-127, 128, a["v"].shape, generator=gen, dtype=torch.int8)
        b["k_scale_cache"] = 0.002 + 0.02 * torch.rand(num_blocks, block_size, num_kv_heads, generator=gen)
        b["v_scale_cache"] = 0.002 + 0.02 * torch.rand(num_blocks, block_size, num_kv_heads, generator=gen)
    elif mode == "fp8_per_token_head":
        b["k"], b["v"] = a["k"].to(E4M3), a["v"].to(E4M3)
        b["k_scale_cache"] = 0.25 + 1.5 * torch.rand(num_blocks, block_size, num_kv_heads, generator=gen)
        b["v_scale_cache"] = 0.25 + 1.5 * torch.rand(num_blocks, block_size, num_kv_heads, generator=gen)
    elif mode == "int4_per_token_head":  # random bytes; random scales with a random zero point in their low bits
        packed_shape = (*a["k"].shape[:3], a["k"].shape[3] // 2)
        b["k"] = torch.randint(0, 256, packed_shape, generator=gen, dtype=torch.uint8)
        b["v"] = torch.randint(0, 256, packed_shape, generator=gen, dtype=torch.uint8)
        for name in ("k_scale_cache", "v_scale_cache"):
            scale = 0.05 + 0.25 * torch.rand(num_blocks, block_size, num_kv_heads, generator=gen)
            zero = torch.randint(0, 16, scale.shape, generator=gen, dtype=torch.int32)
            b[name] = ((scale.view(torch.int32) & ~15) | zero).view(torch.float32)
    if q_fp8:
        b["q"], b["q_descale"] = (a["q"] * 2).to(E4M3), torch.tensor([0.6])
    return b


# vLLM's KVQuantMode, rebuilt here without importing vLLM. (This file imports only torch, pytest, math and
# reference by rule, so IntEnum is reached through the module of the reference that uses it.)
KVQuantMode = reference.checks.enum.IntEnum(
    "KVQuantMode", [("NONE", 0), ("FP8_PER_TENSOR", 1), ("INT8_PER_TOKEN_HEAD", 2), ("FP8_PER_TOKEN_HEAD", 3),
                    ("INT4_PER_TOKEN_HEAD", 4)])
WrongKVQuantMode = reference.checks.enum.IntEnum("WrongKVQuantMode", [("INT8_PER_TOKEN_HEAD", 1),
                                                                     ("INT4_PER_TOKEN_HEAD", 5)])


# ---------------------------------------------------------------------------------------------
# A. The reference refuses bad calls before writing anything


def _set(**changes):
    return lambda a: {**a, **changes}


def _edit(name, edit):
    """Change a copy of one tensor argument in place (the original batch stays intact)."""
    def apply(a):
        t = a[name].clone()
        edit(t, a)
        return {**a, name: t}
    return apply


def _fp8_cache(**changes):
    def apply(a):
        b = {**a, "k": a["k"].to(torch.float8_e4m3fn), "v": a["v"].to(torch.float8_e4m3fn),
             "k_descale": torch.tensor([0.5]), "v_descale": torch.tensor([0.25])}
        return {**b, **changes}
    return apply


def _fp8_out(**changes):
    return lambda a: {**a, "out": a["out"].to(torch.float8_e4m3fn), **changes}


BAD = [
    # (id, change to a valid batch, exception, argument named first in the message)
    ("q-not-tensor", lambda a: {**a, "q": a["q"].tolist()}, TypeError, "q"),
    ("q-rank-2", lambda a: {**a, "q": a["q"][:, 0]}, ValueError, "q"),
    ("q-int-dtype", lambda a: {**a, "q": a["q"].to(torch.int32)}, TypeError, "q"),
    ("k-rank-3", lambda a: {**a, "k": a["k"][0]}, ValueError, "k"),
    ("k-other-float-dtype", lambda a: {**a, "k": a["k"].half(), "v": a["v"].half()}, TypeError, "k"),
    ("k-head-size", lambda a: {**a, "k": a["k"][..., :8], "v": a["v"][..., :8]}, ValueError, "k"),
    ("k-heads-not-dividing", lambda a: {**a, "k": torch.zeros(*a["k"].shape[:2], 3, 16),
                                        "v": torch.zeros(*a["k"].shape[:2], 3, 16)}, ValueError, "k"),
    ("k-other-device", lambda a: {**a, "k": a["k"].to("meta")}, ValueError, "k"),
    ("v-dtype-differs", lambda a: {**a, "v": a["v"].to(torch.float8_e4m3fn)}, TypeError, "v"),
    ("v-shape-differs", lambda a: {**a, "v": a["v"][:-1]}, ValueError, "v"),
    ("out-shape", lambda a: {**a, "out": a["out"][:-1]}, ValueError, "out"),
    ("out-half-for-float-q", lambda a: {**a, "out": a["out"].half()}, TypeError, "out"),
    ("out-int", lambda a: {**a, "out": torch.zeros(a["out"].shape, dtype=torch.int32)}, TypeError, "out"),
    ("cu-int64", lambda a: {**a, "cu_seqlens_q": a["cu_seqlens_q"].long()}, TypeError, "cu_seqlens_q"),
    ("cu-list", lambda a: {**a, "cu_seqlens_q": a["cu_seqlens_q"].tolist()}, TypeError, "cu_seqlens_q"),
    ("cu-rank-2", lambda a: {**a, "cu_seqlens_q": a["cu_seqlens_q"][None]}, ValueError, "cu_seqlens_q"),
    ("cu-empty", lambda a: {**a, "cu_seqlens_q": a["cu_seqlens_q"][:0]}, ValueError, "cu_seqlens_q"),
    ("cu-one-entry-too-many", lambda a: {**a, "cu_seqlens_q": torch.cat([a["cu_seqlens_q"], a["cu_seqlens_q"][-1:]])},
     ValueError, "cu_seqlens_q"),
    ("seqused-int64", lambda a: {**a, "seqused_k": a["seqused_k"].long()}, TypeError, "seqused_k"),
    ("seqused-length", lambda a: {**a, "seqused_k": a["seqused_k"][:1]}, ValueError, "seqused_k"),
    ("table-int64", lambda a: {**a, "block_table": a["block_table"].long()}, TypeError, "block_table"),
    ("table-rank-1", lambda a: {**a, "block_table": a["block_table"][0]}, ValueError, "block_table"),
    ("table-rows", lambda a: {**a, "block_table": a["block_table"][:1]}, ValueError, "block_table"),
    ("max-q-float", _set(max_seqlen_q=3.0), TypeError, "max_seqlen_q"),
    ("max-q-bool", _set(max_seqlen_q=True), TypeError, "max_seqlen_q"),
    ("max-q-negative", _set(max_seqlen_q=-1), ValueError, "max_seqlen_q"),
    ("max-k-tensor", lambda a: {**a, "max_seqlen_k": torch.tensor(9)}, TypeError, "max_seqlen_k"),
    ("scale-nan", _set(softmax_scale=float("nan")), ValueError, "softmax_scale"),
    ("scale-inf", _set(softmax_scale=float("inf")), ValueError, "softmax_scale"),
    ("scale-str", _set(softmax_scale="0.25"), TypeError, "softmax_scale"),
    ("causal-int", _set(causal=1), TypeError, "causal"),
    ("window-int", _set(window_size=4), TypeError, "window_size"),
    ("window-length-3", _set(window_size=(4, 0, 0)), ValueError, "window_size"),
    ("window-below-minus-1", _set(window_size=(-2, 0)), ValueError, "window_size"),
    ("window-float", _set(window_size=(1.5, 0)), TypeError, "window_size"),
    ("softcap-nan", _set(softcap=float("nan")), ValueError, "softcap"),
    ("softcap-inf", _set(softcap=float("inf")), ValueError, "softcap"),
    ("softcap-negative", _set(softcap=-1.0), ValueError, "softcap"),
    ("softcap-str", _set(softcap="2"), TypeError, "softcap"),
    ("k-descale-without-fp8", _set(k_descale=torch.tensor([1.0])), ValueError, "k_descale"),
    ("fp8-cache-no-k-descale", _fp8_cache(k_descale=None), ValueError, "k_descale"),
    ("fp8-cache-no-v-descale", _fp8_cache(v_descale=None), ValueError, "v_descale"),
    ("fp8-cache-descale-float64", _fp8_cache(k_descale=torch.tensor([0.5], dtype=torch.float64)), TypeError,
     "k_descale"),
    ("fp8-cache-descale-3-elements", _fp8_cache(v_descale=torch.ones(3)), ValueError, "v_descale"),
    ("fp8-cache-descale-nan", _fp8_cache(k_descale=torch.tensor([float("nan")])), ValueError, "k_descale"),
    ("fp8-out-no-scale", _fp8_out(), ValueError, "output_scale"),
    ("fp8-out-zero-scale", _fp8_out(output_scale=torch.tensor([0.0])), ValueError, "output_scale"),
    ("alibi-length", lambda a: {**a, "alibi_slopes": torch.ones(3)}, ValueError, "alibi_slopes"),
    ("alibi-int", lambda a: {**a, "alibi_slopes": torch.ones(4, dtype=torch.int32)}, TypeError, "alibi_slopes"),
    ("sinks-rank-2", lambda a: {**a, "sinks": torch.ones(4, 1)}, ValueError, "sinks"),
    # metadata values
    ("cu-not-from-0", _edit("cu_seqlens_q", lambda t, a: t.__setitem__(0, 1)), ValueError, "cu_seqlens_q"),
    ("cu-decreasing", _edit("cu_seqlens_q", lambda t, a: t.__setitem__(1, 6)), ValueError, "cu_seqlens_q"),
    ("cu-past-tokens", _edit("cu_seqlens_q", lambda t, a: t.__setitem__(2, 6)), ValueError, "cu_seqlens_q"),
    ("max-q-below-longest", _set(max_seqlen_q=2), ValueError, "max_seqlen_q"),
    ("seqused-negative", _edit("seqused_k", lambda t, a: t.__setitem__(0, -1)), ValueError, "seqused_k"),
    ("seqused-below-q-len", _edit("seqused_k", lambda t, a: t.__setitem__(1, 2)), ValueError, "seqused_k"),
    ("seqused-past-capacity", lambda a: {**_edit("seqused_k", lambda t, b: t.__setitem__(1, 4 * 4 + 1))(a),
                                         "max_seqlen_k": 100}, ValueError, "seqused_k"),
    ("max-k-below-keys", _set(max_seqlen_k=8), ValueError, "max_seqlen_k"),
    ("block-id-minus-1", _edit("block_table", lambda t, a: t.__setitem__((1, 0), -1)), ValueError, "block_table"),
    ("block-id-num-blocks", _edit("block_table", lambda t, a: t.__setitem__((1, 2), a["k"].shape[0])), ValueError,
     "block_table"),
    ("precision", lambda a: {**a, "precision": "float32"}, ValueError, "precision"),
    # fp8 queries
    ("q-fp8-no-descale", lambda a: {**quantized(a, "fp8_per_tensor", q_fp8=True), "q_descale": None}, ValueError,
     "q_descale"),
    ("q-descale-float64", lambda a: {**quantized(a, "fp8_per_tensor", q_fp8=True),
                                     "q_descale": torch.tensor([0.5], dtype=torch.float64)}, TypeError, "q_descale"),
    ("q-descale-2-elements", lambda a: {**quantized(a, "fp8_per_tensor", q_fp8=True), "q_descale": torch.ones(2)},
     ValueError, "q_descale"),
    ("q-descale-for-float-q", _set(q_descale=torch.tensor([1.0])), ValueError, "q_descale"),
    ("q-e5m2", lambda a: {**quantized(a, "fp8_per_tensor", q_fp8=True), "q": a["q"].to(torch.float8_e5m2)},
     TypeError, "q"),
    ("q-fp8-unquantized-cache", lambda a: {**a, "q": a["q"].to(E4M3), "q_descale": torch.tensor([1.0])},
     ValueError, "kv_quant_mode"),
    # KV quantization modes and scales
    ("mode-unknown-str", _set(kv_quant_mode="int4"), ValueError, "kv_quant_mode"),
    ("mode-plain-int", _set(kv_quant_mode=0), TypeError, "kv_quant_mode"),
    ("mode-enum-wrong-value", lambda a: {**quantized(a, "int8_per_token_head"),
                                         "kv_quant_mode": WrongKVQuantMode.INT8_PER_TOKEN_HEAD}, ValueError,
     "kv_quant_mode"),
    ("mode-none-fp8-cache", lambda a: {**quantized(a, "fp8_per_tensor"), "kv_quant_mode": "none",
                                       "k_descale": None, "v_descale": None}, TypeError, "k"),
    ("mode-int8-float-cache", lambda a: {**quantized(a, "int8_per_token_head"), "k": a["k"], "v": a["v"]},
     TypeError, "k"),
    ("mode-fp8-pth-int8-cache", lambda a: {**quantized(a, "int8_per_token_head"),
                                           "kv_quant_mode": "fp8_per_token_head"}, TypeError, "k"),
    ("int8-no-k-scale-cache", lambda a: {**quantized(a, "int8_per_token_head"), "k_scale_cache": None}, ValueError,
     "k_scale_cache"),
    ("int8-no-v-scale-cache", lambda a: {**quantized(a, "int8_per_token_head"), "v_scale_cache": None}, ValueError,
     "v_scale_cache"),
    ("scale-cache-float16", lambda a: {**quantized(a, "fp8_per_token_head"),
                                       "k_scale_cache": quantized(a, "fp8_per_token_head")["k_scale_cache"].half()},
     TypeError, "k_scale_cache"),
    ("scale-cache-shape", lambda a: {**quantized(a, "int8_per_token_head"),
                                     "v_scale_cache": quantized(a, "int8_per_token_head")["v_scale_cache"][:, :-1]},
     ValueError, "v_scale_cache"),
    ("scale-cache-not-tensor", lambda a: {**quantized(a, "int8_per_token_head"), "k_scale_cache": 0.01}, TypeError,
     "k_scale_cache"),
    ("scale-cache-without-mode", lambda a: {**quantized(a, "fp8_per_tensor"),
                                            "k_scale_cache": torch.ones(a["k"].shape[:3])}, ValueError,
     "k_scale_cache"),
    # INT4: a uint8 cache of head_size // 2 bytes per row, for an even head size
    ("int4-int8-cache", lambda a: {**quantized(a, "int4_per_token_head"),
                                   "k": quantized(a, "int4_per_token_head")["k"].to(torch.int8),
                                   "v": quantized(a, "int4_per_token_head")["v"].to(torch.int8)}, TypeError, "k"),
    ("int4-unpacked-width", lambda a: {**quantized(a, "int4_per_token_head"),
                                       "k": torch.zeros(a["k"].shape, dtype=torch.uint8),
                                       "v": torch.zeros(a["v"].shape, dtype=torch.uint8)}, ValueError, "k"),
    ("int4-odd-head-size", lambda a: {**quantized(a, "int4_per_token_head"), "q": a["q"][..., :15],
                                      "out": a["out"][..., :15]}, ValueError, "q"),
    ("int4-v-narrower", lambda a: {**quantized(a, "int4_per_token_head"),
                                   "v": quantized(a, "int4_per_token_head")["v"][..., :-1]}, ValueError, "v"),
    ("int4-no-v-scale-cache", lambda a: {**quantized(a, "int4_per_token_head"), "v_scale_cache": None},
     ValueError, "v_scale_cache"),
    ("int4-scale-cache-int32", lambda a: {**quantized(a, "int4_per_token_head"),
                                          "k_scale_cache": torch.zeros(a["k"].shape[:3], dtype=torch.int32)},
     TypeError, "k_scale_cache"),
    ("int4-enum-wrong-value", lambda a: {**quantized(a, "int4_per_token_head"),
                                         "kv_quant_mode": WrongKVQuantMode.INT4_PER_TOKEN_HEAD}, ValueError,
     "kv_quant_mode"),
    ("descale-with-per-token-head", lambda a: {**quantized(a, "int8_per_token_head"),
                                               "k_descale": torch.tensor([1.0])}, ValueError, "k_descale"),
    ("descale-wrong-2d-shape", lambda a: {**quantized(a, "fp8_per_tensor"), "k_descale": torch.ones(2, 3)},
     ValueError, "k_descale"),
    ("descale-2d-with-zero", lambda a: {**quantized(a, "fp8_per_tensor"),
                                        "v_descale": torch.tensor([[1.0, 1.0], [0.0, 1.0]])}, ValueError, "v_descale"),
    # chunked attention
    ("chunk-float", _set(chunk_lookback=1.0, window_size=(7, -1)), TypeError, "chunk_lookback"),
    ("chunk-below-minus-1", _set(chunk_lookback=-2, window_size=(7, -1)), ValueError, "chunk_lookback"),
    ("chunk-no-window", _set(chunk_lookback=1), ValueError, "chunk_lookback"),
    ("chunk-window-none", _set(chunk_lookback=0, window_size=None), ValueError, "chunk_lookback"),
    ("chunk-non-causal", _set(chunk_lookback=1, window_size=(7, -1), causal=False), ValueError, "chunk_lookback"),
    ("chunk-size-0", _set(chunk_lookback=1, window_size=(0, -1)), ValueError, "chunk_lookback"),
    # bidirectional prefix ranges
    ("ranges-int64", _set(mm_prefix_range=torch.zeros(2, 1, 2, dtype=torch.int64)), TypeError, "mm_prefix_range"),
    ("ranges-list", _set(mm_prefix_range=[[[0, 2]], [[0, 2]]]), TypeError, "mm_prefix_range"),
    ("ranges-rank-2", _set(mm_prefix_range=torch.zeros(2, 2, dtype=torch.int32)), ValueError, "mm_prefix_range"),
    ("ranges-num-seqs", _set(mm_prefix_range=torch.zeros(3, 1, 2, dtype=torch.int32)), ValueError,
     "mm_prefix_range"),
    ("ranges-last-dim-3", _set(mm_prefix_range=torch.zeros(2, 1, 3, dtype=torch.int32)), ValueError,
     "mm_prefix_range"),
    ("ranges-negative-start", _set(mm_prefix_range=torch.tensor([[[0, 0]], [[-1, 3]]], dtype=torch.int32)),
     ValueError, "mm_prefix_range"),
    ("clamp-int", _set(mm_prefix_clamp_sliding_window=1), TypeError, "mm_prefix_clamp_sliding_window"),
    ("num-segments-0", lambda a: {**a, "num_segments": 0}, ValueError, "num_segments"),
    # qq_bias (max_seqlen_q is 3 in the batch)
    ("qq-bias-list", _set(qq_bias=[[0.0] * 3] * 3), TypeError, "qq_bias"),
    ("qq-bias-rank-1", _set(qq_bias=torch.zeros(3)), ValueError, "qq_bias"),
    ("qq-bias-rank-3", _set(qq_bias=torch.zeros(1, 3, 3)), ValueError, "qq_bias"),
    ("qq-bias-int", _set(qq_bias=torch.zeros(3, 3, dtype=torch.int32)), TypeError, "qq_bias"),
    ("qq-bias-float64", _set(qq_bias=torch.zeros(3, 3, dtype=torch.float64)), TypeError, "qq_bias"),
    ("qq-bias-other-device", _set(qq_bias=torch.zeros(3, 3, device="meta")), ValueError, "qq_bias"),
    ("qq-bias-rows-below-max-q", _set(qq_bias=torch.zeros(2, 8)), ValueError, "qq_bias"),
    # R-SWA
    ("rswa-lens-alone", _set(rswa_prefix_lens=torch.zeros(2, dtype=torch.int32)), ValueError, "rswa_window"),
    ("rswa-window-alone", _set(rswa_window=2), ValueError, "rswa_prefix_lens"),
    ("rswa-lens-int64", _set(rswa_prefix_lens=torch.zeros(2, dtype=torch.int64), rswa_window=2), TypeError,
     "rswa_prefix_lens"),
    ("rswa-lens-list", _set(rswa_prefix_lens=[0, 0], rswa_window=2), TypeError, "rswa_prefix_lens"),
    ("rswa-lens-length", _set(rswa_prefix_lens=torch.zeros(3, dtype=torch.int32), rswa_window=2), ValueError,
     "rswa_prefix_lens"),
    ("rswa-lens-rank-2", _set(rswa_prefix_lens=torch.zeros(2, 1, dtype=torch.int32), rswa_window=2), ValueError,
     "rswa_prefix_lens"),
    ("rswa-window-0", _set(rswa_prefix_lens=torch.zeros(2, dtype=torch.int32), rswa_window=0), ValueError,
     "rswa_window"),
    ("rswa-window-float", _set(rswa_prefix_lens=torch.zeros(2, dtype=torch.int32), rswa_window=2.0), TypeError,
     "rswa_window"),
    ("rswa-window-bool", _set(rswa_prefix_lens=torch.zeros(2, dtype=torch.int32), rswa_window=True), TypeError,
     "rswa_window"),
    ("rswa-with-left-window", _set(rswa_prefix_lens=torch.zeros(2, dtype=torch.int32), rswa_window=2,
                                   window_size=(3, -1)), ValueError, "rswa_window"),
    ("rswa-with-chunked", _set(rswa_prefix_lens=torch.zeros(2, dtype=torch.int32), rswa_window=2,
                               window_size=(7, -1), chunk_lookback=1), ValueError, "rswa_window"),
    # ALiBi-sqrt
    ("alibi-sqrt-without-slopes", _set(use_alibi_sqrt=True), ValueError, "use_alibi_sqrt"),
    ("alibi-sqrt-int", _set(use_alibi_sqrt=1, alibi_slopes=torch.ones(4)), TypeError, "use_alibi_sqrt"),
    # per-sequence causal
    ("causal-float", _set(causal=1.0), TypeError, "causal"),
    ("causal-tensor-int64", _set(causal=torch.ones(2, dtype=torch.int64)), TypeError, "causal"),
    ("causal-tensor-bool", _set(causal=torch.ones(2, dtype=torch.bool)), TypeError, "causal"),
    ("causal-tensor-length", _set(causal=torch.ones(3, dtype=torch.int32)), ValueError, "causal"),
    ("causal-tensor-rank-0", _set(causal=torch.tensor(1, dtype=torch.int32)), ValueError, "causal"),
    ("causal-tensor-other-device", _set(causal=torch.ones(2, dtype=torch.int32, device="meta")), ValueError,
     "causal"),
    ("causal-tensor-right-window", _set(causal=torch.ones(2, dtype=torch.int32), window_size=(2, 0)), ValueError,
     "window_size"),
    ("causal-tensor-chunked", _set(causal=torch.ones(2, dtype=torch.int32), window_size=(7, -1), chunk_lookback=1),
     ValueError, "causal"),
    # softmax_lse ([5 tokens, 4 heads])
    ("lse-list", _set(softmax_lse=[[0.0] * 4] * 5), TypeError, "softmax_lse"),
    ("lse-float16", _set(softmax_lse=torch.zeros(5, 4, dtype=torch.float16)), TypeError, "softmax_lse"),
    ("lse-rank-3", _set(softmax_lse=torch.zeros(5, 4, 1)), ValueError, "softmax_lse"),
    ("lse-transposed", _set(softmax_lse=torch.zeros(4, 5)), ValueError, "softmax_lse"),
    ("lse-too-few-tokens", _set(softmax_lse=torch.zeros(4, 4)), ValueError, "softmax_lse"),
    ("lse-other-device", _set(softmax_lse=torch.zeros(5, 4, device="meta")), ValueError, "softmax_lse"),
]


@pytest.mark.reference
@pytest.mark.parametrize("fn", FUNCTIONS.values(), ids=FUNCTIONS.keys())
@pytest.mark.parametrize("change,exc,arg", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_refused_before_writing(change, exc, arg, fn):
    # A valid softmax_lse rides along (a case may replace it): it must stay untouched too.
    args = change({**make_batch(), "softmax_lse": torch.full((5, 4), 7.0)})
    out, lse = args["out"], args["softmax_lse"]
    before = out.clone() if out.device.type != "meta" else None
    lse_before = lse.clone() if isinstance(lse, torch.Tensor) and lse.device.type != "meta" else None
    with pytest.raises(exc) as info:
        call(fn, args)
    assert str(info.value).startswith(f"{arg}: "), str(info.value)
    assert same_bits(out, before), "out was written before the error"
    if isinstance(lse_before, torch.Tensor):
        assert same_bits(lse, lse_before), "softmax_lse was written before the error"


@pytest.mark.reference
@pytest.mark.parametrize("fn", FUNCTIONS.values(), ids=FUNCTIONS.keys())
def test_unused_block_table_columns_may_hold_anything(fn):
    """Columns past a sequence's last block are never read, so even -1 there is legal."""
    args = make_batch()
    table = args["block_table"].clone()
    table[:, -1] = -1
    expected = call(fn, {**args, "out": args["out"].clone()})
    got = call(fn, {**args, "block_table": table})
    assert same_bits(got, expected)


@pytest.mark.reference
@pytest.mark.parametrize("fn", FUNCTIONS.values(), ids=FUNCTIONS.keys())
def test_empty_batch_leaves_out_untouched(fn):
    args = make_batch()
    out = torch.randn(3, 4, 16)
    before = out.clone()
    empty = {**args, "out": out, "q": torch.randn(3, 4, 16), "cu_seqlens_q": torch.zeros(1, dtype=torch.int32),
             "seqused_k": torch.zeros(0, dtype=torch.int32), "block_table": torch.zeros(0, 3, dtype=torch.int32),
             "max_seqlen_q": 0, "max_seqlen_k": 0}
    assert call(fn, empty) is out
    assert same_bits(out, before)


# ---------------------------------------------------------------------------------------------
# The independent computation: per query, per head, keys gathered one slot at a time


def _bias_of(a: dict, seq: int, p: int, j: int) -> float:
    """qq_bias for the pair: row = the query's index among the new tokens, column = the key's."""
    bias = a.get("qq_bias")
    if bias is None:
        return 0.0
    q_len = int(a["cu_seqlens_q"][seq + 1] - a["cu_seqlens_q"][seq])
    context_len = int(a["seqused_k"][seq]) - q_len
    if j < context_len or j - context_len >= bias.shape[1]:
        return 0.0
    return float(bias[p - context_len, j - context_len])


def key_visible(p: int, j: int, a: dict, seq: int) -> bool:
    """The visibility rule written out directly from its definition, for one (query, key) pair."""
    if _bias_of(a, seq, p, j) == -math.inf:  # a -inf bias hides the key like a mask
        return False
    left, right = a["window_size"] if a["window_size"] is not None else (-1, -1)
    lookback = a.get("chunk_lookback", -1)
    if lookback >= 0:
        size = (left + 1) // (lookback + 1)
        base = j <= p and p // size - j // size <= lookback
    elif isinstance(a["causal"], torch.Tensor):  # per sequence: causal looks back, bidirectional both ways
        if a["causal"][seq]:
            base = j <= p and (left < 0 or p - j <= left)
        else:
            base = left < 0 or abs(p - j) <= left
    else:
        base = True
        if a["causal"] and j > p:
            base = False
        if not a["causal"] and right >= 0 and j - p > right:
            base = False
        if left >= 0 and p - j > left:
            base = False
    if a.get("rswa_window") is not None:
        base = base and (j < int(a["rswa_prefix_lens"][seq]) or p - j < a["rswa_window"])
    ranges = a.get("mm_prefix_range")
    if ranges is not None:
        for start, end in ranges[seq].tolist():
            if start < end and start <= p <= end and start <= j <= end:
                if a.get("mm_prefix_clamp_sliding_window", False) and left >= 0 and p - j > left:
                    continue
                return True
    return base


def _scale_of(a: dict, name: str, cache_name: str, seq: int, block: int, slot: int, kv_head: int) -> float:
    """The float64 factor that dequantizes one cached row (1 for an unquantized cache)."""
    if a.get(cache_name) is not None:
        return float(a[cache_name][block, slot, kv_head])
    descale = a[name]
    if descale is None:
        return 1.0
    return float(descale.reshape(-1)[0]) if descale.numel() == 1 else float(descale[seq, kv_head])


# vLLM's INT4 format written out from its definition: the +-1 signs vLLM draws (seeded), the Sylvester
# Hadamard entry (-1)^popcount(i & j), the low nibble holding the even dimension, the zero point in the
# scale's 4 low mantissa bits (cleared before scaling).
INT4_SIGN_SEED = 0x9E3779B9


def _int4_row(cache: torch.Tensor, scales: torch.Tensor, block: int, slot: int, kv_head: int) -> torch.Tensor:
    """One cached INT4 row in the original space: D H ((u - zero) * scale) / b, b = largest power of 2 | dim."""
    packed = cache[block, slot, kv_head].tolist()
    dim = 2 * len(packed)
    nibbles = [(packed[i // 2] >> (4 * (i % 2))) & 15 for i in range(dim)]
    bits = int(scales[block, slot, kv_head].reshape(1).view(torch.int32))
    zero = bits & 15
    scale = float(torch.tensor([bits & ~15], dtype=torch.int32).view(torch.float32))
    rotated = [(u - zero) * scale for u in nibbles]
    b = dim & -dim
    signs = 2 * torch.bernoulli(torch.full((b,), 0.5), generator=torch.Generator().manual_seed(INT4_SIGN_SEED)) - 1
    row = torch.zeros(dim, dtype=torch.float64)
    for group in range(0, dim, b):
        for i in range(b):
            total = sum((-1) ** bin(i & j).count("1") * rotated[group + j] for j in range(b))
            row[group + i] = float(signs[i]) * total / b
    return row


def _row_of(a: dict, cache_name: str, descale_name: str, scale_name: str, seq, block, slot, kv_head):
    """One cached row dequantized in float64."""
    if a.get("kv_quant_mode") == "int4_per_token_head":
        return _int4_row(a[cache_name], a[scale_name], block, slot, kv_head)
    return a[cache_name][block, slot, kv_head].double() * _scale_of(a, descale_name, scale_name, seq, block, slot,
                                                                     kv_head)


def _pairs(a: dict):
    """Every (token, head) of every sequence with its visible logits, their value rows and the sink."""
    q, k = a["q"], a["k"]
    num_q_heads = q.shape[1]
    block_size, num_kv_heads = k.shape[1], k.shape[2]
    group = num_q_heads // num_kv_heads
    q_scale = 1.0 if a["q_descale"] is None else float(a["q_descale"].reshape(-1)[0])
    softcap = a["softcap"] or 0.0
    cu, lens = a["cu_seqlens_q"].tolist(), a["seqused_k"].tolist()
    for seq, seq_len in enumerate(lens):
        q_len = cu[seq + 1] - cu[seq]
        for i in range(q_len):
            token, p = cu[seq] + i, seq_len - q_len + i
            for h in range(num_q_heads):
                kv_head = h // group
                query = q[token, h].double() * q_scale
                logits, rows = [], []
                for j in range(seq_len):
                    if not key_visible(p, j, a, seq):
                        continue
                    block, slot = int(a["block_table"][seq, j // block_size]), j % block_size
                    key = _row_of(a, "k", "k_descale", "k_scale_cache", seq, block, slot, kv_head)
                    s = float(query @ key) * a["softmax_scale"]
                    if softcap:
                        s = softcap * math.tanh(s / softcap)
                    if a.get("alibi_slopes") is not None:
                        slope = float(a["alibi_slopes"][h])
                        if a.get("use_alibi_sqrt", False):
                            s += -slope * math.sqrt(p - j) if j <= p else 0.0
                        else:
                            s += slope * (j - p)
                    s += _bias_of(a, seq, p, j)
                    logits.append(s)
                    rows.append(_row_of(a, "v", "v_descale", "v_scale_cache", seq, block, slot, kv_head))
                sink = None if a.get("sinks") is None else float(a["sinks"][h])
                yield token, h, logits, rows, sink


def oracle_lse(a: dict) -> torch.Tensor:
    """float64 ``[num_tokens, heads]``: torch.logsumexp of each row's visible logits and sink; padding NaN."""
    result = torch.full(a["q"].shape[:2], float("nan"), dtype=torch.float64)
    for token, h, logits, _, sink in _pairs(a):
        terms = logits + ([sink] if sink is not None else [])
        result[token, h] = torch.logsumexp(torch.tensor(terms + [-math.inf], dtype=torch.float64), dim=0)
    return result


def oracle(a: dict) -> torch.Tensor:
    """float64 ``[num_tokens, heads, dim]``; rows of no sequence stay NaN."""
    num_tokens, num_q_heads, head_size = a["q"].shape
    result = torch.full((num_tokens, num_q_heads, head_size), float("nan"), dtype=torch.float64)
    for token, h, logits, rows, sink in _pairs(a):
        top = max(logits + ([sink] if sink is not None else []), default=None)
        if top is None:
            result[token, h] = 0.0
            continue
        weights = [math.exp(s - top) for s in logits]
        total = sum(weights) + (math.exp(sink - top) if sink is not None else 0.0)
        acc = torch.zeros(head_size, dtype=torch.float64)
        for w, row in zip(weights, rows):
            acc += w * row
        result[token, h] = acc / total
    return result


def golden(a: dict, fn=reference.unified_attention, **kwargs) -> torch.Tensor:
    out = torch.full(a["q"].shape, float("nan"), dtype=torch.float64)
    return call(fn, {**a, "out": out}, **kwargs)


def assert_golden_matches_oracle(a):
    """Every reference entry point equals the float64 oracle on the rows the batch uses;
    returns (rows, the oracle's values there)."""
    rows = used_rows(a)
    expected = oracle(a)[rows]
    for fn in FUNCTIONS.values():
        torch.testing.assert_close(golden(a, fn)[rows], expected, rtol=0, atol=1e-12)
    return rows, expected


def used_rows(a: dict) -> slice:
    return slice(0, int(a["cu_seqlens_q"][-1]))


@pytest.mark.reference
@pytest.mark.parametrize("fn", FUNCTIONS.values(), ids=FUNCTIONS.keys())
def test_exact_fit_block_table_passes(fn):
    """A sequence filling its block-table row exactly (no spare column, no spare block) is legal."""
    args = make_batch(seq_lens=(8, 3), q_lens=(3, 3), block_size=4, extra_cols=0, spare_blocks=0)
    assert args["block_table"].shape[1] * 4 == 8 and args["k"].shape[0] == 3
    got = golden(args, fn)
    torch.testing.assert_close(got, oracle(args), rtol=0, atol=1e-12)


@pytest.mark.reference
def test_oracle_agrees_on_existing_features():
    """The independent computation itself, on the features the reference already had."""
    args = make_batch(seq_lens=(7, 12, 0), q_lens=(7, 2, 0), seed=3)
    args.update(window_size=(4, -1), softcap=3.0, alibi_slopes=torch.tensor([0.5, -0.25, 0.1, 0.0]),
                sinks=torch.tensor([0.3, -1.0, 2.0, 0.0]))
    for fn in FUNCTIONS.values():
        torch.testing.assert_close(golden(args, fn)[used_rows(args)], oracle(args)[used_rows(args)], rtol=0,
                                   atol=1e-12)


# ---------------------------------------------------------------------------------------------
# B. Features: fp8 queries, quantized caches, chunked attention, bidirectional prefix ranges

QUANT = [
    # (id, kv_quant_mode, fp8 queries, [num_seqs, num_kv_heads] descales)
    ("fp8-tensor", "fp8_per_tensor", False, False),
    ("fp8-tensor-per-seq", "fp8_per_tensor", False, True),
    ("fp8q-fp8-tensor", "fp8_per_tensor", True, False),
    ("fp8q-fp8-tensor-per-seq", "fp8_per_tensor", True, True),
    ("int8-pth", "int8_per_token_head", False, False),
    ("fp8q-int8-pth", "int8_per_token_head", True, False),
    ("fp8-pth", "fp8_per_token_head", False, False),
    ("fp8q-fp8-pth", "fp8_per_token_head", True, False),
    ("int4-pth", "int4_per_token_head", False, False),
    ("fp8q-int4-pth", "int4_per_token_head", True, False),
]


def quant_batch(mode, q_fp8, per_seq, seed=5, **sizes):
    base = make_batch(**{"seq_lens": (13, 22, 4), "q_lens": (4, 5, 0), "seed": seed, **sizes})
    return quantized(base, mode, q_fp8=q_fp8, per_seq_descale=per_seq, seed=seed + 1)


def native(a: dict, fn=reference.unified_attention, out_dtype=None, **kwargs) -> torch.Tensor:
    """The same-precision baseline as float64 values (an fp8 ``out`` dequantized by output_scale)."""
    if out_dtype is None:
        out_dtype = torch.bfloat16 if a["q"].dtype == E4M3 else a["q"].dtype
    out = torch.zeros(a["q"].shape, dtype=out_dtype)
    call(fn, {**a, "out": out}, precision="native", **kwargs)
    values = out.double()
    if out.element_size() == 1:
        values = values * float(a["output_scale"])
    return values


@pytest.mark.reference
@pytest.mark.parametrize("mode,q_fp8,per_seq", [c[1:] for c in QUANT], ids=[c[0] for c in QUANT])
def test_quantized_golden_matches_oracle(mode, q_fp8, per_seq):
    a = quant_batch(mode, q_fp8, per_seq)
    rows, expected = assert_golden_matches_oracle(a)


@pytest.mark.reference
@pytest.mark.parametrize("mode", ["none", "fp8_per_tensor", "int8_per_token_head", "fp8_per_token_head",
                                  "int4_per_token_head"])
def test_kv_quant_mode_forms_agree(mode):
    """The string, vLLM's IntEnum member and (for today's two modes) None mean the same thing."""
    a = make_batch() if mode == "none" else quant_batch(mode, False, False)
    forms = [mode, KVQuantMode[mode.upper()]] + ([None] if mode in ("none", "fp8_per_tensor") else [])
    results = [golden({**a, "kv_quant_mode": form}) for form in forms]
    assert all(same_bits(r, results[0]) for r in results[1:])


@pytest.mark.reference
def test_per_seq_descales_are_not_reduced_to_element_0():
    a = quant_batch("fp8_per_tensor", True, True)
    k_ds, v_ds = a["k_descale"], a["v_descale"]
    assert len(set(k_ds.flatten().tolist())) == k_ds.numel()  # every (sequence, KV head) has its own scale
    rows = used_rows(a)
    full = golden(a)[rows]
    reduced = golden({**a, "k_descale": k_ds.reshape(-1)[:1], "v_descale": v_ds.reshape(-1)[:1]})[rows]
    torch.testing.assert_close(full, oracle(a)[rows], rtol=0, atol=1e-12)
    assert (full - reduced).abs().max() > 0.05


def _wrong_scales(a: dict, mode: str, q_fp8: bool, per_seq: bool) -> dict:
    """The same batch with one plausible scale bug: what the baseline must stay far from."""
    if per_seq:  # the larger descale reduced to its first element
        return {**a, "k_descale": a["k_descale"].reshape(-1)[:1], "v_descale": a["v_descale"].reshape(-1)[:1]}
    if mode.endswith("per_token_head"):  # each row dequantized by its neighbour's scale
        return {**a, "v_scale_cache": a["v_scale_cache"].roll(1, dims=1)}
    if q_fp8:  # q_descale forgotten
        return {**a, "q_descale": torch.tensor([1.0])}
    return {**a, "v_descale": torch.tensor([1.0])}


@pytest.mark.reference
@pytest.mark.parametrize("mode,q_fp8,per_seq", [c[1:] for c in QUANT], ids=[c[0] for c in QUANT])
def test_native_baseline_is_meaningful(mode, q_fp8, per_seq):
    """Native error is about the compute dtype's rounding; a scale bug is far outside 2x of it."""
    a = quant_batch(mode, q_fp8, per_seq)
    rows = used_rows(a)
    exact = golden(a)[rows]
    err = (native(a)[rows] - exact).abs().max().item()
    # bf16 compute (+ e4m3 P) for fp8 queries, float32 compute otherwise; outputs of magnitude ~1
    low, high = (1e-3, 0.06) if q_fp8 else (0, 1e-5)
    assert low < err < high, err
    bug = (golden(_wrong_scales(a, mode, q_fp8, per_seq))[rows] - exact).abs().max().item()
    assert bug > 4 * err, (bug, err)


@pytest.mark.reference
def test_fp8_query_baseline_computes_in_out_dtype():
    """16/32-bit out: its dtype; anything else (fp8 here): bfloat16. int8 V, so no P rounding muddles it."""
    a = {**quant_batch("int8_per_token_head", True, False), "output_scale": torch.tensor([0.0625])}
    rows = used_rows(a)
    exact = golden(a)[rows]
    errors = {dtype: (native(a, out_dtype=dtype)[rows] - exact).abs().max().item()
              for dtype in (torch.float32, torch.float16, torch.bfloat16)}
    assert errors[torch.float32] < 1e-5 < errors[torch.float16] < 5e-3 < errors[torch.bfloat16] < 0.06, errors
    # fp8 out: the bf16 result, divided by output_scale (a power of two, so exactly) and rounded to e4m3.
    in_bf16, in_fp8 = torch.zeros(a["q"].shape, dtype=torch.bfloat16), torch.zeros(a["q"].shape, dtype=E4M3)
    call(reference.unified_attention, {**a, "out": in_bf16}, precision="native")
    call(reference.unified_attention, {**a, "out": in_fp8}, precision="native")
    assert same_bits(in_fp8[rows], (in_bf16[rows] / 0.0625).clamp(-448, 448).to(E4M3))


def _two_key_batch(mode: str) -> dict:
    """One fp8 query, keys giving logits 0 and ln(0.3): probabilities 1 and 0.3 for values 0 and 1."""
    a = make_batch(seq_lens=(2,), q_lens=(1,), num_q_heads=1, num_kv_heads=1, head_size=16, block_size=2,
                   extra_cols=0, spare_blocks=0)
    q = torch.zeros(1, 1, 16)
    q[0, 0, 0] = 1.0
    k = torch.zeros(1, 2, 1, 16)
    k[0, 1, 0, 0] = 1.0
    v = torch.zeros(1, 2, 1, 16)
    v[0, 1, 0, :] = 1.0
    a.update(q=q.to(E4M3), q_descale=torch.tensor([1.0]), softmax_scale=math.log(0.3), kv_quant_mode=mode)
    if mode == "int8_per_token_head":
        a.update(k=k.to(torch.int8), v=v.to(torch.int8), k_scale_cache=torch.ones(1, 2, 1),
                 v_scale_cache=torch.ones(1, 2, 1))
    elif mode == "fp8_per_token_head":
        a.update(k=k.to(E4M3), v=v.to(E4M3), k_scale_cache=torch.ones(1, 2, 1), v_scale_cache=torch.ones(1, 2, 1))
    else:
        a.update(k=k.to(E4M3), v=v.to(E4M3), k_descale=torch.tensor([1.0]), v_descale=torch.tensor([1.0]))
    return a


@pytest.mark.reference
@pytest.mark.parametrize("mode", ["fp8_per_tensor", "fp8_per_token_head", "int8_per_token_head"])
def test_native_rounds_p_to_e4m3_only_for_fp8_pv(mode):
    """Exact: 0.3 / 1.3. With an fp8 V the baseline's P@V uses e4m3(0.3) = 0.3125 over the unrounded sum."""
    a = _two_key_batch(mode)
    assert abs(float(golden(a)[0, 0, 0]) - 0.3 / 1.3) < 1e-12
    got = float(native(a, out_dtype=torch.float32)[0, 0, 0])
    expected = 0.3125 / 1.3 if mode.startswith("fp8") else 0.3 / 1.3
    assert abs(got - expected) < 2e-3, (got, expected)
    split = float(native(a, reference.split_kv_attention, out_dtype=torch.float32, num_segments=1)[0, 0, 0])
    assert abs(split - expected) < 2e-3, (split, expected)
    # P is rounded relative to each segment's own max, as a split kernel rounds it: one key per
    # segment makes every P exactly 1, so nothing is rounded.
    apart = float(native(a, reference.split_kv_attention, out_dtype=torch.float32, num_segments=2)[0, 0, 0])
    assert abs(apart - 0.3 / 1.3) < 2e-3, apart


@pytest.mark.reference
def test_fp8_queries_cache_and_output_together():
    a = {**quant_batch("fp8_per_tensor", True, True), "output_scale": torch.tensor([0.0625])}
    rows = used_rows(a)
    exact = oracle(a)[rows]
    for fn in FUNCTIONS.values():
        got = native(a, fn, out_dtype=E4M3)[rows]
        # e4m3 keeps 3 mantissa bits: half a step is 1/16 relative, plus the bf16/e4m3-P baseline error
        assert ((got - exact).abs() <= exact.abs() / 16 + 0.06).all()
        out = torch.full(a["q"].shape, float("nan")).to(E4M3)
        call(fn, {**a, "out": out})
        values = out.double()[rows] * 0.0625
        assert ((values - exact).abs() <= exact.abs() / 16 + 1e-12).all()


CHUNKED = [(7, 1), (8, 1), (3, 0), (5, 2), (11, 3)]  # (left window, lookback): C = 4, 4, 4, 2, 3


@pytest.mark.reference
def test_chunk_boundaries_by_hand():
    """C = (7 + 1) // (1 + 1) = 4, lookback 1: own chunk and the one before, never the future."""
    a = {**make_batch(seq_lens=(13,), q_lens=(13,)), "window_size": (7, -1), "chunk_lookback": 1}
    mask = reference.visibility(13, 13, True, (7, -1), "cpu", chunk_lookback=1)
    expected = {3: range(4), 4: range(5), 5: range(6), 7: range(8), 8: range(4, 9), 9: range(4, 10),
                12: range(8, 13)}
    for p, keys in expected.items():  # p = C-1, C, C+1, 2C-1, 2C, 2C+1, 3C
        assert mask[p].nonzero().flatten().tolist() == list(keys), p
        assert [j for j in range(13) if key_visible(p, j, a, 0)] == list(keys), p
    lone = reference.visibility(9, 9, True, (3, -1), "cpu", chunk_lookback=0)  # C = 4, own chunk only
    assert [lone[p].nonzero().flatten().tolist() for p in (3, 4, 5, 8)] == [[0, 1, 2, 3], [4], [4, 5], [8]]
    assert reference.chunk_size(8, 1) == 4 and reference.chunk_size(11, 3) == 3


@pytest.mark.reference
@pytest.mark.parametrize("left,lookback", CHUNKED, ids=[f"w{w}-lb{b}" for w, b in CHUNKED])
def test_chunked_matches_oracle(left, lookback):
    a = {**make_batch(seq_lens=(14, 17, 9), q_lens=(14, 3, 1), seed=11), "window_size": (left, -1),
         "chunk_lookback": lookback, "sinks": torch.tensor([0.5, -1.0, 0.0, 1.0])}
    rows, expected = assert_golden_matches_oracle(a)
    sliding = golden({**a, "chunk_lookback": -1})[rows]
    assert (sliding - expected).abs().max() > 1e-3  # chunking replaced the window: it is not a no-op


@pytest.mark.reference
def test_prefix_range_by_hand():
    """Window left 2, range [2, 8], the query at p = 7 of 10 positions."""
    ranges = [(2, 8)]
    plain = reference.visibility(10, 10, True, (2, -1), "cpu", prefix_ranges=ranges)
    clamped = reference.visibility(10, 10, True, (2, -1), "cpu", prefix_ranges=ranges, clamp_ranges_to_window=True)
    assert plain[7].nonzero().flatten().tolist() == [2, 3, 4, 5, 6, 7, 8]
    assert clamped[7].nonzero().flatten().tolist() == [5, 6, 7, 8]
    assert plain[9].nonzero().flatten().tolist() == [7, 8, 9]  # outside the range: window only
    assert plain[1].nonzero().flatten().tolist() == [0, 1]
    unused = reference.visibility(10, 10, True, (2, -1), "cpu", prefix_ranges=[(5, 5), (8, 3)])
    assert torch.equal(unused, reference.visibility(10, 10, True, (2, -1), "cpu"))


PREFIX = [
    # (id, window, ranges per sequence (lengths 12, 15, 6; queries are the last 12, 4, 6 positions), clamp)
    ("start-and-end", (-1, -1), [[[0, 3], [8, 11]], [[0, 2], [11, 14]], [[0, 5], [0, 0]]], False),
    ("partly-outside-window", (3, -1), [[[1, 9], [0, 0]], [[4, 13], [3, 3]], [[0, 5], [9, 2]]], False),
    ("partly-outside-window-clamped", (3, -1), [[[1, 9], [0, 0]], [[4, 13], [3, 3]], [[0, 5], [9, 2]]], True),
    ("chunked-with-range", (7, -1), [[[1, 10], [0, 0]], [[9, 13], [0, 0]], [[1, 2], [0, 0]]], False),
]


def prefix_batch(window, ranges, clamp, seed=13):
    a = make_batch(seq_lens=(12, 15, 6), q_lens=(12, 4, 6), seed=seed)
    a.update(window_size=window, mm_prefix_range=torch.tensor(ranges, dtype=torch.int32),
             mm_prefix_clamp_sliding_window=clamp)
    if window == (7, -1):
        a["chunk_lookback"] = 1
    return a


@pytest.mark.reference
@pytest.mark.parametrize("window,ranges,clamp", [c[1:] for c in PREFIX], ids=[c[0] for c in PREFIX])
def test_prefix_ranges_match_oracle(window, ranges, clamp):
    a = prefix_batch(window, ranges, clamp)
    rows, expected = assert_golden_matches_oracle(a)
    without = golden({**a, "mm_prefix_range": None})[rows]
    assert (without - expected).abs().max() > 1e-3  # the ranges matter in this batch
    if window[0] >= 0:  # and so does the clamp
        other = golden({**a, "mm_prefix_clamp_sliding_window": not clamp})[rows]
        assert (other - expected).abs().max() > 1e-3


SPLIT_FEATURES = {
    "fp8q-per-seq-descale": lambda: quant_batch("fp8_per_tensor", True, True),
    "int8-pth": lambda: quant_batch("int8_per_token_head", False, False),
    "fp8q-fp8-pth": lambda: quant_batch("fp8_per_token_head", True, False),
    "chunked": lambda: {**make_batch(seq_lens=(14, 17), q_lens=(14, 3), seed=2), "window_size": (7, -1),
                        "chunk_lookback": 1},
    "prefix": lambda: prefix_batch(*PREFIX[1][1:]),
    "prefix-clamped": lambda: prefix_batch(*PREFIX[2][1:]),
    # defined in section C
    "qq-bias-neg-inf": lambda: qq_batch("neg-inf"),
    "rswa": lambda: rswa_batch(*RSWA[0][1:]),
    "rswa-per-seq-causal": lambda: rswa_batch(*RSWA[5][1:]),
    "alibi-sqrt": lambda: {**make_batch(seq_lens=(11, 6), q_lens=(4, 6), seed=25), "use_alibi_sqrt": True,
                           "alibi_slopes": torch.tensor([0.9, -0.4, 0.3, 1.5])},
    "per-seq-causal-window": lambda: per_seq_causal_batch([1, 0, 1, 0], (2, -1), {}),
}


@pytest.mark.reference
@pytest.mark.parametrize("num_segments", [1, 2, 3, 7])
@pytest.mark.parametrize("feature", SPLIT_FEATURES.values(), ids=SPLIT_FEATURES.keys())
def test_split_merge_equals_single_pass(feature, num_segments):
    a = feature()
    rows = used_rows(a)
    single, single_lse = golden_lse(a)
    split, split_lse = golden_lse(a, reference.split_kv_attention, num_segments=num_segments)
    torch.testing.assert_close(split[rows], single[rows], rtol=0, atol=1e-12)
    torch.testing.assert_close(split_lse[rows], single_lse[rows], rtol=0, atol=1e-12)
    single = single[rows]
    # The native baseline's segments round their own P (as a split kernel does): close, not equal.
    bound = 0.06 if a["q"].dtype == E4M3 else 1e-5
    native_split = native(a, reference.split_kv_attention, num_segments=num_segments)[rows]
    assert (native_split - single).abs().max() < bound


def _unseen_slots(a: dict) -> torch.Tensor:
    """Bool ``[num_blocks, block_size]``: cache slots no query of any sequence sees (from the pair rule)."""
    num_blocks, block_size = a["k"].shape[:2]
    seen = torch.zeros(num_blocks, block_size, dtype=torch.bool)
    cu, lens = a["cu_seqlens_q"].tolist(), a["seqused_k"].tolist()
    for seq, seq_len in enumerate(lens):
        q_len = cu[seq + 1] - cu[seq]
        for j in range(seq_len):
            if any(key_visible(p, j, a, seq) for p in range(seq_len - q_len, seq_len)):
                seen[int(a["block_table"][seq, j // block_size]), j % block_size] = True
    return ~seen


def _poison(a: dict, where: torch.Tensor) -> dict:
    """NaN and Inf (alternating) in the scale caches, and NaN in an fp8 cache, at ``where``."""
    b = dict(a)
    bad = torch.where(torch.arange(where.numel()).reshape(where.shape) % 2 == 0, float("nan"), float("inf"))
    for name in ("k_scale_cache", "v_scale_cache"):
        b[name] = torch.where(where[..., None], bad[..., None], a[name])
    if a["k"].dtype == E4M3:
        for name in ("k", "v"):
            b[name] = torch.where(where[..., None, None], float("nan"), a[name].float()).to(E4M3)
    return b


POISON = {
    "int8-window": lambda: {**quant_batch("int8_per_token_head", False, False), "window_size": (3, -1)},
    "fp8q-fp8-window": lambda: {**quant_batch("fp8_per_token_head", True, False), "window_size": (3, -1)},
    "int8-chunked": lambda: {**quant_batch("int8_per_token_head", False, False), "window_size": (7, -1),
                             "chunk_lookback": 1},
    "fp8-range-clamped": lambda: {**quantized(prefix_batch(*PREFIX[2][1:]), "fp8_per_token_head", seed=4)},
    "int8-rswa": lambda: {**quant_batch("int8_per_token_head", False, False),
                          "rswa_prefix_lens": torch.tensor([2, 3, 0], dtype=torch.int32), "rswa_window": 2},
    "int8-per-seq-causal": lambda: {**quant_batch("int8_per_token_head", False, False), "window_size": (2, -1),
                                    "causal": torch.tensor([0, 1, 0], dtype=torch.int32)},
    # a -inf column hides key context_len + 1 from every new token of each sequence
    "int8-qq-bias-hidden-column": lambda: {**quant_batch("int8_per_token_head", False, False),
                                           "qq_bias": torch.tensor([[0.5, -math.inf, 0.0]] * 5)},
}


@pytest.mark.reference
@pytest.mark.parametrize("build", POISON.values(), ids=POISON.keys())
def test_invisible_scale_entries_cannot_leak(build):
    a = build()
    unseen = _unseen_slots(a)
    assert unseen.sum() > 0
    rows = used_rows(a)
    for precision in ("float64", "native"):
        for fn in FUNCTIONS.values():
            clean = native(a, fn) if precision == "native" else golden(a, fn)
            dirty = native(_poison(a, unseen), fn) if precision == "native" else golden(_poison(a, unseen), fn)
            assert torch.isfinite(dirty[rows]).all() and same_bits(dirty[rows], clean[rows])
    # The poison is real: one seen slot poisoned does reach the output.
    seen_one = torch.zeros_like(unseen)
    seen_one.view(-1)[(~unseen).view(-1).nonzero()[0]] = True
    assert not torch.isfinite(golden(_poison(a, seen_one))[rows]).all()


@pytest.mark.reference
def test_range_excluded_slots_are_unseen_only_with_the_clamp():
    """The clamped batch's poisoned slots include range keys the clamp removes: unclamped they leak."""
    a = prefix_batch(*PREFIX[2][1:])
    a = quantized(a, "fp8_per_token_head", seed=4)
    clamped_unseen = _unseen_slots(a)
    range_excluded = clamped_unseen & ~_unseen_slots({**a, "mm_prefix_clamp_sliding_window": False})
    assert range_excluded.sum() > 0
    rows = used_rows(a)
    assert same_bits(golden(_poison(a, range_excluded))[rows], golden(a)[rows])
    unclamped = {**a, "mm_prefix_clamp_sliding_window": False}
    assert not torch.isfinite(golden(_poison(unclamped, range_excluded))[rows]).all()


# ---------------------------------------------------------------------------------------------
# C. Features: qq_bias, R-SWA, ALiBi-sqrt, per-sequence causal, softmax_lse (and context parallelism)

LSE_SENTINEL = 123.0  # padding rows must keep it


def golden_lse(a: dict, fn=reference.unified_attention, lse_dtype=torch.float64, **kwargs):
    """The golden output and its softmax_lse (float64 unless asked otherwise)."""
    lse = torch.full(a["q"].shape[:2], LSE_SENTINEL, dtype=lse_dtype)
    return golden({**a, "softmax_lse": lse}, fn, **kwargs), lse


def with_padding(a: dict, extra: int = 2, seed: int = 99) -> dict:
    """The batch with ``extra`` padding tokens past cu_seqlens_q[-1] in q and out."""
    gen = torch.Generator().manual_seed(seed)
    pad = torch.randn(extra, *a["q"].shape[1:], generator=gen).to(a["q"].dtype)
    return {**a, "q": torch.cat([a["q"], pad]), "out": torch.cat([a["out"], torch.full_like(a["out"][:extra], 0)])}


def assert_matches_oracle(a: dict, functions=FUNCTIONS.values(), **kwargs):
    """Output and softmax_lse of every reference function equal the pair-by-pair oracle; padding untouched."""
    rows = used_rows(a)
    expected, expected_lse = oracle(a)[rows], oracle_lse(a)[rows]
    for fn in functions:
        out, lse = golden_lse(a, fn, **kwargs)
        torch.testing.assert_close(out[rows], expected, rtol=0, atol=1e-12, msg=f"{fn.__name__} output")
        torch.testing.assert_close(lse[rows], expected_lse, rtol=0, atol=1e-12, msg=f"{fn.__name__} softmax_lse")
        assert (lse[rows.stop:] == LSE_SENTINEL).all(), "padding rows of softmax_lse were written"
    return expected


def quick(*values, id):
    return pytest.param(*values, id=id, marks=pytest.mark.quick)


def qq_batch(kind: str) -> dict:
    """Sequences of 9, 6 and 4 keys with 4, 6 and 1 new tokens (the second is all new: context 0)."""
    a = with_padding(make_batch(seq_lens=(9, 6, 4), q_lens=(4, 6, 1), seed=21))
    gen = torch.Generator().manual_seed(22)
    bias = 2 * torch.randn(8, 7, generator=gen)
    if kind == "causal-softcap-alibi":  # order matters: the bias comes after softcap and ALiBi
        a.update(softcap=2.0, alibi_slopes=torch.tensor([0.5, -0.25, 0.1, 0.0]))
    elif kind == "bidirectional":  # keys after the query get their bias too
        a["causal"] = False
    elif kind == "neg-inf":
        bias[0, 0] = -math.inf  # hides seq 1's only key for its first token: an empty row
        bias[3, 1] = -math.inf  # hides a visible key
        bias[1, 4], bias[2, 5] = float("nan"), math.inf  # invisible (future) keys stay invisible
    elif kind == "narrow":  # columns past K: no bias
        bias = bias[:, :2]
    elif kind == "strided-bf16":
        bias = bias.to(torch.bfloat16).t().contiguous().t()
    bias[6:] = float("nan")  # rows past max_seqlen_q are never read
    if bias.shape[1] > 6:
        bias[:, 6:] = float("nan")  # nor columns past the longest q_len
    a["qq_bias"] = bias
    return a


QQ_KINDS = ["causal-softcap-alibi", "bidirectional", "neg-inf", "narrow", "strided-bf16"]


@pytest.mark.reference
@pytest.mark.parametrize("kind", [quick(QQ_KINDS[0], id=QQ_KINDS[0])] + QQ_KINDS[1:])
def test_qq_bias_matches_oracle(kind):
    a = qq_batch(kind)
    if kind == "strided-bf16":
        assert not a["qq_bias"].is_contiguous()
    expected = assert_matches_oracle(a)
    assert torch.isfinite(expected).all()
    without = golden({**a, "qq_bias": None})[used_rows(a)]
    assert (without - expected).abs().max() > 1e-3  # the bias matters in this batch


@pytest.mark.reference
@pytest.mark.quick
def test_qq_bias_neg_inf_can_empty_a_row():
    """Token 4 (seq 1, first new token, context 0) sees only key 0, which bias[0, 0] = -inf hides."""
    a = qq_batch("neg-inf")
    out, lse = golden_lse(a)
    assert (out[4] == 0).all() and torch.isneginf(lse[4]).all()
    sinks = torch.tensor([0.5, -1.0, 0.0, 2.0])
    out, lse = golden_lse({**a, "sinks": sinks})
    assert (out[4] == 0).all() and torch.equal(lse[4], sinks.double())
    assert_matches_oracle({**a, "sinks": sinks})


@pytest.mark.reference
@pytest.mark.quick
def test_rswa_visibility_by_hand():
    """Prefix 2, window 3, 8 positions: the prefix stays, then p - j < 3 (not <= 3)."""
    mask = reference.visibility(8, 8, True, (-1, -1), "cpu", rswa_prefix_len=2, rswa_window=3)
    rows = [mask[p].nonzero().flatten().tolist() for p in (0, 2, 4, 7)]
    assert rows == [[0], [0, 1, 2], [0, 1, 2, 3, 4], [0, 1, 5, 6, 7]]
    only_self = reference.visibility(6, 4, True, (-1, -1), "cpu", rswa_prefix_len=0, rswa_window=1)
    assert torch.equal(only_self, torch.eye(6, dtype=torch.bool)[2:])
    negative = reference.visibility(6, 6, True, (-1, -1), "cpu", rswa_prefix_len=-4, rswa_window=2)
    assert torch.equal(negative, reference.visibility(6, 6, True, (1, -1), "cpu"))
    past_end = reference.visibility(6, 6, True, (-1, -1), "cpu", rswa_prefix_len=50, rswa_window=1)
    assert torch.equal(past_end, reference.visibility(6, 6, True, (-1, -1), "cpu"))


RSWA = [
    # (id, prefix lengths for sequences of 12, 9, 7 keys (5, 9, 1 new tokens), window, extra arguments)
    ("mixed-w3", [4, 0, 20], 3, {}),
    ("prefix-0-w1", [0, 0, 0], 1, {}),
    ("whole-seq-w1", [12, 9, 7], 1, {}),
    ("negative-w2", [-3, 2, -1], 2, {}),
    ("bidirectional-w2", [3, 1, 2], 2, {"causal": False}),
    ("per-seq-causal-w2", [3, 1, 2], 2, {"causal": torch.tensor([1, 0, 1], dtype=torch.int32)}),
    ("prefix-range-w2", [2, 0, 1], 2, {"mm_prefix_range": torch.tensor([[[6, 9]], [[1, 4]], [[0, 0]]],
                                                                     dtype=torch.int32)}),
    ("sinks-alibi-w4", [1, 3, 0], 4, {"sinks": torch.tensor([0.5, -1.0, 0.0, 2.0]),
                                      "alibi_slopes": torch.tensor([0.5, -0.25, 0.1, 0.0])}),
]


def rswa_batch(prefix, window, extra) -> dict:
    a = make_batch(seq_lens=(12, 9, 7), q_lens=(5, 9, 1), seed=23)
    return {**a, "rswa_prefix_lens": torch.tensor(prefix, dtype=torch.int32), "rswa_window": window, **extra}


@pytest.mark.reference
@pytest.mark.parametrize("prefix,window,extra", [quick(*RSWA[0][1:], id=RSWA[0][0])] + [c[1:] for c in RSWA[1:]],
                         ids=[c[0] for c in RSWA])
def test_rswa_matches_oracle(prefix, window, extra):
    a = rswa_batch(prefix, window, extra)
    expected = assert_matches_oracle(a)
    if min(prefix) < 7:  # some key is outside both prefix and window: R-SWA is not a no-op
        plain = golden({**a, "rswa_prefix_lens": None, "rswa_window": None})[used_rows(a)]
        assert (plain - expected).abs().max() > 1e-3


@pytest.mark.reference
def test_rswa_limits_are_a_window_and_no_window():
    """Prefix 0 is a left window of rswa_window - 1; a prefix covering the sequence is no window."""
    base = make_batch(seq_lens=(12, 9, 7), q_lens=(5, 9, 1), seed=23)
    for window in (1, 3):
        rswa = golden({**base, "rswa_prefix_lens": torch.zeros(3, dtype=torch.int32), "rswa_window": window})
        assert same_bits(rswa, golden({**base, "window_size": (window - 1, -1)}))
    whole = golden({**base, "rswa_prefix_lens": base["seqused_k"].clone(), "rswa_window": 1})
    assert same_bits(whole, golden(base))


@pytest.mark.reference
@pytest.mark.quick
def test_alibi_sqrt_values_by_hand():
    """-slope * sqrt(p - j) for j <= p (0 at distance 0), 0 for later keys; p = 3, 4, 5 of 6 positions."""
    slopes = torch.tensor([0.5, 2.0], dtype=torch.float64)
    bias = reference.masks.alibi_bias(slopes, 6, 3, sqrt=True)
    for h, slope in enumerate(slopes.tolist()):
        for i, p in enumerate((3, 4, 5)):
            for j in range(6):
                expected = -slope * math.sqrt(p - j) if j <= p else 0.0
                # torch's vectorized float64 sqrt may differ from libm's by an ulp on some builds
                assert math.isclose(bias[h, i, j].item(), expected, rel_tol=2 ** -50), (h, p, j)
    assert (bias[:, [0, 1, 2], [3, 4, 5]] == 0).all()  # distance 0
    assert bias[1, 1, 0].item() == -4.0


ALIBI_SQRT = [
    ("causal", {}),
    ("bidirectional-softcap", {"causal": False, "softcap": 2.0}),
    ("window-sinks", {"window_size": (3, -1), "sinks": torch.tensor([0.5, -1.0, 0.0, 2.0])}),
]


@pytest.mark.reference
@pytest.mark.parametrize("extra", [quick(ALIBI_SQRT[0][1], id=ALIBI_SQRT[0][0])] + [c[1] for c in ALIBI_SQRT[1:]],
                         ids=[c[0] for c in ALIBI_SQRT])
def test_alibi_sqrt_matches_oracle(extra):
    a = make_batch(seq_lens=(11, 6, 8), q_lens=(4, 6, 1), seed=25)
    a.update(alibi_slopes=torch.tensor([0.9, -0.4, 0.3, 1.5]), use_alibi_sqrt=True, **extra)
    expected = assert_matches_oracle(a)
    linear = golden({**a, "use_alibi_sqrt": False})[used_rows(a)]
    assert (linear - expected).abs().max() > 1e-3


PER_SEQ_CAUSAL = [
    # (id, window, extra): flags [1, 0, 1, 0] for sequences of 10, 8, 7, 5 keys with 4, 8, 7, 1 new tokens
    ("no-window", (-1, -1), {}),
    ("window-2", (2, -1), {}),
    ("window-0", (0, -1), {}),  # both kinds see only the query's own key
    ("window-none-sinks", None, {"sinks": torch.tensor([0.5, -1.0, 0.0, 2.0])}),
    ("window-3-ranges", (3, -1), {"mm_prefix_range": torch.tensor([[[0, 2]], [[1, 4]], [[1, 3]], [[0, 0]]],
                                                                  dtype=torch.int32)}),
]


def per_seq_causal_batch(flags, window, extra) -> dict:
    a = make_batch(seq_lens=(10, 8, 7, 5), q_lens=(4, 8, 7, 1), seed=27)
    return {**a, "causal": torch.tensor(flags, dtype=torch.int32), "window_size": window, **extra}


@pytest.mark.reference
@pytest.mark.parametrize("window,extra", [quick(*PER_SEQ_CAUSAL[1][1:], id=PER_SEQ_CAUSAL[1][0])]
                         + [c[1:] for i, c in enumerate(PER_SEQ_CAUSAL) if i != 1],
                         ids=[PER_SEQ_CAUSAL[1][0]] + [c[0] for i, c in enumerate(PER_SEQ_CAUSAL) if i != 1])
def test_per_seq_causal_matches_oracle(window, extra):
    a = per_seq_causal_batch([1, 0, 1, 0], window, extra)
    expected = assert_matches_oracle(a)
    left = -1 if window is None else window[0]
    for uniform in (True, False):  # the mix differs from either uniform flag (each with its own window form)
        other = golden({**a, "causal": uniform, "window_size": (left, -1 if uniform else left)})[used_rows(a)]
        differs = (other - expected).abs().max()
        assert differs == 0 if left == 0 else differs > 1e-3


@pytest.mark.reference
@pytest.mark.parametrize("left", [-1, 2])
def test_per_seq_causal_uniform_flags_equal_the_bool(left):
    """All ones: causal=True with (left, -1). All zeros: causal=False with the symmetric (left, left)."""
    ones = per_seq_causal_batch([1, 1, 1, 1], (left, -1), {})
    assert same_bits(golden(ones), golden({**ones, "causal": True}))
    zeros = per_seq_causal_batch([0, 0, 0, 0], (left, -1), {})
    assert same_bits(golden(zeros), golden({**zeros, "causal": False, "window_size": (left, left)}))


@pytest.mark.reference
@pytest.mark.parametrize("lse_dtype", [torch.float64, torch.float32])
def test_softmax_lse_matches_oracle(lse_dtype):
    """Softcap, ALiBi, a window, sinks, a q_len-0 sequence and padding tokens; any strides."""
    a = with_padding(make_batch(seq_lens=(7, 12, 3, 9), q_lens=(7, 2, 0, 3), seed=29), extra=3)
    a.update(window_size=(4, -1), softcap=3.0, alibi_slopes=torch.tensor([0.5, -0.25, 0.1, 0.0]),
             sinks=torch.tensor([0.3, -1.0, 2.0, 0.0]))
    rows = used_rows(a)
    expected = oracle_lse(a)[rows]
    for fn in FUNCTIONS.values():
        storage = torch.full((a["q"].shape[1], a["q"].shape[0]), LSE_SENTINEL, dtype=lse_dtype)
        lse = storage.t()  # head-major storage: a non-contiguous [num_tokens, heads] view
        golden({**a, "softmax_lse": lse}, fn)
        if lse_dtype == torch.float64:
            torch.testing.assert_close(lse[rows], expected, rtol=0, atol=1e-12)
        else:
            torch.testing.assert_close(lse[rows], expected.float(), rtol=1e-6, atol=1e-6)
        assert (lse[rows.stop:] == LSE_SENTINEL).all()
    without_sinks = {**a, "sinks": None}
    _, lse = golden_lse(without_sinks)
    torch.testing.assert_close(lse[rows], oracle_lse(without_sinks)[rows], rtol=0, atol=1e-12)
    assert (lse[rows] < expected).all()  # the sink adds its exp to every row


def _kv_shard(a: dict, first: bool, split: list[int]) -> dict:
    """One context-parallel shard: keys [0, split) or [split, seq_len) of each sequence, block-aligned."""
    block_size = a["k"].shape[1]
    table, lens = a["block_table"].clone(), a["seqused_k"].tolist()
    if first:
        shard_lens = split
    else:
        shard_lens = [n - h for n, h in zip(lens, split)]
        for seq, h in enumerate(split):  # shift the row so that key h becomes position 0
            row = a["block_table"][seq, h // block_size:]
            table[seq] = torch.cat([row, row[-1:].expand(h // block_size)])
    return {**a, "seqused_k": torch.tensor(shard_lens, dtype=torch.int32), "block_table": table,
            "max_seqlen_k": max(shard_lens)}


CONTEXT_PARALLEL = [
    # (id, seq_lens, q_lens, causal): nothing position-dependent, so each shard's scores are the full call's
    ("decode-causal", (9, 16, 5, 12), (1, 1, 1, 1), True),
    ("bidirectional-multi-token", (9, 16, 10, 12), (3, 1, 2, 4), False),
]


@pytest.mark.reference
@pytest.mark.parametrize("seq_lens,q_lens,causal", [quick(*CONTEXT_PARALLEL[0][1:], id=CONTEXT_PARALLEL[0][0])]
                         + [c[1:] for c in CONTEXT_PARALLEL[1:]], ids=[c[0] for c in CONTEXT_PARALLEL])
@pytest.mark.parametrize("fn", FUNCTIONS.values(), ids=FUNCTIONS.keys())
def test_context_parallel_merge_by_lse(seq_lens, q_lens, causal, fn):
    """Two calls over disjoint key shards, merged by their softmax_lse, equal the unsharded call.

    The sink belongs to one shard only (it is one extra logit of the whole softmax).
    """
    sinks = torch.tensor([0.5, -1.0, 0.0, 2.0])
    a = make_batch(seq_lens=seq_lens, q_lens=q_lens, seed=31, extra_cols=0)
    a.update(causal=causal, softcap=4.0, sinks=sinks)
    block_size = a["k"].shape[1]
    split = [block_size * max(1, n // 2 // block_size) for n in seq_lens]
    assert all(q <= h <= n - q for n, h, q in zip(seq_lens, split, q_lens))
    rows = used_rows(a)
    full, full_lse = golden_lse(a, fn)
    out_a, lse_a = golden_lse(_kv_shard(a, True, split), fn)
    out_b, lse_b = golden_lse({**_kv_shard(a, False, split), "sinks": None}, fn)
    lse = torch.logsumexp(torch.stack([lse_a, lse_b]), dim=0)
    merged = torch.exp(lse_a - lse)[..., None] * out_a + torch.exp(lse_b - lse)[..., None] * out_b
    torch.testing.assert_close(merged[rows], full[rows], rtol=0, atol=1e-12)
    torch.testing.assert_close(lse[rows], full_lse[rows], rtol=0, atol=1e-12)
    torch.testing.assert_close(full_lse[rows], oracle_lse(a)[rows], rtol=0, atol=1e-12)
    torch.testing.assert_close(full[rows], oracle(a)[rows], rtol=0, atol=1e-12)
    assert (out_a[rows] - full[rows]).abs().max() > 1e-2  # each shard alone is far from the answer
