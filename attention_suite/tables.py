"""The case tables of every tier, declared as data.

Sizes follow the device: on CPU the interpreter walks 16-key tiles at a few ms each, so
lengths stay in the tens to low hundreds (still several tiles, several segments, partial
tiles, GQA packing); on a GPU the same compositions are scaled up past the 64-key tiles and
into many segments, and GPU-only cases add large head sizes and long contexts.
"""

from __future__ import annotations

import os
from dataclasses import fields

from .cases import LAYOUTS, Case

ON_GPU = os.environ.get("TRITON_INTERPRET", "0") != "1"
TILE_HINT = 128 if ON_GPU else 16  # the kernels' decode KV tile on this device (for boundary lengths)
SCALE = 6 if ON_GPU else 1

PATHS = ("2d", "3d", "auto")


def _scaled(lengths, scale=None):
    scale = SCALE if scale is None else scale
    return tuple(max(1, n * scale) if n > 1 else n for n in lengths)


# Batch compositions: (seq_lens, query_lens) before scaling.
COMPOSITIONS = {
    "decode": ((17, 45, 80, 33), (1, 1, 1, 1)),
    "prefill": ((24, 37), (24, 37)),
    "chunked": ((60, 41), (12, 9)),
    "mixed": ((50, 23, 70, 9), (1, 23, 10, 1)),
    "varlen": ((3, 150, 1, 64), (1, 40, 1, 7)),
    # Speculative-decoding verify batches: 2..8 drafted tokens per sequence over its context.
    "verify": ((40, 77, 23, 61), (4, 8, 2, 5)),
}
# Compositions whose query lengths stay as given on every device (a verify batch stays 2..8 tokens).
FIXED_QUERY_LENS = ("verify",)


def composition(name: str, scale: int | None = None) -> dict:
    """A batch composition, scaled to the device (or by ``scale``)."""
    seq_lens, query_lens = COMPOSITIONS[name]
    seq_lens = _scaled(seq_lens, scale)
    if name not in FIXED_QUERY_LENS:
        query_lens = tuple(min(k, _scaled((q,), scale)[0]) if q > 1 else q for q, k in zip(query_lens, seq_lens))
    return {"seq_lens": seq_lens, "query_lens": query_lens}


def _gqa(ratio: int) -> dict:
    kv_heads = 2 if ratio <= 8 else 1
    return {"num_q_heads": ratio * kv_heads, "num_kv_heads": kv_heads}


BASE = dict(dtype="float16", head_size=64, block_size=16, **_gqa(4))


# vLLM's INT4 per-token-head cache (reference.int4): packed, rotated rows with per-row scales and zero points.
INT4 = dict(kv_dtype="int4", kv_quant_mode="int4_per_token_head")


def _case(label: str, comp: str = "mixed", **fields) -> Case:
    """A case around BASE on composition ``comp``; its id is ``label`` plus the fields (``Case.name``)."""
    return Case(label=label, **{**BASE, **composition(comp), **fields})


def composition_case(comp: str, scale: int | None = None, **fields) -> Case:
    return Case(label=comp, **{**BASE, **composition(comp, scale), **fields})


def numerics_cases() -> list[Case]:
    """One factor at a time around BASE, then every composition x dtype."""
    cases = []
    for dtype in ("float16", "bfloat16", "float32"):
        for comp in COMPOSITIONS:
            cases.append(_case(comp, comp, dtype=dtype))
    head_sizes = (32, 72, 80, 128) + ((96, 112, 192, 256, 512) if ON_GPU else ())
    for head in head_sizes:
        cases.append(_case("mixed", head_size=head))
    for ratio in (1, 2, 5, 6, 8, 16, 32, 64):
        cases.append(_case("mixed", head_size=32 if not ON_GPU else 64, **_gqa(ratio)))
    for block in (8, 32, 48, 64, 128, 528):
        cases.append(_case("mixed", block_size=block))
    # INT4 caches on decode and mixed batches; rotation groups of 64 (the whole head), 16 (head 80),
    # 8 (head 40, padded to 64 dims) and 32 (head 32, one query head per KV head).
    cases += [_case("decode", "decode", **INT4), _case("mixed", "mixed", **INT4),
              _case("mixed", head_size=80, **INT4), _case("decode", "decode", head_size=40, **_gqa(8), **INT4),
              _case("mixed", head_size=32, **_gqa(1), **INT4)]
    if ON_GPU:
        cases.append(_case("decode-long", "decode", dtype="bfloat16", head_size=128,
                           seq_lens=(4100, 9000, 513, 1), query_lens=(1, 1, 1, 1), **_gqa(4)))
        cases.append(_case("prefill", "prefill", dtype="bfloat16", head_size=256, block_size=32, **_gqa(2)))
    return cases


def feature_cases() -> list[Case]:
    """Every semantic feature on mixed and decode batches."""
    features = {
        "window": dict(window_size=(19, -1)),
        "window-noncausal": dict(causal=False, window_size=(13, 5)),
        "noncausal": dict(causal=False),
        "softcap": dict(softcap=3.0, logit_scale=4.0),
        "alibi": dict(alibi=True),
        "sinks": dict(sinks=True),
        "fp8kv": dict(kv_dtype="float8_e4m3fn"),
        "fp8kv-fp32q": dict(kv_dtype="float8_e4m3fn", dtype="float32"),
        "fp8kv-bf16q": dict(kv_dtype="float8_e4m3fn", dtype="bfloat16"),
        "fp8out": dict(out_dtype="float8_e4m3fn"),
        "all": dict(window_size=(25, -1), softcap=5.0, alibi=True, sinks=True),
        # Chunks of (23 + 1) // 2 = 12 keys, the own chunk and one before it.
        "chunked-attn": dict(window_size=(23, -1), chunk_lookback=1),
        "fp8kv-descale-seqhead": dict(kv_dtype="float8_e4m3fn", descale_per_head=True),
        # K's descale one element, V's per (sequence, KV head), and the other way round.
        "fp8kv-descale-v-seqhead": dict(kv_dtype="float8_e4m3fn", descale_per_head="v"),
        "fp8kv-descale-k-seqhead": dict(kv_dtype="float8_e4m3fn", descale_per_head="k", dtype="bfloat16"),
        "int8kv-pertokenhead": dict(kv_dtype="int8", kv_quant_mode="int8_per_token_head"),
        # int8 -> bf16 in the kernel (the interpreter needs its int -> bf16 cast fix for this one).
        "int8kv-pertokenhead-bf16q": dict(kv_dtype="int8", kv_quant_mode="int8_per_token_head", dtype="bfloat16"),
        # fp8 queries against an fp8 cache: bf16 or fp8 output.
        "fp8q-bf16out": dict(dtype="float8_e4m3fn", kv_dtype="float8_e4m3fn", out_dtype="bfloat16"),
        "fp8q-fp8out": dict(dtype="float8_e4m3fn", kv_dtype="float8_e4m3fn", out_dtype="float8_e4m3fn", sinks=True),
        "int8kv-pertokenhead-window": dict(kv_dtype="int8", kv_quant_mode="int8_per_token_head", window_size=(19, -1),
                                           alibi=True),
        "fp8kv-pertokenhead": dict(kv_dtype="float8_e4m3fn", kv_quant_mode="fp8_per_token_head"),
        "fp8kv-pertokenhead-f32": dict(kv_dtype="float8_e4m3fn", kv_quant_mode="fp8_per_token_head", dtype="float32",
                                       sinks=True),
        "fp8kv-descale-seqhead-f32": dict(kv_dtype="float8_e4m3fn", dtype="float32", descale_per_head=True,
                                          sinks=True),
        "chunked-attn-sinks": dict(window_size=(15, -1), chunk_lookback=0, sinks=True, alibi=True),
        # vLLM 0.33's arguments
        "alibi-sqrt": dict(alibi=True, use_alibi_sqrt=True, sinks=True),
        "causal-per-seq": dict(causal=(True, False, True, False), window_size=(21, -1)),
        "rswa": dict(rswa_prefix_lens=(9, 0, 30, 4), rswa_window=11, softcap=5.0),
        "lse": dict(softmax_lse=True, window_size=(25, -1)),
        "lse-sinks": dict(softmax_lse=True, sinks=True, alibi=True),
    }
    # The fields name the feature (Case.name), so the composition is the whole label.
    cases = [_case(comp, comp, **fields) for fields in features.values() for comp in ("mixed", "decode")]
    # Bidirectional prefix ranges (per composition: they name positions). Mixed: a prefill range,
    # one running past the diagonal of a chunk of queries, one behind a decode query's window.
    # Decode: ranges behind the window, one ending past seq_len (adds no key past it).
    mixed_ranges = ((1, 3, 12), (2, 55, 66), (0, 30, 49))
    decode_ranges = ((0, 3, 16), (2, 50, 79), (3, 0, 40))
    if ON_GPU:
        mixed_ranges = tuple((q, a * SCALE, b * SCALE) for q, a, b in mixed_ranges)
        decode_ranges = tuple((q, a * SCALE, b * SCALE) for q, a, b in decode_ranges)
    for clamp in (False, True):
        cases.append(_case("mixed", "mixed", window_size=(7, -1), mm_prefix_range=mixed_ranges, mm_prefix_clamp_sliding_window=clamp))
        cases.append(_case("decode", "decode", window_size=(7, -1), mm_prefix_range=decode_ranges, mm_prefix_clamp_sliding_window=clamp))
    cases.append(_case("mixed", "mixed", mm_prefix_range=mixed_ranges, sinks=True, softcap=4.0))
    # Verify batches with a draft tree's bias, alone and with the features it meets in serving.
    cases += [
        _case("verify", "verify", qq_bias="tree"),
        _case("verify", "verify", qq_bias="tree", sinks=True, softcap=4.0, window_size=(30, -1)),
        _case("verify", "verify", qq_bias="tree", alibi=True, use_alibi_sqrt=True, softmax_lse=True),
        _case("verify", "verify", qq_bias="tree", kv_dtype="float8_e4m3fn", dtype="bfloat16"),
        _case("verify", "verify", causal=(True, True, False, True), rswa_prefix_lens=(5, 70, 0, 61), rswa_window=6),
        _case("mixed", "mixed", causal=(False, True, False, True), mm_prefix_range=mixed_ranges),
        _case("mixed", "mixed", rswa_prefix_lens=(3, 0, 41, 9), rswa_window=7, mm_prefix_range=mixed_ranges),
    ]
    return cases


def edge_cases() -> list[Case]:
    """Segment boundaries, zero exp-sums, padding, extreme values."""
    t = TILE_HINT
    span = 2 * t  # with num_segments=4 and 8 tiles: each segment holds exactly 2 tiles
    dec = dict(query_lens=(1,))
    cases = [
        _case(f"seg-exact-{4 * span}", seq_lens=(4 * span,), num_segments=4, **dec),
        _case(f"seg-minus1-{4 * span - 1}", seq_lens=(4 * span - 1,), num_segments=4, **dec),
        _case(f"seg-plus1-{4 * span + 1}", seq_lens=(4 * span + 1,), num_segments=4, **dec),
        _case("seg-boundaries-batch", seq_lens=(span, span + 1, span - 1, 3 * span), query_lens=(1, 1, 1, 1),
              num_segments=3),
        _case("fewer-keys-than-segments", seq_lens=(3, 1, 5), query_lens=(1, 1, 1), num_segments=8),
        _case("kv-len-1", seq_lens=(1, 1), query_lens=(1, 1)),
        _case("kv-len-1-prefill", seq_lens=(1, 2), query_lens=(1, 2)),
        _case("window-outside-segments-decode", seq_lens=(10 * t, 7 * t + 3), query_lens=(1, 1),
              window_size=(t // 2, -1), num_segments=8),
        _case("window-outside-segments-chunked", seq_lens=(10 * t,), query_lens=(t + 5,), window_size=(t // 2, -1),
              num_segments=6),
        _case("window-0", seq_lens=(3 * t, 40), query_lens=(1, 7), window_size=(0, -1)),
        # Scores all far below zero where rows' first visited tiles are fully masked (a window that
        # starts past them), through 2D and each split: the online softmax must start from -inf, not 0.
        _case("aligned-logits-window", "chunked", aligned_logits=30.0, window_size=(t + 3, -1)),
        _case("aligned-logits-window-split", seq_lens=(6 * t + 5, 4 * t), query_lens=(t + 3, 1),
              aligned_logits=30.0, window_size=(t // 2, -1), num_segments=4),
        _case("aligned-logits-decode", "decode", aligned_logits=30.0, window_size=(t // 2 + 1, -1), num_segments=3),
        # Block sizes that are not powers of two, below and above the tile, on tables sized exactly
        # and read through a column stride.
        _case("block12-prefill", "prefill", block_size=12, table_slack=0),
        _case("block12-decode-split", "decode", block_size=12, layout="bt_colstrided", num_segments=3),
        _case("block8-decode-colstrided", "decode", block_size=8, layout="bt_colstrided", num_segments=3),
        _case("block24-chunked", "chunked", block_size=24, layout="bt_colstrided", table_slack=0),
        _case("block40-mixed-window", block_size=40, window_size=(19, -1), layout="bt_colstrided"),
        # An exactly sized table whose last, longest sequence ends on a tile boundary of every device,
        # attended non-causally: its unmasked walk ends at the table's last column (what ids read a
        # tile ahead must not step past; the sanitizer tier sees such a read, the numbers cannot).
        _case("exact-table-unmasked-end", seq_lens=(96, 256), query_lens=(5, 40), causal=False, table_slack=0),
        # A range table whose rows are all full (no unused entry to stop at), and a range that ends
        # exactly at the first query position of a split decode.
        _case("ranges-no-padding", "chunked", window_size=(5, -1), mm_prefix_range=((0, 44, 58), (1, 28, 40)),
              range_slack=0),
        _case("range-ends-at-decode-query", "decode", window_size=(3, -1), num_segments=4,
              mm_prefix_range=((0, 2, 16), (1, 10, 44), (2, 0, 79), (3, 20, 32)), range_slack=0),
        # A non-power-of-two GQA group through small split decodes (the fused merge).
        _case("gqa3-fused-merge", "decode", num_segments=3, **_gqa(3)),
        _case("gqa6-fused-merge", "decode", num_segments=4, table_slack=0, **_gqa(6)),
        # vLLM 0.33's arguments at their boundaries: a draft token whose bias hides every new key (with
        # no context it sees nothing), R-SWA prefixes of 0 and of the whole sequence and a window of
        # one key, sqrt-ALiBi at distance 0 (one key), a bidirectional sequence with a one-key window.
        _case("qqbias-dead-row", "prefill", qq_bias="dead-row", softmax_lse=True),
        _case("qqbias-dead-row-verify", "verify", qq_bias="dead-row", num_segments=3),
        _case("rswa-prefix-0-and-whole", "decode", rswa_prefix_lens=(0, 45, 0, 33), rswa_window=5, num_segments=3),
        _case("rswa-window-1", "chunked", rswa_prefix_lens=(7, 0), rswa_window=1),
        _case("alibi-sqrt-one-key", seq_lens=(1, 2), query_lens=(1, 2), alibi=True, use_alibi_sqrt=True),
        _case("causal-per-seq-window-0", "mixed", causal=(False, False, True, False), window_size=(0, -1)),
        _case("masked-rows-in-segments", seq_lens=(6 * t,), query_lens=(3 * t,), num_segments=5),
        _case("qlen0-in-batch", seq_lens=(30, 40, 17, 52), query_lens=(0, 5, 0, 1), pad_tokens=3),
        _case("qlen0-decode-padded", seq_lens=(30, 40, 17), query_lens=(1, 0, 1), pad_tokens=2),
        _case("extreme-logits-fp32", dtype="float32", logit_scale=40.0),
        _case("extreme-logits-fp16", logit_scale=12.0),
        # A negative scale with logits spanning more than float32's exponent range: a softmax that
        # takes the max of unscaled scores as if the scale were positive overflows exp2.
        _case("negative-scale-extreme-logits", logit_scale=40.0, softmax_scale_factor=-1.0),
        _case("negative-scale-extreme-logits-decode", "decode", logit_scale=40.0, softmax_scale_factor=-1.0),
        # A zero scale (uniform weights over the visible keys): masked scores must not become -inf x 0.
        _case("zero-scale", softmax_scale_factor=0.0),
        _case("zero-scale-decode", "decode", softmax_scale_factor=0.0, window_size=(20, -1)),
        _case("tiny-softcap", softcap=0.02, logit_scale=8.0),
        _case("huge-softcap", softcap=5000.0, logit_scale=8.0),
        _case("large-alibi", alibi=True, alibi_scale=60.0),
        _case("dominant-sinks", sinks=True, sink_scale=60.0),
        _case("dominant-sinks-decode", "decode", sinks=True, sink_scale=60.0),
        # fp8 output: 2^-7 puts the largest outputs (~3.5) at ~450, the top of e4m3; 2^-10 saturates many.
        _case("fp8out-top", out_dtype="float8_e4m3fn", output_scale=2.0 ** -7),
        # INT4 rows at the writer's boundaries: rotated rows that are constant (the scale clamps at its
        # floor; zero points 0 and 15) or of one sign (zero points 0 and 15, ordinary scales); and the
        # output rotated back before it is quantized to fp8.
        _case("int4-floor-rows", int4_rows="floor", **INT4),
        _case("int4-floor-rows-decode", "decode", int4_rows="floor", num_segments=3, **INT4),
        _case("int4-one-signed-rows", "chunked", int4_rows="one-signed", **INT4),
        _case("int4-fp8out", "decode", out_dtype="float8_e4m3fn", output_scale=2.0 ** -7, num_segments=2, **INT4),
        _case("fp8out-saturating", "decode", out_dtype="float8_e4m3fn", output_scale=2.0 ** -10),
        _case("exact-fit-table", table_slack=0),
        _case("exact-fit-table-decode", "decode", table_slack=0, num_segments=4),
        # Chunked attention, chunks of C = 16 (window 31, lookback 1): decode queries at positions
        # C*k - 1, C*k, C*k + 1 (the last key of a chunk, the first, the second).
        _case("chunk-boundaries-decode", seq_lens=(3 * t, 3 * t + 1, 3 * t + 2, 2 * t), query_lens=(1, 1, 1, 1),
              window_size=(2 * t - 1, -1), chunk_lookback=1, num_segments=3),
        _case("chunk-boundaries-prefill", seq_lens=(3 * t + 1, 2 * t - 1), query_lens=(3 * t + 1, t + 2),
              window_size=(2 * t - 1, -1), chunk_lookback=1),
        # C = 5: smaller than a tile and not dividing the block size; lookback 2.
        _case("chunk-small", "chunked", window_size=(14, -1), chunk_lookback=2),
        _case("chunk-small-decode", "decode", window_size=(14, -1), chunk_lookback=2, num_segments=4),
        # Lookback 0 (only the own chunk), and chunks wider than the keys (chunk 0 holds everything).
        _case("chunk-own-only", "chunked", window_size=(6, -1), chunk_lookback=0),
        _case("chunk-wider-than-seq", "mixed", window_size=(1000, -1), chunk_lookback=3),
        # Long decode context: segments wholly before the lookback chunks must not exist.
        _case("chunk-outside-segments-decode", seq_lens=(10 * t, 7 * t + 3), query_lens=(1, 1),
              window_size=(t - 1, -1), chunk_lookback=1, num_segments=8),
        # Prefix ranges at the sequence's start and at its end (the end range holds the last query).
        _case("ranges-start-end", "prefill", window_size=(4, -1), mm_prefix_range=((0, 0, 5), (1, 30, 36))),
        # A range crossing tile boundaries (3t, 4t) and a segment boundary (tiles 2 per segment: 4t),
        # starting left of the window and ending right of the first queries' diagonal.
        _case("range-across-tiles-segments", seq_lens=(6 * t,), query_lens=(3 * t,), window_size=(t // 2, -1),
              mm_prefix_range=((0, 2 * t + 3, 4 * t + 7),), num_segments=5),
        _case("range-across-segments-decode", seq_lens=(6 * t, 5 * t), query_lens=(1, 1), window_size=(3, -1),
              mm_prefix_range=((0, t - 2, 6 * t - 1), (1, 2 * t + 1, 5 * t - 1)), num_segments=4),
        # Ranges partly outside the window, with and without the clamp.
        _case("range-past-window", "chunked", window_size=(5, -1), mm_prefix_range=((0, 44, 58), (1, 28, 40))),
        _case("range-past-window", "chunked", window_size=(5, -1), mm_prefix_range=((0, 44, 58), (1, 28, 40)),
              mm_prefix_clamp_sliding_window=True),
        # Every query inside one range: bidirectional attention over the whole sequence.
        _case("queries-in-one-range", "prefill", window_size=(3, -1), mm_prefix_range=((0, 0, 23), (1, 0, 36))),
        # Overlapping ranges (their union around a query is one interval), and ranges with chunks.
        _case("ranges-overlapping", "chunked", window_size=(2, -1), mm_prefix_range=((0, 45, 52), (0, 50, 57), (1, 33, 38))),
        _case("ranges-with-chunks", "chunked", window_size=(9, -1), chunk_lookback=1,
              mm_prefix_range=((0, 47, 59), (1, 25, 36))),
    ]
    return cases


def poison_cases() -> list[Case]:
    return [
        _case("poison-mixed", window_size=(-1, -1)),
        _case("poison-decode", "decode"),
        _case("poison-window", window_size=(11, -1)),
        _case("poison-window-decode", "decode", window_size=(9, -1), num_segments=4),
        _case("poison-varlen", "varlen", block_size=48),
        _case("poison-head-padded", layout="head_padded", head_size=40),
        _case("poison-fp8", kv_dtype="float8_e4m3fn"),
        _case("poison-qlen0", seq_lens=(30, 40, 17), query_lens=(0, 5, 1), pad_tokens=2),
        # Non-causal attention sees keys right of the diagonal: on lengths that end mid-block the
        # tail slots past seq_len are the first thing an unbounded tile would read.
        _case("poison-noncausal", causal=False),
        _case("poison-noncausal-window", causal=False, window_size=(9, 4)),
        _case("poison-noncausal-decode", "decode", causal=False, num_segments=3),
        _case("poison-exact-fit", "varlen", table_slack=0),
        # Chunked attention: keys before the lookback chunks are poisoned (window 23 alone would see some).
        _case("poison-chunked-attn", window_size=(23, -1), chunk_lookback=1),
        _case("poison-chunked-attn-decode", "decode", window_size=(11, -1), chunk_lookback=2, num_segments=4),
        # Per-token-head caches: NaN/Inf in the scale-cache entries (and fp8 rows) of every hidden slot.
        _case("poison-int8-pertokenhead", kv_dtype="int8", kv_quant_mode="int8_per_token_head", window_size=(11, -1)),
        _case("poison-fp8-pertokenhead-decode", "decode", kv_dtype="float8_e4m3fn", kv_quant_mode="fp8_per_token_head",
              window_size=(9, -1), num_segments=4),
        _case("poison-int4-pertokenhead", window_size=(11, -1), **INT4),
        _case("poison-int4-pertokenhead-decode", "decode", window_size=(9, -1), num_segments=4, **INT4),
        _case("poison-int8-pertokenhead-ranges", "chunked", kv_dtype="int8", kv_quant_mode="int8_per_token_head",
              window_size=(5, -1), mm_prefix_range=((0, 44, 58), (1, 28, 40))),
        _case("poison-fp8q", "chunked", dtype="float8_e4m3fn", kv_dtype="float8_e4m3fn", out_dtype="bfloat16",
              window_size=(7, -1)),
        _case("poison-fp8-descale-seqhead", "decode", kv_dtype="float8_e4m3fn", descale_per_head=True,
              window_size=(9, -1), num_segments=3),
        # Prefix ranges: slots outside both the window and every range a query is in are poisoned,
        # including the keys the clamp excludes and those past a range end or past seq_len.
        _case("poison-prefix-ranges", "chunked", window_size=(5, -1), mm_prefix_range=((0, 44, 58), (1, 28, 40))),
        _case("poison-prefix-ranges", "chunked", window_size=(5, -1), mm_prefix_range=((0, 44, 58), (1, 28, 40)),
              mm_prefix_clamp_sliding_window=True),
        _case("poison-prefix-ranges-decode", "decode", window_size=(3, -1),
              mm_prefix_range=((0, 3, 16), (2, 50, 79), (3, 0, 40)), num_segments=4),
        # R-SWA: keys between the prefix and the window are poisoned; bidirectional sequences: only
        # what lies past seq_len or outside the symmetric window.
        _case("poison-rswa", "chunked", rswa_prefix_lens=(9, 3), rswa_window=6),
        _case("poison-rswa-decode", "decode", rswa_prefix_lens=(4, 0, 20, 11), rswa_window=9, num_segments=4),
        _case("poison-causal-per-seq", "mixed", causal=(False, True, False, True), window_size=(6, -1)),
        _case("poison-qqbias", "verify", qq_bias="tree", window_size=(12, -1)),
        _case("poison-ranges-no-padding", "chunked", window_size=(5, -1),
              mm_prefix_range=((0, 44, 58), (1, 28, 40)), range_slack=0),
        _case("poison-block12-colstrided", "mixed", block_size=12, layout="bt_colstrided", window_size=(9, -1)),
        # On Hopper+ the reduction is a programmatic dependent of the 3D kernel, scheduled while that
        # kernel runs: a long walk (2 segments of 8,192 keys, ~20 us) into the NaN workspace shows a
        # reduction that reads before the 3D kernel is done. Heads of 256: a merge the planner leaves
        # to the reduction launch (smaller ones merge in the 3D kernel). GPU only: the interpreter
        # runs one launch after the other, and would take minutes over 16k keys.
        *([_case("poison-long-split", seq_lens=(16384,), query_lens=(1,), num_segments=2, head_size=256)]
          if ON_GPU else []),
    ]


def layout_cases() -> list[Case]:
    cases = [_case("layout", layout=layout) for layout in LAYOUTS if layout not in ("contiguous", "qq_bias_strided")]
    cases.append(_case("layout", "verify", layout="qq_bias_strided", qq_bias="tree"))
    cases += [_case("layout-decode", "decode", layout=layout) for layout in ("kv_combined", "head_major")]
    return cases


def cross_section_cases() -> list[Case]:
    """Cases that each carry several features and one layout: the quick tier's candidates. Those the
    quick tier does not select run in the numerics tier."""
    t = TILE_HINT
    return [
        _case("quick-decode-window-sinks", "decode", window_size=(20, -1), sinks=True, num_segments=3, layout="kv_combined"),
        # The window makes later segments empty for earlier queries (3D) and leaves rows with no
        # visible key in the first tiles they meet (2D): both need the -inf guards.
        _case("quick-chunked-window-softcap-alibi", "chunked", window_size=(19, -1), softcap=4.0, alibi=True,
              layout="head_major"),
        _case("quick-tiny-softcap-decode", "decode", softcap=0.02, logit_scale=8.0, layout="fused_qkv"),
        _case("quick-varlen", "varlen", dtype="bfloat16", block_size=48, layout="bt_strided", **_gqa(5)),
        _case("quick-fp8kv", kv_dtype="float8_e4m3fn", dtype="float32", layout="kv_outer"),
        # Non-causal without a window: every tile is unmasked for every row, the last one included,
        # so it is the case that sees a tile bound that forgets seq_len.
        _case("quick-fp8kv-bf16-noncausal", "decode", kv_dtype="float8_e4m3fn", dtype="bfloat16", causal=False,
              layout="out_strided"),
        # fp8 output across the top of the e4m3 range: |out| ~ 1 lands at ~256 / 2^-8, the largest
        # values saturate at 448.
        _case("quick-fp8kv-fp8out", "chunked", kv_dtype="float8_e4m3fn", out_dtype="float8_e4m3fn",
              output_scale=2.0 ** -8, head_size=72),
        _case("quick-qlen0-padded", seq_lens=(30, 40, 17), query_lens=(0, 5, 1), pad_tokens=2, layout="head_padded",
              head_size=40, table_slack=0),
        # Cache blocks smaller than the tile (8 keys; the interpreter's tile is 16): a tile spans blocks.
        _case("quick-block8-window", window_size=(21, -1), block_size=8),
        # Query lengths around the narrow launch's block (4 tokens at 4 queries per KV head): sequences
        # of 1 and 4 tokens go to the decode-sized launch, 5 and 30 to the wide one.
        _case("quick-mixed-narrow-boundary", seq_lens=(40, 33, 29, 60), query_lens=(1, 4, 5, 30), sinks=True),
        # softcap >> |score|: softcap * tanh(s / softcap) ~ s needs tanh accurate for tiny arguments.
        _case("quick-unlike-strides", "decode", layout="kv_unlike", softcap=1e5),
        # Non-causal with a two-sided window on lengths that end mid-block: tiles past the diagonal
        # must still stop at seq_len (the bug of vLLM PR #47305).
        _case("quick-noncausal-window", causal=False, window_size=(13, 5), alibi=True, sinks=True),
        # Chunked attention with chunks of 5 keys (under a tile, not dividing the block size).
        _case("quick-chunked-attn", "chunked", window_size=(9, -1), chunk_lookback=1),
        # Prefix ranges running past the queries' diagonal and past the window, one of them clamped.
        _case("quick-prefix-ranges", "chunked", window_size=(5, -1), mm_prefix_range=((0, 44, 58), (1, 28, 40)),
              mm_prefix_clamp_sliding_window=True, num_segments=3),
        # Per-token-head quantized caches, int8 and fp8.
        _case("quick-int8-pertokenhead-bf16-decode", "decode", dtype="bfloat16", kv_dtype="int8",
              kv_quant_mode="int8_per_token_head", num_segments=3),
        _case("quick-int8-pertokenhead", "chunked", kv_dtype="int8", kv_quant_mode="int8_per_token_head", window_size=(19, -1),
              layout="kv_combined"),
        _case("quick-fp8-pertokenhead-decode", "decode", kv_dtype="float8_e4m3fn", kv_quant_mode="fp8_per_token_head",
              dtype="bfloat16", num_segments=3),
        # vLLM's INT4 cache: rotation groups of 16 in a padded head of 80, a head-major cache, one KV
        # head's rows of one sign (zero points 0 and 15), the other's ordinary.
        _case("quick-int4-pertokenhead", "chunked", head_size=80, window_size=(19, -1), sinks=True, num_segments=3,
              layout="head_major", int4_rows="one-signed", **INT4),
        # fp8 queries (fp8 x fp8 QK^T, f16 P x V) with bf16 output, and with fp8 output.
        _case("quick-fp8q-bf16out", "chunked", dtype="float8_e4m3fn", kv_dtype="float8_e4m3fn", out_dtype="bfloat16",
              window_size=(19, -1)),
        _case("quick-fp8q-fp8out-decode", "decode", dtype="float8_e4m3fn", kv_dtype="float8_e4m3fn",
              out_dtype="float8_e4m3fn", sinks=True, descale_per_head=True, num_segments=3),
        # bf16 queries past f16's range against an fp8 cache: the kernels' f16 operands must rescale them.
        _case("quick-fp8kv-huge-bf16-queries", "decode", kv_dtype="float8_e4m3fn", dtype="bfloat16",
              logit_scale=2.0 ** 17, num_segments=2),
        # Per-token-head fp8 V scales of ~70: P x V's f16 operands hold p * scale only normalized per tile.
        _case("quick-fp8-pertokenhead-large-values", "decode", kv_dtype="float8_e4m3fn", kv_quant_mode="fp8_per_token_head",
              dtype="bfloat16", value_scale=2.0 ** 12, num_segments=2),
        # fp8 cache with one descale per (sequence, KV head).
        _case("quick-fp8kv-descale-seqhead", "decode", kv_dtype="float8_e4m3fn", descale_per_head=True,
              num_segments=2),
        _case("quick-prefix-ranges-unclamped", "chunked", window_size=(5, -1), mm_prefix_range=((0, 40, 53), (1, 30, 38))),
        # A negative scale: the kernels' scale folding (scores unscaled until exp2) needs a positive one.
        _case("quick-negative-scale", "chunked", logit_scale=40.0, softmax_scale_factor=-1.0, window_size=(19, -1)),
        # A zero scale: uniform weights, and masked scores that a folded scale would turn into -inf x 0.
        _case("quick-zero-scale-decode", "decode", softmax_scale_factor=0.0, window_size=(20, -1), num_segments=2),
        # A verify batch with a draft tree's bias (strided, one dead row), sqrt-ALiBi and the
        # log-sum-exp out; per-sequence causal flags with R-SWA and prefix ranges.
        # Boundaries the field-coverage rule alone does not reach: scores all far below zero past a
        # fully masked first tile, a one-key window, a range ending at a split decode's query, an
        # exactly sized table of non-power-of-two blocks read through a column stride, a full range
        # table, a non-power-of-two GQA group in the fused merge, unlike descale shapes.
        _case("quick-aligned-logits-window", seq_lens=(6 * t + 5, 4 * t), query_lens=(t + 3, 1), aligned_logits=30.0,
              window_size=(t // 2, -1), num_segments=4),
        _case("quick-window-0-gqa6", "decode", window_size=(0, -1), num_segments=4, table_slack=0,
              descale_per_head="v", kv_dtype="float8_e4m3fn", block_size=8, layout="bt_colstrided", **_gqa(6)),
        _case("quick-block12-colstrided", "mixed", block_size=12, layout="bt_colstrided", table_slack=0,
              mm_prefix_range=((0, 2, 49), (1, 5, 22), (2, 40, 69), (3, 0, 8)), range_slack=0),
        _case("quick-range-ends-at-decode-query", "decode", window_size=(3, -1), num_segments=4,
              mm_prefix_range=((0, 2, 16), (1, 10, 44), (2, 0, 79), (3, 20, 32))),
        _case("quick-verify-tree", "verify", qq_bias="dead-row", layout="qq_bias_strided", alibi=True,
              use_alibi_sqrt=True, softmax_lse=True, num_segments=3),
        _case("quick-causal-per-seq-rswa", "mixed", causal=(False, True, True, False), rswa_prefix_lens=(6, 0, 31, 2),
              rswa_window=8, mm_prefix_range=((1, 3, 12), (2, 55, 66))),
    ]


# Cross-section cases the quick tier keeps whatever the kill matrix says: boundary classes that no
# catalog mutant stands for (the bugs that showed them are not in the catalog).
QUICK_PINNED = {
    "quick-range-ends-at-decode-query": "a prefix range ending exactly at a split decode's first query",
}

# The quick tier: the fewest cross-section cases that kill every catalog mutant the full CPU tiers
# kill, plus cases until every class ``coverage`` finds in any table is covered. Chosen by
# ``python -m triage cover`` from ``triage/kill_matrix.json``; ``tests/test_quick_cover.py`` checks both.
QUICK_SELECTION = (
    "quick-chunked-window-softcap-alibi", "quick-tiny-softcap-decode", "quick-varlen", "quick-fp8kv",
    "quick-fp8kv-bf16-noncausal", "quick-fp8kv-fp8out", "quick-qlen0-padded", "quick-block8-window",
    "quick-unlike-strides", "quick-noncausal-window", "quick-chunked-attn", "quick-prefix-ranges",
    "quick-int8-pertokenhead-bf16-decode", "quick-int8-pertokenhead", "quick-int4-pertokenhead",
    "quick-fp8q-bf16out", "quick-fp8q-fp8out-decode", "quick-fp8kv-huge-bf16-queries",
    "quick-fp8-pertokenhead-large-values", "quick-negative-scale", "quick-zero-scale-decode",
    "quick-aligned-logits-window", "quick-window-0-gqa6", "quick-block12-colstrided",
    "quick-range-ends-at-decode-query", "quick-verify-tree", "quick-causal-per-seq-rswa",
)


def quick_cases() -> list[Case]:
    """The quick tier's cases (``QUICK_SELECTION``), in cross-section order."""
    return [c for c in cross_section_cases() if c.label in QUICK_SELECTION]


def ids(cases) -> list[str]:
    return [c.name for c in cases]


# What a case covers, for the quick tier's cross-section check. Every field that is not a size is
# a feature when it differs from its default (so a new Case field is covered automatically);
# enumerations count each value; sizes count their classes. Magnitudes are the edge tier's job.
_SIZE_FIELDS = {"label", "seq_lens", "query_lens", "num_q_heads", "num_kv_heads", "head_size", "block_size"}
_VALUE_FIELDS = {"dtype", "kv_dtype", "out_dtype", "layout"}
_MAGNITUDE_FIELDS = {"logit_scale", "value_scale", "alibi_scale", "sink_scale"}


def _power_of_2(n: int) -> bool:
    return n & (n - 1) == 0


def coverage(case: Case) -> frozenset[str]:
    """The feature, dtype, layout and size classes one case exercises."""
    tags = set()
    for f in fields(Case):
        value = getattr(case, f.name)
        if f.name in _VALUE_FIELDS:
            tags.add(f"{f.name}={value}")
        elif f.name not in _SIZE_FIELDS | _MAGNITUDE_FIELDS and value != f.default:
            tags.add(f.name)
    if case.window_size[0] >= 0:
        tags.add("window-left")
    if case.window_size[1] >= 0 and not case.causal:
        tags.add("window-right")
    if case.alibi and case.sinks:
        tags.add("alibi+sinks")
    if case.kv_dtype:
        tags.add(f"kv_dtype={case.kv_dtype} with dtype={case.dtype}")
    for q_len, seq_len in zip(case.query_lens, case.seq_lens):
        tags.add("q_len=0" if q_len == 0 else "decode" if q_len == 1 else "prefill" if q_len == seq_len else "chunked")
    ratio = case.num_q_heads // case.num_kv_heads
    if not _power_of_2(case.head_size):
        tags.add("head_size not a power of 2")
    if not _power_of_2(ratio):
        tags.add("queries per KV head not a power of 2")
    if not _power_of_2(case.block_size):
        tags.add("block_size not a power of 2")
    return frozenset(tags)


# Every table by the name the main job, the minimizer and the memsafety driver know it by.
TABLES = {
    "quick": quick_cases,
    "cross_section": cross_section_cases,
    "numerics": numerics_cases,
    "features": feature_cases,
    "edge": edge_cases,
    "poison": poison_cases,
    "layout": layout_cases,
}


def all_cases(tables=tuple(TABLES)) -> list[Case]:
    """The cases of ``tables``, each name once, in table order."""
    seen, cases = set(), []
    for table in tables:
        for case in TABLES[table]():
            if case.name not in seen:
                seen.add(case.name)
                cases.append(case)
    return cases


def find(name: str) -> Case:
    """The case with this name, or the only case with this label."""
    cases = all_cases()
    for case in cases:
        if case.name == name:
            return case
    labelled = [c for c in cases if c.label == name]
    if len(labelled) == 1:
        return labelled[0]
    hint = f"; the label {name!r} names {len(labelled)} cases" if labelled else ""
    raise KeyError(f"no case named {name!r} in attention_suite.tables{hint}")
