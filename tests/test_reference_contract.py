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
]


@pytest.mark.reference
@pytest.mark.parametrize("fn", FUNCTIONS.values(), ids=FUNCTIONS.keys())
@pytest.mark.parametrize("change,exc,arg", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_refused_before_writing(change, exc, arg, fn):
    args = change(make_batch())
    out = args["out"]
    before = out.clone() if out.device.type != "meta" else None
    with pytest.raises(exc) as info:
        call(fn, args)
    assert str(info.value).startswith(f"{arg}: "), str(info.value)
    assert same_bits(out, before), "out was written before the error"


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


def key_visible(p: int, j: int, a: dict, seq: int) -> bool:
    """The visibility rule written out directly from its definition, for one (query, key) pair."""
    left, right = a["window_size"] if a["window_size"] is not None else (-1, -1)
    lookback = a.get("chunk_lookback", -1)
    if lookback >= 0:
        size = (left + 1) // (lookback + 1)
        base = j <= p and p // size - j // size <= lookback
    else:
        base = True
        if a["causal"] and j > p:
            base = False
        if not a["causal"] and right >= 0 and j - p > right:
            base = False
        if left >= 0 and p - j > left:
            base = False
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


def oracle(a: dict) -> torch.Tensor:
    """float64 ``[num_tokens, heads, dim]``; rows of no sequence stay NaN."""
    q, k, v = a["q"], a["k"], a["v"]
    num_tokens, num_q_heads, head_size = q.shape
    block_size, num_kv_heads = k.shape[1], k.shape[2]
    group = num_q_heads // num_kv_heads
    q_scale = 1.0 if a["q_descale"] is None else float(a["q_descale"].reshape(-1)[0])
    softcap = a["softcap"] or 0.0
    result = torch.full((num_tokens, num_q_heads, head_size), float("nan"), dtype=torch.float64)
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
                    key = k[block, slot, kv_head].double() * _scale_of(a, "k_descale", "k_scale_cache", seq, block,
                                                                        slot, kv_head)
                    s = float(query @ key) * a["softmax_scale"]
                    if softcap:
                        s = softcap * math.tanh(s / softcap)
                    if a.get("alibi_slopes") is not None:
                        s += float(a["alibi_slopes"][h]) * (j - p)
                    logits.append(s)
                    rows.append(v[block, slot, kv_head].double() * _scale_of(a, "v_descale", "v_scale_cache", seq,
                                                                             block, slot, kv_head))
                sink = None if a.get("sinks") is None else float(a["sinks"][h])
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
