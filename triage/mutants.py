"""The mutation catalog: realistic kernel bugs, declared as data, applied to a *copy* of ``paged_kernels/``.

Each mutant is one bug made of one or more exact textual edits. An edit's target must occur
exactly once in its file, so a kernel change that moves or rewrites the code fails the
catalog loudly (``check_catalog``) instead of silently producing an unmutated "mutant".
Nothing here touches the shipped kernels: ``materialize`` copies the package first.

Mutants left out on purpose, because they are *equivalent* in this kernel (no input can tell
them apart from the shipped code, so no test could kill them):

- the literal "divide by the exp-sum without the zero guard" (``acc / l_i`` in the 2D epilogue,
  ``/ denom`` in the reduction): every valid query row sees at least its own key, so its
  exp-sum is >= 1; rows with a zero exp-sum are padding rows that the store masks out. The
  zero exp-sums that do occur are per *segment* (a prefill row whose keys all lie in other
  segments), so the catalog's ``expsum-normalized-partials`` divides there.
- the block-table read alone without its mask: the K/V gathers stay masked, so the garbage
  entry is never dereferenced (value-equivalent; only an out-of-bounds *read* of the table,
  which compute-sanitizer would report on a GPU). ``bt-unmasked`` also trusts the entry.
- the fused merge's ``tl.debug_barrier()`` before its arrival atomic, dropped: Triton (3.6, sm_90)
  broadcasts the atomic's result through shared memory and puts a CTA barrier before it anyway, so
  the SASS is identical at every fused-merge sweep point (bf16, fp8, int8, INT4 at bs16 L4096, bf16
  bs4 L4096; ``benchmarks.disasm --dump``). It survived the ordering stress test on an H100. The
  kernel keeps the barrier: the order must not rest on a compiler's incidental one.
"""

from __future__ import annotations

import ast
import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
KERNELS_DIR = REPO_ROOT / "paged_kernels"


@dataclass(frozen=True)
class Edit:
    file: str  # relative to paged_kernels/
    target: str  # exact text, must occur exactly once in the file
    replacement: str


@dataclass(frozen=True)
class Mutant:
    name: str
    description: str
    edits: tuple[Edit, ...]
    gpu_only: bool = False  # cannot be caught on CPU; the note says where it is caught
    note: str = ""

    def sources(self, kernels_dir: Path = KERNELS_DIR) -> dict[str, str]:
        """{file: mutated text} for every file this mutant edits (raises CatalogError on drift)."""
        texts: dict[str, str] = {}
        for edit in self.edits:
            text = texts.get(edit.file)
            if text is None:
                text = (kernels_dir / edit.file).read_text()
            count = text.count(edit.target)
            if count != 1:
                raise CatalogError(f"mutant {self.name!r}: target occurs {count} times in paged_kernels/{edit.file} "
                                   f"(expected exactly 1; the kernel changed, update the catalog):\n{edit.target}")
            texts[edit.file] = text.replace(edit.target, edit.replacement)
        return texts


class CatalogError(RuntimeError):
    pass


def _m(name, description, *edits, file="_attention.py", **kw) -> Mutant:
    return Mutant(name, description, tuple(Edit(file, t, r) for t, r in edits), **kw)


def _schedule(name, description, *edits, killed_by: str, file="plan.py") -> Mutant:
    """A performance bug: outputs stay bit-identical, so only a planner or compile check can kill it."""
    return _m(name, f"{description}; outputs are unchanged, only the schedule", *edits, file=file,
              note=f"a performance bug no output shows: killed by {killed_by}")


CATALOG: tuple[Mutant, ...] = (
    _m("pth-f16-values-unnormalized",
       "per-token-head fp8 V: p * scale goes to f16 without the tile's largest scale divided out (overflow)",
       ("p_v = p * (v_row_scale * (1.0 / v_top))[None, :]", "p_v = p * v_row_scale[None, :]"),
       ("input_precision=DOT_PRECISION) * v_top", "input_precision=DOT_PRECISION)")),
    _m("f16-queries-unscaled",
       "fp8 cache: bf16 queries become f16 dot operands without the power-of-two rescale (overflow past 65504)",
       ("return (x.to(tl.float32) * up).to(tl.float16), scale * down", "return x.to(tl.float16), scale")),
    _m("no-rescale",
       "online softmax: the accumulator is not rescaled by exp2(m_old - m_new) when the running max grows",
       ("acc = acc * alpha[:, None] + pv", "acc = acc + pv")),
    _m("merge-no-max-correction",
       "segment merge adds partial outputs and exp-sums as if every segment had the same max",
       ("weight = tl.exp2(seg_max - top[:, None])", "weight = tl.where(valid, 1.0, 0.0)")),
    _m("merge-max-shift-dropped",
       "segment merge weights by exp2(m_s) instead of exp2(m_s - m): overflows, and disagrees with the sink term",
       ("weight = tl.exp2(seg_max - top[:, None])", "weight = tl.exp2(seg_max)")),
    _m("merge-natural-exp",
       "segment merge uses exp() on log2-unit maxima (units mix-up)",
       ("weight = tl.exp2(seg_max - top[:, None])", "weight = tl.exp(seg_max - top[:, None])")),
    _m("expsum-normalized-partials",
       "3D kernel stores acc / l per segment with no zero guard (and the merge re-weights by l): "
       "a row that sees no key in a segment divides by a zero exp-sum",
       ("tl.store(acc_ptrs, acc, mask=row_valid[:, None])",
        "tl.store(acc_ptrs, acc / l_i[:, None], mask=row_valid[:, None])"),
       ("    return weight, denom, top\n", "    return weight * seg_sum, denom, top\n")),
    _m("bt-unmasked",
       "masked phase reads block-table entries without the key mask and gathers V from whatever block "
       "they name (keys past the sequence end / outside the window)",
       ("phys_block = tl.load(block_table_row + block_index * stride_bt_blk, mask=key_valid, other=0)",
        "phys_block = tl.load(block_table_row + block_index * stride_bt_blk)"),
       ("block_ids = tl.load(block_table_row + table_col * stride_bt_blk, mask=col_valid, other=0)",
        "block_ids = tl.load(block_table_row + table_col * stride_bt_blk)"),
       ("col_valid = col_valid & (table_col * BLOCK_SIZE < key_hi) & ((table_col + 1) * BLOCK_SIZE > key_lo)",
        "col_valid = col_valid"),
       ("mask = key_valid[:, None] & dim_valid[None, :]", "mask = dim_valid[None, :]")),
    _m("block-index-by-tile",
       "a key's block-table column counted in KV tiles, not cache blocks (power-of-two blocks; right only "
       "where the tile and the block hold the same number of keys)",
       ("block_index = (key_u // BLOCK_SIZE).to(tl.int32, bitcast=True)",
        "block_index = (key_u // TILE).to(tl.int32, bitcast=True)"),
       ("\n    table_col = (tile * TILE) // BLOCK_SIZE", "\n    table_col = (tile * TILE) // TILE"),
       ("\n                table_col = (tile * TILE) // BLOCK_SIZE", "\n                table_col = (tile * TILE) // TILE")),
    _m("block-ids-interleaved",
       "a tile's per-block table entries broadcast across its keys in the wrong order: key k takes the id "
       "of block k % blocks-per-tile instead of k // block_size",
       ("tl.reshape(tl.broadcast_to(block_ids[:, None], [BLOCKS_PER_TILE, TILE // BLOCKS_PER_TILE]),",
        "tl.reshape(tl.broadcast_to(block_ids[None, :], [TILE // BLOCKS_PER_TILE, BLOCKS_PER_TILE]),")),
    _m("table-ahead-off-by-one",
       "prefill's block-table ids read a tile ahead are read for the current tile again: each tile after the "
       "first gathers its K/V from the previous tile's blocks",
       ("_tile_block_ids(block_table_row, stride_bt_blk, tile + 1, tile_end,",
        "_tile_block_ids(block_table_row, stride_bt_blk, tile, tile_end,")),
    _m("tile-vs-block",
       "key index of a KV tile computed with the cache block size where the tile size belongs",
       ("key = tile * TILE + offs", "key = tile * BLOCK_SIZE + offs")),
    _m("window-off-by-one",
       "sliding-window test drops the key exactly window_left positions back",
       ("(distance <= window_left)", "(distance < window_left)")),
    _m("causal-off-by-one",
       "causal/right-window test lets a query see one future key",
       ("(-distance <= window_right)", "(-distance <= window_right + 1)")),
    _m("softcap-naive-tanh",
       "softcap through (exp(x) - exp(-x)) / (exp(x) + exp(-x)): inf / inf = NaN once |score / softcap| > 88",
       ("return tl.where(ax < TANH_POLY_BOUND, small, large)",
        "return (tl.exp(x) - tl.exp(-x)) / (tl.exp(x) + tl.exp(-x))")),
    _m("int32-offsets",
       "cache offsets computed in int32: block * stride wraps past 2^31 elements",
       ("phys_block = tl.minimum(block_u, num_blocks_u - 1).to(tl.int64)", "phys_block = tl.minimum(block_u, num_blocks_u - 1).to(tl.int32, bitcast=True)"),
       gpu_only=True,
       note="only a cache past 2^31 elements (~8 GB) shows it: killed by the GPU 'stress' tier "
            "(tests/test_layout.py::test_cache_past_2_31_elements); no CPU tier can allocate it"),
    _m("v-stride",
       "V tiles gathered with K's block/slot/dim strides",
       ("v_tile = _load_kv_tile(v_base, phys_block, slot, stride_v_blk, stride_v_slot, stride_v_dim, dims,",
        "v_tile = _load_kv_tile(v_base, phys_block, slot, stride_k_blk, stride_k_slot, stride_k_dim, dims,")),
    _m("reduce-skips-grid-wait",
       "the reduction, launched as a programmatic dependent of the 3D kernel, reads the partials "
       "without waiting for that kernel to finish (no gdc_wait)",
       ("gdc_wait()  # metadata above is the caller's; the partials below are the 3D kernel's", "pass"),
       gpu_only=True,
       note="Hopper or later only (the interpreter and older GPUs launch the reduction plainly): "
            "tests/test_poison.py::test_quick_reduction_waits_for_the_split_kernel (a 16k-key 3D walk into "
            "a NaN workspace); the short split cases of the quick tier finish before the reduction reads"),
    _m("reduce-all-segments",
       "reduction reads every segment slot, including segments past `active` that were never written",
       ("segs = tl.arange(0, SEGMENTS_PAD)\n    valid = head_valid[:, None] & (segs < active)[None, :]",
        "segs = tl.arange(0, SEGMENTS_PAD)\n    valid = head_valid[:, None] & (segs < num_segments)[None, :]")),
    _m("seq-grid-full-block-skipped",
       "a sequence-indexed launch skips sequences of exactly BLOCK_Q tokens (decodes when BLOCK_Q is 1, "
       "a mixed batch's narrow launch at its block size)",
       ("    return (q_len == 0) | (q_len > BLOCK_Q)", "    return (q_len == 0) | (q_len >= BLOCK_Q)")),
    _m("fused-merge-all-segments",
       "the fused merge reads every padded segment slot, including segments past `active` never written",
       ("segs = tl.arange(0, MERGE_SEGMENTS)\n    valid = head_valid[:, None] & (segs < active)[None, :]",
        "segs = tl.arange(0, MERGE_SEGMENTS)\n    valid = head_valid[:, None] & (segs < MERGE_SEGMENTS)[None, :]")),
    _m("fused-merge-counter-kept",
       "the fused merge's last program leaves its arrival counter where it is: the next call on the workspace "
       "merges early (or never)",
       ("tl.store(counter_ptr, 0)  # each launch", "pass  # each launch")),
    _m("fused-merge-counter-per-head",
       "arrival counters indexed by KV head only: every query block of a batch counts on the same one",
       ("counter_ptr = merge_counter_ptr + (tl.program_id(0) * tl.num_programs(1) + kv_head)",
        "counter_ptr = merge_counter_ptr + kv_head"),
       gpu_only=True,
       note="the interpreter runs a row's segment programs back to back (grid z innermost), so a shared "
            "counter still counts one row at a time; on a GPU rows interleave: split decode cases of more "
            "than one sequence in the quick and numerics tiers"),
    _m("fused-merge-no-sink",
       "the fused merge forgets the sink logit in the normalizer (the reduction launch keeps it)",
       ("""part, valid, sinks_ptr, heads, head_valid,
                                              USE_SINKS, ".cg")""",
        """part, valid, sinks_ptr, heads, head_valid,
                                              False, ".cg")""")),
    _m("gqa-interleaved",
       "GQA head mapping interleaved (query head h uses KV head h % num_kv_heads, not h // group)",
       ("row_head = kv_head * NUM_QUERIES_PER_KV + rows % NUM_QUERIES_PER_KV",
        "row_head = kv_head + (rows % NUM_QUERIES_PER_KV) * tl.num_programs(1)")),
    _m("alibi-sign",
       "ALiBi bias with the wrong sign (rewards distant keys)",
       ("(key[None, :] - row_pos[:, None]).to(tl.float32)", "(row_pos[:, None] - key[None, :]).to(tl.float32)")),
    _m("no-v-descale",
       "fp8 KV cache: the V descale is never applied to the accumulator",
       ("acc = acc * tl.load(v_descale_ptr)", "acc = acc")),
    _m("sink-missing-in-merge",
       "3D path: the reduction leaves the sink out of the denominator",
       ("denom += tl.exp2(sink - top)", "denom += 0.0")),
    _m("sink-in-every-segment",
       "3D path: every segment starts its softmax from the sink, and the reduction adds it again",
       ("if USE_SINKS and not SPLIT_KV:", "if USE_SINKS:")),
    _m("masked-row-nan",
       "no guard for rows that have seen no visible key yet: exp2(-inf - -inf) = NaN",
       ('m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)', "m_shift = m_new")),
    _m("unmasked-tile-floor",
       "first fully visible tile rounded down: a partly visible tile skips masking",
       ("tile_b = tl.minimum(tl.maximum(tl.cdiv(all_lo, TILE), tile_a), tile_d)",
        "tile_b = tl.minimum(tl.maximum(all_lo // TILE, tile_a), tile_d)")),
    _m("segment-tiles-floor",
       "tiles per segment rounded down: the last tiles of a sequence belong to no launched segment",
       ("tiles_per_segment = tl.cdiv(num_tiles, num_segments)", "tiles_per_segment = num_tiles // num_segments")),
    _m("segment-layout-decode-only",
       "segment layout starts the window at the last query (decode assumption): chunked prefill with a "
       "window on the 3D path loses keys of its earlier queries",
       ("first_key = tl.maximum(seq_len - q_len - window_left, 0)",
        "first_key = tl.maximum(seq_len - 1 - window_left, 0)")),
    _m("qblock-no-seq-padding",
       "query-block -> sequence search forgets the one-block-per-sequence padding of the grid",
       ("start += mid", "start += 0")),
    _m("store-without-row-mask",
       "2D epilogue stores every row of the block, past the sequence's last query",
       ("_store_output(o_ptrs, result, row_valid[:, None] & dim_valid[None, :],",
        "_store_output(o_ptrs, result, dim_valid[None, :],")),
    _m("scale-not-log2",
       "softmax scale passed in natural-log units to an exp2 softmax",
       ("    qk_scale = softmax_scale * LOG2E\n", "    qk_scale = softmax_scale\n"), file="validate.py"),
    # Beyond the kernels: the planner and the argument checks are shipped code too.
    _m("planner-mistuned",
       "split-KV planner aims at 8 programs per SM instead of the measured 2 (over-splits decode)",
       ("\nPROGRAMS_PER_SM = 2\n", "\nPROGRAMS_PER_SM = 8\n"), file="plan.py"),
    _m("stale-merge-counters-accepted",
       "checked mode launches on a workspace whose merge counters are not zero (the fused merge then merges "
       "early or never) instead of refusing it",
       ("    if checked and plan.fused_merge and workspace is not None and bool(workspace.merge_counters.any()):",
        "    if False:"), file="api.py"),
    _m("decode-grid-by-block",
       "decode launches count query blocks again: every program searches cu_seqlens_q for its sequence "
       "(dependent loads before its first KV read) and surplus programs exit",
       ("    seq_grid = (decode or (verify and one_block_per_seq)) and not batch_invariant\n",
        "    seq_grid = verify and one_block_per_seq and not batch_invariant\n"), file="plan.py"),
    _m("verify-grid-by-block",
       "verify launches whose sequences fit one query block count query blocks again: one surplus program "
       "per sequence, and every program searches cu_seqlens_q",
       ("    seq_grid = (decode or (verify and one_block_per_seq)) and not batch_invariant\n",
        "    seq_grid = decode and not batch_invariant\n"), file="plan.py"),
    _m("fused-merge-never",
       "split decode always launches the reduction, small merges included (Decision [Fused merge])",
       ("    fused_merge = (path == \"3d\" and decode", "    fused_merge = False and (path == \"3d\" and decode"),
       file="plan.py"),
    _m("fused-merge-wide",
       "one program merges 32 segments of 4 heads (bs1 decode) instead of the reduction launch, which was "
       "faster there (Decision [Fused merge])",
       ("\nFUSED_MERGE_MAX_FLOATS = 4096\n", "\nFUSED_MERGE_MAX_FLOATS = 16384\n"), file="plan.py"),
    _schedule("prefill-pipeline-shallow",
              "prefill reads the block-table ids in the loop again: at three stages each KV walk iteration waits "
              "for every copy in flight (Decision [Block-table ids a tile ahead])",
              ("table_ahead = not (decode and not batch_invariant) or num_stages <= 2", "table_ahead = False"),
              killed_by="the sm_90 compile check test_prefill_keeps_kv_copies_in_flight_across_iterations (quick; "
                        "needs Triton's cuobjdump) and the planner test "
                        "test_prefill_sized_launches_load_the_block_table_one_tile_ahead"),
    _schedule("decode-table-in-loop",
              "two-stage decode copies each tile's block-table ids in the loop again instead of a tile ahead "
              "(Decision [Block-table ids a tile ahead])",
              ("table_ahead = not (decode and not batch_invariant) or num_stages <= 2",
               "table_ahead = not (decode and not batch_invariant)"),
              killed_by="the planner test test_prefill_sized_launches_load_the_block_table_one_tile_ahead"),
    _schedule("short-decode-power-of-two-segments",
              "short split decode keeps a power of two of segments, leaving segments of two dependent tiles and "
              "empty ones (Decision [One tile per segment within one wave])",
              ("DECODE_PROGRAMS_PER_SM.get(tile, 0)", "0"),
              killed_by="the planner test test_documented_segment_counts"),
    _schedule("one-tile-segments-past-one-wave",
              "one tile per segment even where the programs need a second wave (Decision [One tile per segment "
              "within one wave])",
              ("tiles * programs_2d <= num_sms * DECODE_PROGRAMS_PER_SM.get(tile, 0)", "tiles <= 2 * wanted"),
              killed_by="the planner test test_documented_segment_counts"),
    _schedule("metadata-load-sunk",
              "seqused_k's load is left to the compiler, which sinks it below the early exit on the query length: "
              "a decode program's first K/V copy waits on one more dependent load (Decision [Volatile seqused_k "
              "load])",
              ("tl.load(seqused_k_ptr + seq, volatile=True), 0), kv_capacity)",
               "tl.load(seqused_k_ptr + seq), 0), kv_capacity)"),
              file="_attention.py",
              killed_by="the sm_90 compile check test_decode_reads_all_its_metadata_before_its_first_exit (quick; "
                        "needs Triton's cuobjdump)"),
    _schedule("one-byte-prefill-two-stages",
              "fp8 / int8 caches' 64-row prefill at two pipeline stages on cards with under 160 KiB per block, "
              "like 16-bit caches (Decision [Pipeline stages])",
              ("three = shared_memory_per_block >= DEEP_PIPELINE_SHARED or one_byte_kv",
               "three = shared_memory_per_block >= DEEP_PIPELINE_SHARED"),
              killed_by="the planner test test_one_byte_caches_prefill_in_64_row_blocks (quick)"),
    _schedule("pth-decode-deep",
              "per-token-head caches decode at five pipeline stages like per-tensor fp8, each tile then also "
              "waiting on its scales (Decision [Pipeline stages])",
              ("fp8_decode = (one_byte_kv and not kv_per_token_head and head_pad <= 128",
               "fp8_decode = (one_byte_kv and head_pad <= 128"),
              killed_by="the planner test test_fp8_caches_decode_at_five_stages (quick)"),
    _schedule("plan-ignores-kv-quant-mode",
              "the planner is not told about per-token-head caches: they are planned as per-tensor fp8",
              ("kv_per_token_head=spec.kv_quant.per_token_head,", "kv_per_token_head=False,"),
              killed_by="test_make_plan_tells_the_planner_the_kv_quant_mode (quick)"),
    _m("batch-invariant-unpinned",
       "batch-invariant mode pins the path only when split_kv is given: the heuristic's batch-dependent "
       "segment count leaks into a sequence's result",
       ("    if batch_invariant:\n        # Nothing may depend",
        "    if batch_invariant and split_kv is not None:\n        # Nothing may depend"), file="plan.py"),
    _m("no-head-ratio-check",
       "argument checks accept a query-head count that is not a multiple of the KV-head count",
       ("    if num_kv_heads == 0 or num_q_heads % num_kv_heads:", "    if num_kv_heads == 0:"), file="validate.py"),
    # The safety mechanisms for bad metadata and the argument checks that came with them. The
    # bad-metadata tier (unchecked calls with invalid metadata; guard rows around out, NaN canaries
    # just outside the cache) and the GPU memcheck tier are the intended killers; valid-input tiers
    # cannot see the first four, by design.
    _m("block-id-unchecked",
       "block ids from the table are trusted: an id of -1 or num_blocks gathers K/V outside the cache",
       ("phys_block = tl.minimum(block_u, num_blocks_u - 1).to(tl.int64)", "phys_block = phys_block.to(tl.int64)"),
       note="bad-metadata tier: block id -1 / num_blocks must stay invisible (NaN canary blocks just outside "
            "k/v reach the output); memcheck reports the out-of-cache gather on a GPU"),
    _m("block-id-upper-bound-only",
       "block-id check forgets the lower bound: the common -1 'unused' sentinel gathers the row before the cache",
       ("phys_block = tl.minimum(block_u, num_blocks_u - 1).to(tl.int64)", "phys_block = tl.minimum(phys_block, num_blocks - 1).to(tl.int64)"),
       note="bad-metadata tier: the block id -1 case (not num_blocks); memcheck on a GPU"),
    _m("token-rows-unclamped",
       "a sequence's token range is taken from cu_seqlens_q as is: cu_seqlens_q[-1] > num_tokens makes the "
       "kernels read q and write out (and the workspace) past their last row",
       ("q_end = tl.minimum(tl.maximum(tl.load(cu_seqlens_q_ptr + seq + 1), q_start), num_tokens)",
        "q_end = tl.load(cu_seqlens_q_ptr + seq + 1)"),
       note="bad-metadata tier: cu_seqlens_q[-1] past num_tokens must leave the guard rows after out untouched "
            "(under the interpreter it may also crash the process); memcheck on a GPU"),
    _m("negative-local-block",
       "query blocks whose clamped start lies after them are not skipped: a negative cu_seqlens_q entry "
       "makes the kernel write rows before out's first row",
       ("if (local_block < 0) | (local_block * BLOCK_Q >= q_len):", "if local_block * BLOCK_Q >= q_len:"),
       note="bad-metadata tier: a negative cu_seqlens_q entry after the first (e.g. [0, -40, -40, 8]) must "
            "leave guard rows before out untouched (guards wider than two query blocks); memcheck on a GPU"),
    _m("seqused-unclamped",
       "seqused_k is not bounded by the block table's capacity: keys past the row read the next row's entries "
       "(or past the table) and gather the blocks they name",
       ("seq_len = tl.minimum(tl.maximum(tl.load(seqused_k_ptr + seq, volatile=True), 0), kv_capacity)",
        "seq_len = tl.maximum(tl.load(seqused_k_ptr + seq, volatile=True), 0)"),
       note="bad-metadata tier: seqused_k past block_table.shape[1] * block_size, with the columns just past "
            "the row naming a NaN block; memcheck on a GPU (last row of an exactly-sized table)"),
    _m("fold-scale-any-sign",
       "scores stay unscaled until exp2 whatever the scale's sign: with a negative scale the tile's 'max' is the "
       "smallest scaled score and exp2 overflows on wide logits",
       ("fold_scale=(qk_scale >= FLOAT32_MIN_NORMAL and", "fold_scale=(qk_scale != 0 and"), file="validate.py",
       note="negative-scale cases with logits spanning more than float32's exponent range (edge, quick)"),
    _m("fold-scale-zero",
       "a zero scale also takes the folded softmax: masked scores become -inf x 0 = NaN",
       ("fold_scale=(qk_scale >= FLOAT32_MIN_NORMAL and", "fold_scale=(qk_scale >= 0 and"), file="validate.py",
       note="zero-scale cases (quick-zero-scale-decode; edge): rows with a fully masked tile"),
    _m("fold-scale-unscaled-max",
       "the folded softmax takes the row max of unscaled scores without the scale",
       ("m_new = tl.maximum(m_i, tl.max(scores, 1) * qk_scale)", "m_new = tl.maximum(m_i, tl.max(scores, 1))"),
       note="cases whose unscaled row max exceeds exp2's range (p underflows to 0): most quick cases on CPU, "
            "extreme-logits (edge)"),
    _m("reduce-reads-skipped-sequences",
       "the reduction merges every token, also those of sequences a per-sequence (decode) split grid skipped "
       "(longer than its block: max_seqlen_q too small), whose partials were never written",
       ("        if _seq_grid_skips(q_len, SEQ_GRID_BLOCK_Q):", "        if _seq_grid_skips(q_len, 1 << 30):"),
       note="test_decode_plan_of_a_prefill_batch_stays_inside[reduction-launch]: max_seqlen_q = 0 on a mixed "
            "batch, unchecked, with guard fills of different contents (bad-metadata tier, quick)"),
    _m("checked-mode-ignores-flag",
       "check_metadata=True is accepted but only the ATTN_CHECK_METADATA environment variable turns the "
       "metadata validation on",
       ("checked = check_metadata or metadata_check_forced()", "checked = metadata_check_forced()"), file="api.py",
       note="a checked-mode test: check_metadata=True with invalid metadata must raise the argument's "
            "ValueError and leave out untouched (bad_input / bad-metadata tier)"),
    _m("noncausal-full-tiles-past-seqlen",
       "the unmasked-phase bound forgets seq_len: non-causal rows treat the last partial tile as fully visible "
       "and read the cache past seqused_k (the bug vLLM fixed in PR #47305)",
       ("    all_hi = tl.minimum(seq_len, first_pos + window_right + 1)",
        "    all_hi = first_pos + window_right + 1"),
       note="non-causal cases on lengths that end mid-block: numerics and poison (quick-noncausal-window, "
            "poison-noncausal*)"),
    _m("fp8-out-max-240",
       "fp8 output saturates at 240 (e4m3fnuz's largest value) instead of e4m3fn's 448",
       ("FP8_E4M3_MAX = 448.0", "FP8_E4M3_MAX = 240.0"), file="api.py",
       note="fp8 output whose values reach the top of the range (quick-fp8kv-fp8out, fp8out-top)"),
    _m("fp32-dot-tf32",
       "float32 inputs take tf32 tensor-core dots (10-bit mantissa) instead of IEEE float32",
       ('return "ieee" if self.q_fp32 else "tf32"', 'return "tf32"'), file="spec.py",
       gpu_only=True,
       note="GPU only (the interpreter computes every dot in IEEE float32): float32 cases of the quick and "
            "numerics tiers on a GPU"),
    _m("check-reads-values",
       "the per-call argument checks read a metadata value (cu_seqlens_q[0]): a device sync on every call, "
       "and an error inside CUDA-graph capture",
       ("    _check_counts(cu_seqlens_q, seqused_k, block_table)\n",
        "    _check_counts(cu_seqlens_q, seqused_k, block_table)\n"
        "    if cu_seqlens_q.numel() and int(cu_seqlens_q[0]) != 0:\n"
        "        _fail(\"cu_seqlens_q\", \"must start at 0\")\n"), file="validate.py",
       note="dispatch tier: the checks and the planner on meta-device tensors"),
    _m("exact-fit-table-rejected",
       "validate_metadata rejects a sequence that fills its block-table row exactly (off by one)",
       ("        if kv_len > capacity:", "        if kv_len >= capacity:"), file="validate.py",
       note="bad_metadata tier: valid exact-fit tables in checked mode"),
    _m("softcap-no-small-branch",
       "softcap tanh always uses 1 - 2 / (e^2x + 1): relative precision collapses for small |s / softcap| "
       "(softcap 1e5: 5e-3 relative error, 1e7: 0.5)",
       ("return tl.where(ax < TANH_POLY_BOUND, small, large)", "return large"),
       note="a numerics case with a large softcap (>= 1e4, where softcap * tanh(s / softcap) ~ s) against the "
            "float64 reference, or a tanh ulp sweep; the quick tier's softcaps are small enough to miss it"),
    _m("softcap-inf-accepted",
       "argument checks let softcap=inf through (only NaN and negatives rejected, the float32 range check "
       "bounded below only): every output becomes NaN",
       ("        if not math.isfinite(softcap) or softcap < 0:", "        if softcap != softcap or softcap < 0:"),
       ("        if softcap > 0 and not LOG2_UNITS_MIN_NORMAL <= softcap <= LOG2_UNITS_MAX:",
        "        if softcap > 0 and not LOG2_UNITS_MIN_NORMAL <= softcap:"),
       file="validate.py",
       note="bad_input tier: softcap=inf must raise ValueError '^softcap: ' with out untouched"),
    _m("window-size-unchecked-type",
       "window_size is not type-checked before len(): window_size=8 raises \"object of type 'int' has no len()\", "
       "naming nothing",
       ("        if not isinstance(window_size, (tuple, list)):", "        if False:"), file="validate.py",
       note="bad_input tier: window_size=8 must raise an error starting 'window_size: '"),
    _m("chunk-index-off-by-one",
       "chunked attention: the chunk index is taken of the 1-based position ((p + 1) // C), so the last "
       "query of every chunk starts the next chunk's window",
       ("first = tl.maximum(pos // chunk_size - chunk_lookback, 0) * chunk_size",
        "first = tl.maximum((pos + 1) // chunk_size - chunk_lookback, 0) * chunk_size")),
    _m("prefix-range-end-exclusive",
       "bidirectional prefix ranges: the inclusive end of mm_prefix_range is treated as exclusive, so the "
       "range's last key is hidden from the queries before it",
       ("(key[None, :] <= extra_hi[:, None])", "(key[None, :] < extra_hi[:, None])")),
    _m("descale-element-0",
       "per-(sequence, KV head) fp8 descales: the K descale is read from element 0 for every sequence and "
       "head (the per-tensor load kept)",
       ("scale = scale * tl.load(k_descale_ptr + seq * stride_kds_seq + kv_head * stride_kds_head)",
        "scale = scale * tl.load(k_descale_ptr)")),
    _m("scale-cache-wrong-slot",
       "per-token-head caches: the V row scale is read for the next slot of the block (slot + 1), not the "
       "row's own",
       ("vs_base + phys_block * stride_vs_blk + slot.to(tl.int64) * stride_vs_slot",
        "vs_base + phys_block * stride_vs_blk + ((slot + 1) % BLOCK_SIZE).to(tl.int64) * stride_vs_slot")),
    _m("q-descale-ignored",
       "fp8 queries: q_descale is never applied (the scores miss the query's per-tensor scale)",
       ("scale = scale * tl.load(q_descale_ptr)", "scale = scale")),
    # Boundary classes: each is killed by a case the field-coverage rule alone did not reach.
    _m("masked-tile-keeps-zero-max",
       "online softmax: after a tile that hides every key of a row, the running max keeps the 0 stand-in "
       "instead of -inf, so that row's later scores far below zero underflow (vLLM 50ac1c7's bug)",
       ("        acc = acc * alpha[:, None] + pv\n        m_i = m_new\n",
        "        acc = acc * alpha[:, None] + pv\n        m_i = m_shift\n")),
    _m("block-size-multiple-of-4-as-pow2",
       "a block size that is a multiple of 4 is taken for a power of two: one table id per block assumed per "
       "tile, so a tile spanning two non-power-of-two blocks reads the first block's id for both",
       ("    POW2_BLOCK: tl.constexpr = (BLOCK_SIZE & (BLOCK_SIZE - 1)) == 0",
        "    POW2_BLOCK: tl.constexpr = BLOCK_SIZE % 4 == 0")),
    _m("bt-column-stride-one",
       "the block-table ids read a tile ahead assume contiguous columns (the table's column stride ignored)",
       ("    return tl.load(block_table_row + table_col * stride_bt_blk, mask=col_valid, other=0)",
        "    return tl.load(block_table_row + table_col, mask=col_valid, other=0)")),
    _m("descale-per-head-from-k",
       "per-(sequence, KV head) descales are detected from k_descale alone: a one-element K descale with a "
       "[num_seqs, num_kv_heads] V descale reads V's as one element",
       ("descale_per_head = quant.per_tensor_fp8 and any(t is not None and t.numel() != 1 for t in (k_descale, v_descale))",
        "descale_per_head = quant.per_tensor_fp8 and k_descale is not None and k_descale.numel() != 1"),
       file="validate.py"),
    _m("segment-limit-split-only",
       "num_segments above MAX_SEGMENTS is refused only when the call asks for the split path",
       ("    if num_segments is not None and num_segments > MAX_SEGMENTS:\n",
        "    if num_segments is not None and num_segments > MAX_SEGMENTS and split_kv is not False:\n"),
       file="validate.py"),
    _m("qq-bias-column-off-by-one",
       "qq_bias: column j is read for the key at context_len + j + 1, so each new token's bias lands one key late",
       ("column = key - context_len\n", "column = key - context_len - 1\n")),
    _m("rswa-window-inclusive",
       "R-SWA's window taken as p - j <= rswa_window instead of < (one more key back per row)",
       ('geometry["window_left"] = min(rswa_window - 1, UNLIMITED)',
        'geometry["window_left"] = min(rswa_window, UNLIMITED)'), file="validate.py"),
    _m("rswa-prefix-inclusive",
       "R-SWA: the key at rswa_prefix_len itself counts as prefix (j <= prefix_len)",
       ("rswa_hi = tl.minimum(rswa_len, row_pos + window_right + 1)",
        "rswa_hi = tl.minimum(rswa_len + 1, row_pos + window_right + 1)")),
    _m("alibi-sqrt-sign",
       "sqrt-ALiBi with the wrong sign: +slope * sqrt(p - j) rewards distant keys",
       ("scores -= alibi_slope[:, None] * tl.sqrt(back)", "scores += alibi_slope[:, None] * tl.sqrt(back)")),
    _m("alibi-sqrt-missing",
       "sqrt-ALiBi without the square root: -slope * (p - j), the linear bias clipped at the query",
       ("* tl.sqrt(back)", "* back")),
    _m("bidirectional-as-causal",
       "per-sequence causal flags: the host gives every sequence the causal right bound (the flag tensor "
       "read as causal=True), so bidirectional sequences lose their later keys",
       ("    if isinstance(causal, torch.Tensor):\n        window_right = window_left\n",
        "    if isinstance(causal, torch.Tensor):\n        window_right = 0\n"), file="validate.py"),
    _m("causal-flags-inverted",
       "per-sequence causal flags read inverted: a nonzero flag makes the sequence bidirectional",
       ("window_right = tl.where(tl.load(causal_ptr + seq) != 0, 0, window_right)",
        "window_right = tl.where(tl.load(causal_ptr + seq) == 0, 0, window_right)")),
    _m("lse-log2-units",
       "softmax_lse stored in the kernels' log2 units instead of the natural log",
       ("(top + tl.log2(tl.where(empty, 1.0, expsum))) * LN2)", "(top + tl.log2(tl.where(empty, 1.0, expsum))))")),
    _schedule("verify-batches-stay-2d",
              "speculative-decoding verify batches take the 2D path whatever their grid: one program per "
              "(sequence, KV head) walks the whole context",
              ("    verify = not decode and max_seqlen_q <= VERIFY_MAX_QUERY_LEN\n", "    verify = False\n"),
              killed_by="tests/test_dispatch.py::test_small_verify_batch_splits_kv (quick)"),
    _schedule("verify-splits-like-decode",
              "verify batches split up to decode's 2 programs per SM: a 32-sequence verify batch of 8 tokens "
              "(256 programs on 132 SMs) splits, 0.78x the 2D time on an H100",
              ("VERIFY_SPLIT_BELOW_PROGRAMS_PER_SM if verify else SPLIT_BELOW_PROGRAMS_PER_SM)",
               "SPLIT_BELOW_PROGRAMS_PER_SM)"),
              killed_by="tests/test_dispatch.py::test_verify_grid_that_fills_the_device_stays_2d (quick)"),
    _m("int4-nibble-order-swapped",
       "INT4 caches: a byte's high nibble read as the even dim and the low one as the odd dim",
       ("    low = ((bits & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - offset\n"
        "    high = ((bits >> 4) | 0x4B000000).to(tl.float32, bitcast=True) - offset\n",
        "    low = ((bits >> 4) | 0x4B000000).to(tl.float32, bitcast=True) - offset\n"
        "    high = ((bits & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - offset\n")),
    _m("int4-zero-point-ignored",
       "INT4 caches: the zero point in the scale's low mantissa bits is never subtracted (u * scale)",
       ("return (bits & -16).to(tl.float32, bitcast=True), bits & 0xF",
        "return (bits & -16).to(tl.float32, bitcast=True), bits * 0")),
    _m("int4-zero-point-off-by-one",
       "INT4 caches: the zero point is read one too high (u - zero - 1)",
       ("return (bits & -16).to(tl.float32, bitcast=True), bits & 0xF",
        "return (bits & -16).to(tl.float32, bitcast=True), (bits & 0xF) + 1")),
    _m("int4-zero-point-three-bits",
       "INT4 caches: the zero point masked to 3 bits (zero points 8..15 lose their top bit)",
       ("return (bits & -16).to(tl.float32, bitcast=True), bits & 0xF",
        "return (bits & -16).to(tl.float32, bitcast=True), bits & 0x7")),
    _m("int4-q-not-rotated",
       "INT4 caches: q is dotted with the rotated keys as it is, not rotated by R / b first",
       ("    signed = x * _rht_signs(HEAD_PAD, RHT_BLOCK, RHT_SIGNS)[None, :]\n"
        "    even = tl.dot(signed, _hadamard_entries(dims, 2 * lanes, RHT_BLOCK), input_precision=\"ieee\")\n"
        "    odd = tl.dot(signed, _hadamard_entries(dims, 2 * lanes + 1, RHT_BLOCK), input_precision=\"ieee\")\n"
        "    return even * (1.0 / RHT_BLOCK), odd * (1.0 / RHT_BLOCK)\n",
        "    even = tl.dot(x, (dims[:, None] == 2 * lanes[None, :]).to(tl.float32), input_precision=\"ieee\")\n"
        "    odd = tl.dot(x, (dims[:, None] == 2 * lanes[None, :] + 1).to(tl.float32), input_precision=\"ieee\")\n"
        "    return even, odd\n")),
    _m("int4-output-not-rotated-back",
       "INT4 caches: the output (and each 3D partial) stays in the cache's rotated space (no R^-1)",
       ("    rows = tl.dot(even, _hadamard_entries(2 * lanes, dims, RHT_BLOCK), input_precision=\"ieee\")\n"
        "    rows = tl.dot(odd, _hadamard_entries(2 * lanes + 1, dims, RHT_BLOCK), rows, input_precision=\"ieee\")\n"
        "    return rows * (_rht_signs(HEAD_PAD, RHT_BLOCK, RHT_SIGNS) * (1.0 / RHT_BLOCK))[None, :]\n",
        "    rows = tl.dot(even, (2 * lanes[:, None] == dims[None, :]).to(tl.float32), input_precision=\"ieee\")\n"
        "    rows = tl.dot(odd, (2 * lanes[:, None] + 1 == dims[None, :]).to(tl.float32), rows, "
        "input_precision=\"ieee\")\n"
        "    return rows\n")),
    _m("int4-rotation-without-signs",
       "INT4 caches: q and the output rotated by H alone, without the random signs D the writer applied",
       ("    return 1.0 - 2.0 * negative.to(tl.float32)\n", "    return 1.0 + 0.0 * negative.to(tl.float32)\n")),
    _m("int4-rotation-over-padded-head",
       "INT4 caches: one Hadamard block over the padded head instead of blocks of the largest power of two "
       "dividing head_size (equivalent for power-of-two heads only)",
       ("def _hadamard_entries(rows, cols, RHT_BLOCK: tl.constexpr):\n",
        "def _hadamard_entries(rows, cols, RHT_BLOCK_: tl.constexpr):\n    RHT_BLOCK: tl.constexpr = 512\n")),
    _m("table-ids-ahead-past-walk-end",
       "block-table ids read a tile ahead are loaded one tile past an unmasked walk's end: the last tile "
       "of a walk that ends at the table's last column reads past the row (the ids are never used)",
       ("    col_valid = (tile + tl.zeros([BLOCKS_PER_TILE], tl.int32)) < tile_end\n",
        "    col_valid = (tile + tl.zeros([BLOCKS_PER_TILE], tl.int32)) < tile_end + (0 if MASKED else 1)\n"),
       gpu_only=True,
       note="the values are unused, so no output changes: compute-sanitizer memcheck on an exactly sized "
            "table (tests/test_memsafety.py, edge case exact-table-unmasked-end)"),
    _m("fused-merge-relaxed-arrival",
       "the fused merge counts arrivals with a relaxed atomic: no release orders a program's partial stores "
       "before its arrival, no acquire orders the last arriver's reads after it",
       ('arrived = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")',
        'arrived = tl.atomic_add(counter_ptr, 1, sem="relaxed", scope="gpu")'),
       gpu_only=True,
       note="a race between programs (sm_90 code loses MEMBAR.ALL.GPU before the atomic and CCTL.IVALL after "
            "it): tests/test_ordering.py::test_fused_merge_under_load (stress tier), merging programs from a "
            "NaN workspace in many waves and in one wave, every repeat bitwise alike and within tolerance; "
            "not yet run on a GPU"),
    _m("fused-merge-stores-after-arrival",
       "the fused merge's programs store their partial accumulators after counting their arrival: the last "
       "arriver may merge a partial that is not written yet",
       ("        tl.store(acc_ptrs, acc, mask=row_valid[:, None])\n        if FUSED_MERGE:\n",
        "        if not FUSED_MERGE:\n            tl.store(acc_ptrs, acc, mask=row_valid[:, None])\n"
        "        if FUSED_MERGE:\n"),
       ('arrived = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")\n',
        'arrived = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")\n'
        '            tl.store(acc_ptrs, acc, mask=row_valid[:, None])\n            tl.debug_barrier()\n'),
       gpu_only=True,
       note="a race between programs (the interpreter runs them one after another, each storing before the "
            "next arrives): tests/test_ordering.py::test_fused_merge_under_load (stress tier), a breakage of the "
            "arrival order in program order, not only in the memory model as fused-merge-relaxed-arrival; "
            "not yet run on a GPU"),
    _m("narrow-launch-no-wait",
       "the narrow launch (a programmatic dependent of the wide launch) ends without waiting for the wide "
       "launch: work queued after the call may run while the wide launch still writes out",
       ("NARROW_Q=0, AWAIT_PRIMARY=programmatic,", "NARROW_Q=0, AWAIT_PRIMARY=False,"), file="api.py",
       gpu_only=True,
       note="Hopper and later only (programmatic launches): tests/test_ordering.py::"
            "test_output_read_right_after_a_mixed_call (stress tier) did not kill it on an H100, neither "
            "through a stream-ordered clone (50 of 50 complete) nor through a copy kernel that is itself a "
            "programmatic dependent waiting only for the narrow launch (25 of 25): on that card work after a "
            "dependent launch saw the primary finished; likely equivalent there"),
)

BY_NAME = {m.name: m for m in CATALOG}


def get(names) -> list[Mutant]:
    """Mutants by name (``names`` a comma-separated string or an iterable); all when empty."""
    if not names:
        return list(CATALOG)
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n.strip() not in BY_NAME]
    if unknown:
        raise KeyError(f"unknown mutant(s) {unknown}; known: {', '.join(BY_NAME)}")
    return [BY_NAME[n.strip()] for n in names]


def check_catalog(kernels_dir: Path = KERNELS_DIR) -> list[str]:
    """Problems with the catalog against the current source (empty when every mutant applies)."""
    problems = []
    for mutant in CATALOG:
        try:
            texts = mutant.sources(kernels_dir)
        except CatalogError as exc:
            problems.append(str(exc))
            continue
        for file, text in texts.items():
            if text == (kernels_dir / file).read_text():
                problems.append(f"mutant {mutant.name!r}: changes nothing in paged_kernels/{file}")
            try:
                ast.parse(text)
            except SyntaxError as exc:
                problems.append(f"mutant {mutant.name!r}: paged_kernels/{file} no longer parses: {exc}")
    return problems


def ignore_copies(directory, names):
    """``shutil.copytree`` filter for copies of the suite: no caches, results or tensors."""
    skip = {"__pycache__", ".pytest_cache", ".hypothesis", "results", "artifacts"}
    return [n for n in names if n in skip or n.endswith((".pyc", ".pt"))]


def materialize(mutant: Mutant | None, root: Path | None = None, kernels_dir: Path = KERNELS_DIR) -> Path:
    """Copy ``paged_kernels/`` to ``root/kernels`` (a fresh temp dir by default) and apply ``mutant``.

    Returns ``root``: put it first on ``sys.path`` / ``PYTHONPATH`` so ``import paged_kernels``
    resolves to the copy. ``mutant=None`` makes the unmutated control copy.
    """
    root = Path(tempfile.mkdtemp(prefix=f"mutant-{mutant.name if mutant else 'control'}-")) if root is None else root
    target = root / "paged_kernels"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(kernels_dir, target, ignore=ignore_copies)
    if mutant is not None:
        for file, text in mutant.sources(kernels_dir).items():
            (target / file).write_text(text)
    return root


def fingerprint(kernels_dir: Path) -> str:
    """Digest of a kernels package's sources (to prove which copy a run imported)."""
    digest = hashlib.sha256()
    for path in sorted(Path(kernels_dir).glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
