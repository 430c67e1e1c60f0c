"""Launch planning: which path, which tiles, how many KV segments, what grid.

``plan_launch`` is a pure function of shapes, host integers and the device's multiprocessor
count, so it never syncs the device, gives the same answer on every replay of a captured CUDA
graph, and can be unit-tested without a GPU; ``plan_call`` feeds it a call's ``CallSpec``.
The measurements behind each choice are in the decisions record, under the names cited here.

Heuristic:
- Prefill or mixed batches take the 2D path: a query block already gives every program a
  tensor-core sized tile of work.
- Decode-only batches (max_seqlen_q == 1) have one query block per (sequence, KV head); a
  program walks its whole sequence, one dependent KV tile after another. While that grid
  holds fewer than ``SPLIT_BELOW_PROGRAMS_PER_SM`` programs per multiprocessor, the split-KV
  path wins: it splits each sequence into the power of two of segments that brings the grid
  closest to ``PROGRAMS_PER_SM`` x num_sms programs (at least 2, at most one per KV tile and
  ``MAX_SEGMENTS``). Decision [Split-KV segment count].
- Speculative-decoding verify batches (``max_seqlen_q`` <= ``VERIFY_MAX_QUERY_LEN``) also fit one
  query block per sequence and walk the whole context: the same rule splits them, while their grid
  has fewer programs than SMs. Decision [Split verify batches].
- A 2D prefill/mixed batch of two or more sequences also gets a narrow launch (``NarrowPlan``):
  one decode-sized program per (sequence, KV head) for the sequences of at most its block's
  tokens, which the wide launch skips; in prefill-sized blocks a decode fills 4 of 128 rows of
  every tile's matrix work. Decision [Narrow launch for a mixed batch's decodes].
- A split decode sequence with fewer 128-key tiles than wanted segments halves its tile (down to
  ``MIN_DECODE_TILE``) until it has enough. Decision [Short decode tiles].
- A short split decode whose programs all fit one wave takes one tile per segment
  (``DECODE_PROGRAMS_PER_SM``) instead of a power of two of segments. Decision [One tile per
  segment within one wave].
- A split decode whose merge is small (``FUSED_MERGE_MAX_FLOATS``) merges in the 3D launch's last
  program per (query block, KV head) instead of a reduction launch (``fused_merge``). Decision
  [Fused merge].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .spec import CallSpec, next_power_of_2

# Programs per multiprocessor the split decode grid aims at.
PROGRAMS_PER_SM = 2
# Decode grids with fewer 2D programs per multiprocessor than this take the split-KV path.
SPLIT_BELOW_PROGRAMS_PER_SM = 2
# A segment holds at least this many KV tiles.
MIN_TILES_PER_SEGMENT = 1
# Verify batches (a few drafted tokens per sequence) split their KV like decode; vLLM's limit too.
VERIFY_MAX_QUERY_LEN = 8
# ... but only while their 2D grid has fewer programs than SMs: each program carries up to 8x the rows
# of a decode one, so the split's merge costs more. Decision [Split verify batches].
VERIFY_SPLIT_BELOW_PROGRAMS_PER_SM = 1
# Upper bound on segments per sequence (the reduction loads all of them at once).
MAX_SEGMENTS = 128
# The interpreter has no multiprocessors; this nominal count makes small CPU batches split too.
INTERPRETER_NUM_SMS = 8
# Resident decode programs per SM by KV tile (sm_90, 16-bit caches, heads of <= 128 dims, two
# stages; registers bound them, as `python -m benchmarks.disasm` reports for bs1 decode).
DECODE_PROGRAMS_PER_SM = {16: 6, 32: 5, 64: 3, 128: 2}
# Short split decode: the KV tile may shrink down to this many keys so that a sequence with fewer
# 128-key tiles than wanted segments still spreads over enough programs.
MIN_DECODE_TILE = 16
# Head-dim lanes per reduction program on GPUs.
REDUCE_DIM_BLOCK = 32
# Split decode merges in the attention launch while one program's share (heads x segments x head
# dims) stays within this many floats; larger merges keep the reduction launch. Decision [Fused merge].
FUSED_MERGE_MAX_FLOATS = 4096


@dataclass(frozen=True)
class NarrowPlan:
    """The second launch of a prefill/mixed batch: one decode-sized program per (sequence, KV head)
    for the sequences of at most ``block_q`` query tokens, which the wide launch then skips."""

    block_m: int
    block_q: int
    tile_size: int
    num_warps: int
    num_stages: int
    grid: tuple[int, int, int]


@dataclass(frozen=True)
class LaunchPlan:
    """A frozen description of one launch."""

    path: str  # "2d" or "3d"
    block_m: int  # rows per program: block_q tokens x queries-per-KV-head heads (padded)
    block_q: int  # query tokens per program
    tile_size: int  # keys per inner-loop iteration (independent of the cache's block size)
    num_segments: int  # KV segments per sequence (1 on the 2D path)
    num_warps: int
    num_stages: int
    grid: tuple[int, int, int]
    reduce_grid: tuple[int, int, int] | None
    reduce_heads: int  # query heads merged per reduction program
    reduce_dims: int  # head-dim lanes per reduction program
    reduce_num_warps: int  # warps per reduction program
    reason: str
    narrow: NarrowPlan | None = None  # 2D prefill/mixed batches: the decode-sized launch for short sequences
    table_ahead: bool = False  # block-table ids loaded one KV tile ahead, into registers (all but fp8 decode)
    fused_merge: bool = False  # 3D: the attention launch merges the segments itself (no reduce_grid launch)
    seq_grid: bool = False  # grid axis 0 counts sequences, not query blocks (decode: no sequence search)
    merge_heads: int = 1  # fused merge: query heads per KV head, padded to a power of two

    @property
    def segments_pad(self) -> int:
        return next_power_of_2(self.num_segments)


# Shared memory one program may use (the opt-in maximum) on an H100 / H200.
HOPPER_SHARED_PER_BLOCK = 227 * 1024
# Cards with less per program than this (sm_86 / sm_89) pipeline fewer stages: three prefill or
# five fp8 decode stages would not fit. Decision [Pipeline stages].
DEEP_PIPELINE_SHARED = 160 * 1024


def _tile_size(head_pad: int, interpreter: bool, fp32: bool, decode_sized: bool) -> int:
    if interpreter:
        return 16  # interpreter cost is per tile: small tiles let short CPU cases cross many
    if fp32:
        return 32  # fp32 dots run on FMA units: big tiles only bloat code and compile time
    if head_pad > 128:
        return 32  # K and V tiles of 256-wide heads fill shared memory fast
    # Decode is a chain of dependent tile loads per program: fewer, larger tiles shorten it.
    # Decision [KV tile size].
    return 128 if decode_sized else 64


def _block_m(num_queries_per_kv: int, max_seqlen_q: int, head_pad: int, decode: bool, batch_invariant: bool,
             interpreter: bool, fp32: bool, one_byte_kv: bool = False) -> int:
    group = next_power_of_2(num_queries_per_kv)
    if batch_invariant:
        # Fixed whatever the batch holds; on GPUs large enough to serve prefill reasonably.
        return max(16 if interpreter else 64, group)
    if decode:
        return max(16, group)
    # The interpreter pays per program and per op, not per element: fewer, larger blocks. One-byte
    # caches fit two 64-row programs per SM where 128 rows fit one. Decision [One-byte prefill block].
    cap = 64 if interpreter or head_pad > 128 or one_byte_kv else (32 if fp32 else 128)
    return max(group, min(cap, max(16, next_power_of_2(max_seqlen_q * num_queries_per_kv))))


def _warps_and_stages(block_m: int, head_pad: int, decode_sized: bool, interpreter: bool,
                      shared_memory_per_block: int, one_byte_kv: bool, kv_per_token_head: bool) -> tuple[int, int]:
    """(num_warps, num_stages) of an attention launch with ``block_m`` query rows."""
    if interpreter:
        return 1, 1
    big = block_m * head_pad >= 128 * 128
    # Decode: two stages (more cost occupancy), five for per-tensor fp8 caches, whose loop then keeps
    # later tiles' copies in flight. Prefill: three where they fit. Decision [Pipeline stages].
    if decode_sized:
        fp8_decode = (one_byte_kv and not kv_per_token_head and head_pad <= 128
                      and shared_memory_per_block >= DEEP_PIPELINE_SHARED)
        return (8 if big else 4), (5 if fp8_decode else 2)
    three = shared_memory_per_block >= DEEP_PIPELINE_SHARED or one_byte_kv
    return (8 if big else 4), (2 if head_pad > 128 else (3 if three else 2))


def _round_power_of_2(x: float) -> int:
    """The power of two nearest to x on a log scale (x > 0)."""
    return 1 << max(round(math.log2(x)), 0)


def _floor_power_of_2(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def choose_num_segments(programs_2d: int, max_seqlen_k: int, tile_size: int, num_sms: int,
                        split_below: int = SPLIT_BELOW_PROGRAMS_PER_SM) -> int:
    """Segments per sequence for a decode grid of ``programs_2d`` programs; 1 means "stay 2D" (always
    from ``split_below`` programs per SM on)."""
    programs_2d = max(programs_2d, 1)
    if programs_2d >= split_below * num_sms:
        return 1
    tiles = math.ceil(max_seqlen_k / tile_size) // MIN_TILES_PER_SEGMENT
    cap = _floor_power_of_2(min(tiles, MAX_SEGMENTS))
    if cap < 2:
        return 1
    return min(max(_round_power_of_2(PROGRAMS_PER_SM * num_sms / programs_2d), 2), cap)


def plan_launch(
    *, num_tokens: int, num_seqs: int, max_seqlen_q: int, max_seqlen_k: int, num_q_heads: int,
    num_kv_heads: int, head_size: int, num_sms: int, interpreter: bool = False, fp32: bool = False,
    split_kv: bool | None = None, num_segments: int | None = None, batch_invariant: bool = False,
    max_segments: int | None = None, max_visible_keys: int | None = None, one_byte_kv: bool = False,
    kv_per_token_head: bool = False, shared_memory_per_block: int = HOPPER_SHARED_PER_BLOCK,
    merge_counters: int | None = None,
) -> LaunchPlan:
    """Plan a launch from shapes and host integers only (no device reads).

    ``shared_memory_per_block``: the device's opt-in shared memory per program in bytes (default:
    an H100 / H200's); below ``DEEP_PIPELINE_SHARED`` launches pipeline fewer stages.

    ``max_visible_keys``: the most keys one sequence's queries see together (chunked attention
    bounds it below ``max_seqlen_k``); the segment count is chosen for that span. None: max_seqlen_k.

    ``merge_counters``: the arrival counters a caller's workspace holds (None: the call allocates
    its own); the fused merge needs one per (query block, KV head) of the grid.
    """
    num_queries_per_kv = num_q_heads // num_kv_heads
    head_pad = next_power_of_2(head_size)
    decode = max_seqlen_q <= 1
    verify = not decode and max_seqlen_q <= VERIFY_MAX_QUERY_LEN
    tile = _tile_size(head_pad, interpreter, fp32, decode and not batch_invariant)
    block_m = _block_m(num_queries_per_kv, max_seqlen_q, head_pad, decode, batch_invariant, interpreter, fp32,
                       one_byte_kv)
    block_q = block_m // num_queries_per_kv
    num_q_blocks = num_tokens // block_q + num_seqs
    # For decode the 2D grid is one program per (sequence, KV head); prefill counts its query blocks
    # (a verify batch whose sequences each fit one block has one working program per sequence too).
    one_block_per_seq = decode or (verify and max_seqlen_q <= block_q)
    programs_2d = (num_seqs if one_block_per_seq else num_q_blocks) * num_kv_heads
    span = max_seqlen_k if max_visible_keys is None else min(max_seqlen_k, max_visible_keys)
    if decode and not (batch_invariant or interpreter) and programs_2d < SPLIT_BELOW_PROGRAMS_PER_SM * num_sms:
        wanted = PROGRAMS_PER_SM * num_sms / max(programs_2d, 1)
        while tile > MIN_DECODE_TILE and math.ceil(span / tile) < wanted:
            tile //= 2
    heuristic_segments = choose_num_segments(
        programs_2d, span, tile, num_sms,
        VERIFY_SPLIT_BELOW_PROGRAMS_PER_SM if verify else SPLIT_BELOW_PROGRAMS_PER_SM)
    tiles = math.ceil(span / tile)
    if (decode and not (batch_invariant or interpreter or one_byte_kv) and head_pad <= 128 and heuristic_segments > 1
            and tiles <= MAX_SEGMENTS and tiles * programs_2d <= num_sms * DECODE_PROGRAMS_PER_SM.get(tile, 0)):
        # A power of two of segments would give some segments two dependent tiles and leave others
        # empty. Decision [One tile per segment within one wave].
        heuristic_segments = tiles

    if batch_invariant:
        # Nothing may depend on the rest of the batch: fixed tiles, fixed path.
        if split_kv:
            raise ValueError("split_kv=True cannot be combined with batch_invariant=True")
        path, reason = "2d", "batch-invariant mode always takes the 2D path with fixed tiles"
    elif split_kv is not None:
        path, reason = ("3d" if split_kv else "2d"), f"forced by split_kv={split_kv}"
    elif num_segments is not None:
        path, reason = "3d", f"num_segments={num_segments} given"
    elif (decode or verify) and heuristic_segments > 1:
        path = "3d"
        reason = (f"{'decode' if decode else 'verify'} batch: {programs_2d} programs ({num_seqs} seqs x "
                  f"{num_kv_heads} KV heads) is under {SPLIT_BELOW_PROGRAMS_PER_SM} programs per SM on {num_sms} SMs")
    else:
        path = "2d"
        reason = "prefill/mixed batch" if not decode else "decode grid already fills the device"

    segments = 1
    if path == "3d":
        # A given num_segments is in [1, MAX_SEGMENTS] (check_arguments); the heuristic's is too.
        segments = num_segments if num_segments is not None else max(heuristic_segments, 2)
        if max_segments is not None:
            if num_segments is not None and num_segments > max_segments:
                raise ValueError(f"num_segments: {num_segments} exceeds the workspace's {max_segments} segments")
            segments = min(segments, max_segments)

    narrow = None
    narrow_block_m = _block_m(num_queries_per_kv, 1, head_pad, True, False, interpreter, fp32)
    narrow_block_q = narrow_block_m // num_queries_per_kv
    if path == "2d" and not decode and not batch_invariant and num_seqs >= 2 and block_q > narrow_block_q \
            and max_seqlen_q > narrow_block_q:
        # A mixed batch's decodes in prefill-sized blocks waste nearly every row of each tile's
        # matrix work; the narrow launch gives each one decode-sized program per KV head instead.
        narrow_warps, narrow_stages = _warps_and_stages(narrow_block_m, head_pad, True, interpreter,
                                                        shared_memory_per_block, one_byte_kv, kv_per_token_head)
        narrow = NarrowPlan(
            block_m=narrow_block_m, block_q=narrow_block_q, tile_size=_tile_size(head_pad, interpreter, fp32, True),
            num_warps=narrow_warps, num_stages=narrow_stages, grid=(num_seqs, num_kv_heads, 1))
        reason += f"; sequences of <= {narrow_block_q} tokens in a narrow launch"

    num_warps, num_stages = _warps_and_stages(block_m, head_pad, decode and not batch_invariant, interpreter,
                                              shared_memory_per_block, one_byte_kv, kv_per_token_head)
    merge_heads = next_power_of_2(num_queries_per_kv)
    merge_lanes = merge_heads * next_power_of_2(segments) * head_pad
    # Decode programs, and verify programs whose sequences fit one block, index by sequence: no cu_seqlens_q
    # search before the first KV read, no surplus programs; batch-invariant launches keep one grid.
    # Decision [Sequence-indexed decode grid].
    seq_grid = (decode or (verify and one_block_per_seq)) and not batch_invariant
    # Block-table ids a tile ahead, in registers (see _attend_tiles): every launch but five-stage
    # (fp8) decode, where they cost the second program per SM. Decision [Block-table ids a tile ahead].
    table_ahead = not (decode and not batch_invariant) or num_stages <= 2
    grid_rows = num_seqs if seq_grid else num_q_blocks
    # Decode only: there a query block holds one token, so the last program merges one token's heads.
    fused_merge = (path == "3d" and decode and head_pad <= 128 and merge_lanes <= FUSED_MERGE_MAX_FLOATS
                   and (merge_counters is None or grid_rows * num_kv_heads <= merge_counters))
    # One head per reduction program keeps GPU registers small; the interpreter, which pays
    # per program, merges every head of a token at once.
    reduce_heads = next_power_of_2(num_q_heads) if interpreter else 1
    # On GPUs split the head dim too, so a single-token batch still spreads over many programs.
    reduce_dims = head_pad if interpreter else min(head_pad, REDUCE_DIM_BLOCK)
    return LaunchPlan(
        path=path,
        block_m=block_m,
        block_q=block_q,
        tile_size=tile,
        num_segments=segments,
        num_warps=num_warps,
        num_stages=num_stages,
        grid=(grid_rows, num_kv_heads, segments),
        reduce_grid=(num_tokens, math.ceil(num_q_heads / reduce_heads), head_pad // reduce_dims)
        if path == "3d" and not fused_merge else None,
        reduce_heads=reduce_heads,
        reduce_dims=reduce_dims,
        # A reduction program holds at most HEADS x SEGMENTS x DIMS lanes; the interpreter runs
        # one warp regardless, on GPUs 4 warps cover the 1 x 128 x 32 worst case.
        reduce_num_warps=1 if interpreter else 4,
        reason=reason,
        narrow=narrow,
        table_ahead=table_ahead,
        fused_merge=fused_merge,
        seq_grid=seq_grid,
        merge_heads=merge_heads,
    )


def plan_call(spec: CallSpec, *, num_sms: int, interpreter: bool, shared_memory_per_block: int) -> LaunchPlan:
    """The plan of the call ``spec`` describes, on a device with ``num_sms`` multiprocessors."""
    return plan_launch(
        num_tokens=spec.num_tokens, num_seqs=spec.num_seqs, max_seqlen_q=spec.max_seqlen_q,
        max_seqlen_k=spec.max_seqlen_k, num_q_heads=spec.num_q_heads, num_kv_heads=spec.num_kv_heads,
        head_size=spec.head_size, num_sms=num_sms, interpreter=interpreter, fp32=spec.q_fp32,
        split_kv=spec.split_kv, num_segments=spec.num_segments, batch_invariant=spec.batch_invariant,
        max_segments=spec.workspace_segments, max_visible_keys=spec.visible_key_span,
        one_byte_kv=spec.one_byte_kv, kv_per_token_head=spec.kv_quant.per_token_head,
        shared_memory_per_block=shared_memory_per_block, merge_counters=spec.workspace_counters,
    )
