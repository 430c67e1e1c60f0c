"""Triton kernels for unified paged attention.

One kernel body serves both paths: ``SPLIT_KV=False`` is the 2D kernel (grid: query blocks x KV
heads; it normalizes and stores the output), ``SPLIT_KV=True`` is the 3D kernel (a third grid
axis over KV segments; it stores each segment's unnormalized output, running max and exp-sum
into the workspace). Both walk KV tiles with the same inner loop, ``_attend_tiles``, and decide
visibility with the same helper, ``_visible``. The segments are merged by ``_segment_weights`` and
``_merge_partials``, in one of two places: with ``FUSED_MERGE`` (small split decodes) the 3D
kernel's last program of each (query block, KV head) to finish, found by an atomic arrival count
in the workspace, merges them itself; otherwise ``_reduce_segments_kernel`` does, in a second
launch. With ``PROGRAMMATIC_LAUNCH`` (Hopper and later) that reduction is launched as a
programmatic dependent of the 3D kernel: it is scheduled while the 3D kernel runs, does its
metadata prologue, and waits (``gdc_wait``) for the 3D kernel's completion and memory before
reading a partial.

Conventions shared by every kernel here:
- Scores are kept in log2 units (scaled by log2(e)) so the softmax uses exp2; softcap, ALiBi
  slopes and sink logits are converted on the way in.
- A query block holds ``BLOCK_Q`` consecutive tokens of one sequence times the
  ``NUM_QUERIES_PER_KV`` query heads that share a KV head (GQA packing): row r is token
  ``r // NUM_QUERIES_PER_KV``, head ``r % NUM_QUERIES_PER_KV`` within the group.
- Query blocks are numbered so that sequence s owns blocks from ``cu_seqlens_q[s] // BLOCK_Q + s``
  on; the grid is sized from shapes only (``num_tokens // BLOCK_Q + num_seqs``) and surplus
  programs exit, which keeps launches free of host syncs and capturable in CUDA graphs.
- Windows arrive as non-negative "effective" bounds: key j is visible to query position p iff
  ``p - j <= window_left`` and ``j - p <= window_right`` and ``j < seq_len`` (causal is
  ``window_right = 0``; unlimited is a bound larger than any length). Chunked attention
  (``CHUNKED``) replaces the left bound: j is visible iff ``j <= p`` and ``j >= _first_key(p)``,
  the start of the chunk ``chunk_lookback`` chunks before p's own. Bidirectional prefix ranges
  (``USE_PREFIX``) only add keys: a query inside a range sees the range's keys up to its end, so
  rows carry an extra key interval ``[extra_lo, extra_hi]`` (``_row_extra_keys``). Per-sequence
  causal flags (``PER_SEQ_CAUSAL``) pick each sequence's right bound: 0, or the host's mirrored
  left window for a bidirectional sequence. R-SWA (``USE_RSWA``) is a sliding window of
  ``rswa_window - 1`` keys back plus the sequence's prefix ``[0, rswa_len)``: a second key range
  with tile phases of its own before the window's (``_stage_tiles``, ``_segment_layout``).
- Optional outputs and biases: ``STORE_LSE`` stores each row's natural-log log-sum-exp (from the
  2D epilogue's running max and exp-sum, or from the merge); ``USE_QQ_BIAS`` adds a bias between
  a sequence's new tokens, ``ALIBI_SQRT`` makes ALiBi's bias ``-slope * sqrt(p - j)``.
- INT4 caches (``KV_INT4``, vLLM's format): rows of ``HEAD_SIZE // 2`` bytes, unpacked per tile
  (``_unpack_int4``) into their even and odd dims, stored rotated by ``R = H D``. q enters that space
  once per program, split the same way, and the two accumulators leave it before any store
  (``_rotate_into_halves``, ``_rotate_from_halves``); in between it is the per-token-head walk.
- All address arithmetic that can exceed 2^31 elements is done in int64.
- Metadata is never trusted for addressing (no input may make a kernel touch memory outside its
  tensors, and checking values on the host would need a sync): ``_sequence_extent`` clamps a
  sequence's token range into ``[0, num_tokens)`` and its key count into ``[0, kv_capacity]``
  (the block table row's ``max_blocks * BLOCK_SIZE`` slots) once per program, and block ids
  outside ``[0, num_blocks)`` read the last block instead. The bounds are tensor shapes passed as scalars.
  For valid metadata every clamp is the identity; for invalid metadata the output is unspecified.
"""

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from . import spec

# Constexprs because @triton.jit code may only read constexpr globals.
LOG2E = tl.constexpr(spec.LOG2E)
LN2 = tl.constexpr(1.0 / spec.LOG2E)
INT32_MAX = tl.constexpr(spec.INT32_MAX)


@triton.jit
def _sequence_of(cu_seqlens_q_ptr, index, num_seqs, BLOCK_Q: tl.constexpr, PER_SEQ_PADDING: tl.constexpr):
    """Largest s with start(s) <= index, where start(s) = cu[s] // BLOCK_Q (+ s with padding).

    Binary search over the cumulative query lengths: no host-side mapping, so the launch
    needs no device-to-host copy of the metadata. Returns 0 when no s qualifies (only if
    cu[0] > 0, invalid): the callers' range checks then reject ``index``. Whatever ``cu``
    holds, the search reads only ``cu[0:num_seqs]``.
    """
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        start = tl.load(cu_seqlens_q_ptr + mid) // BLOCK_Q
        if PER_SEQ_PADDING:
            start += mid
        if start <= index:
            lo = mid + 1
        else:
            hi = mid
    return tl.maximum(lo - 1, 0)


@triton.jit
def _sequence_extent(cu_seqlens_q_ptr, seqused_k_ptr, seq, num_tokens, kv_capacity):
    """(q_start, q_len, seq_len) of sequence ``seq``, clamped so that no metadata value can
    address memory outside q/out/the workspace or past the block table's row.

    Tokens ``[q_start, q_start + q_len)`` lie inside ``[0, num_tokens)`` (a decreasing or
    out-of-range cu_seqlens_q gives q_len 0 or a shortened range); ``seq_len`` lies in
    ``[0, kv_capacity]`` (negative seqused_k behaves as 0). Identity on valid metadata.
    """
    q_start = tl.minimum(tl.maximum(tl.load(cu_seqlens_q_ptr + seq), 0), num_tokens)
    q_end = tl.minimum(tl.maximum(tl.load(cu_seqlens_q_ptr + seq + 1), q_start), num_tokens)
    # volatile: otherwise the compiler sinks this load below the caller's early exit on q_len, one
    # more dependent round trip before a decode's first K/V load. Decision [Volatile seqused_k load].
    seq_len = tl.minimum(tl.maximum(tl.load(seqused_k_ptr + seq, volatile=True), 0), kv_capacity)
    return q_start, q_end - q_start, seq_len


@triton.jit
def _seq_grid_skips(q_len, BLOCK_Q: tl.constexpr):
    """Whether a per-sequence grid (decode launches, a mixed batch's narrow launch) gives a sequence
    of ``q_len`` tokens no output: none to attend, or more than one block's (bad metadata, e.g.
    max_seqlen_q too small). The reduction launch asks the same, so it never merges partials that
    a skipped sequence did not write."""
    return (q_len == 0) | (q_len > BLOCK_Q)


@triton.jit
def _first_key(pos, window_left, chunk_size, chunk_lookback, CHUNKED: tl.constexpr):
    """First key the query at position ``pos`` sees (before the sequence's own bounds).

    Sliding window: ``pos - window_left``. Chunked attention: the start of the chunk
    ``chunk_lookback`` chunks before the query's own (``pos // chunk_size - chunk_lookback``),
    computed as ``max(chunk index - lookback, 0) * chunk_size`` so it stays in int32 (the host
    bounds ``chunk_size`` by the int32 range and ``chunk_lookback`` by ``spec.UNLIMITED``).
    Non-decreasing in ``pos`` either way, so a block's first and last rows bound it.
    """
    if CHUNKED:
        first = tl.maximum(pos // chunk_size - chunk_lookback, 0) * chunk_size
    else:
        first = tl.maximum(pos - window_left, 0)
    return first


@triton.jit
def _rswa_prefix(rswa_ptr, seq, seq_len):
    """R-SWA's always-visible prefix of sequence ``seq``: its length clipped to ``[0, seq_len]`` (a
    negative length sees no prefix, one past the sequence the whole of it; metadata, never trusted)."""
    return tl.minimum(tl.maximum(tl.load(rswa_ptr + seq), 0), seq_len)


@triton.jit
def _row_extra_keys(range_row_ptr, stride_range, stride_end, num_ranges, row_pos, seq_len, window_left,
                    BLOCK_M: tl.constexpr, PREFIX_CLAMP: tl.constexpr):
    """Per row, the keys prefix ranges add: ``[extra_lo, extra_hi]`` (empty when extra_lo > extra_hi).

    Every range holding the row's position holds that position, so their union is one interval:
    from the smallest start to the largest end. Unused entries (start >= end) hold nothing.
    PREFIX_CLAMP keeps the window's left bound (``key >= pos - window_left``). The interval is
    clipped to ``[0, seq_len)``, so range values (metadata) cannot make a key past the sequence
    visible, whatever they hold.
    """
    lo = tl.full([BLOCK_M], INT32_MAX, tl.int32)
    hi = tl.full([BLOCK_M], -1, tl.int32)
    for r in range(num_ranges):
        start = tl.load(range_row_ptr + r * stride_range)
        end = tl.load(range_row_ptr + r * stride_range + stride_end)
        inside = (start < end) & (row_pos >= start) & (row_pos <= end)
        lo = tl.where(inside, tl.minimum(lo, start), lo)
        hi = tl.where(inside, tl.maximum(hi, end), hi)
    lo = tl.maximum(lo, 0)
    if PREFIX_CLAMP:
        lo = tl.maximum(lo, row_pos - window_left)
    hi = tl.minimum(hi, seq_len - 1)
    return lo, hi


@triton.jit
def _prefix_first_key(range_row_ptr, stride_range, stride_end, num_ranges, context_len, seq_len, window_left,
                      PREFIX_CLAMP: tl.constexpr):
    """Smallest key a prefix range adds for some query of the sequence (int32 max when none).

    A range adds keys only if it overlaps the query positions ``[context_len, seq_len)``; its
    smallest added key is its start (with PREFIX_CLAMP: no earlier than its first query's
    window). Both the 3D kernel and the reduction compute it, for the same segment layout.
    """
    first = tl.full([], INT32_MAX, tl.int32)
    for r in range(num_ranges):
        start = tl.load(range_row_ptr + r * stride_range)
        end = tl.load(range_row_ptr + r * stride_range + stride_end)
        overlaps = (start < end) & (end >= context_len) & (start < seq_len)
        lower = tl.maximum(start, 0)
        if PREFIX_CLAMP:
            lower = tl.maximum(lower, tl.maximum(start, context_len) - window_left)
        first = tl.where(overlaps, tl.minimum(first, lower), first)
    return first


@triton.jit
def _segment_layout(seq_len, q_len, window_left, chunk_size, chunk_lookback, num_segments, range_first, rswa_len,
                    TILE: tl.constexpr, CHUNKED: tl.constexpr, USE_PREFIX: tl.constexpr, USE_RSWA: tl.constexpr):
    """How a sequence's KV tiles are split into segments: (first_tile, tiles_per_segment, active).

    Only tiles some query of the sequence can see are split (the window's left edge for its
    first query up to the end of the sequence), so segments wholly outside a sliding window do
    not exist. Segments numbered ``>= active`` hold no tile: the 3D kernel skips them and the
    reduction never reads them. Both kernels call this so they always agree.

    USE_RSWA: the split covers two tile ranges, the prefix's ``[0, cdiv(rswa_len, TILE))`` and then
    the window's from ``first_tile`` on (never below the prefix's end), numbered one after the
    other: segment s takes numbers ``[s, s + 1) * tiles_per_segment``, which the 3D kernel maps
    back to tiles.
    """
    if CHUNKED:
        first_key = _first_key(seq_len - q_len, window_left, chunk_size, chunk_lookback, CHUNKED)
    else:
        first_key = tl.maximum(seq_len - q_len - window_left, 0)
    if USE_PREFIX:
        first_key = tl.minimum(first_key, range_first)
    first_tile = first_key // TILE
    if USE_RSWA:
        prefix_tiles = tl.cdiv(rswa_len, TILE)
        first_tile = tl.maximum(first_tile, prefix_tiles)
        num_tiles = prefix_tiles + tl.maximum(tl.cdiv(seq_len, TILE) - first_tile, 0)
    else:
        num_tiles = tl.maximum(tl.cdiv(seq_len, TILE) - first_tile, 0)
    tiles_per_segment = tl.cdiv(num_tiles, num_segments)
    active = tl.cdiv(num_tiles, tl.maximum(tiles_per_segment, 1))
    return first_tile, tiles_per_segment, active


@triton.jit
def _visible(row_pos, key, seq_len, window_left, window_right, row_first, extra_lo, extra_hi, rswa_hi,
             CHUNKED: tl.constexpr, USE_PREFIX: tl.constexpr, USE_RSWA: tl.constexpr):
    """[rows, keys] visibility: inside the sequence and inside the (causal) window.

    CHUNKED: causal, and at or after the row's first key ``row_first`` (``_first_key``), which
    replaces the sliding window. USE_RSWA: the window is R-SWA's (``window_left = rswa_window -
    1``) and each row also sees the prefix keys before its ``rswa_hi``. USE_PREFIX:
    also the row's prefix-range keys ``[extra_lo, extra_hi]`` (``_row_extra_keys``, already inside
    the sequence).
    """
    distance = row_pos[:, None] - key[None, :]
    if CHUNKED:
        seen = (key[None, :] < seq_len) & (key[None, :] >= row_first[:, None]) & (distance >= 0)
    else:
        seen = (key[None, :] < seq_len) & (distance <= window_left) & (-distance <= window_right)
    if USE_RSWA:
        seen = seen | (key[None, :] < rswa_hi[:, None])
    if USE_PREFIX:
        seen = seen | ((key[None, :] >= extra_lo[:, None]) & (key[None, :] <= extra_hi[:, None]))
    return seen


# Below this |x| tanh comes from a polynomial: 1 - 2 / (e^{2|x|} + 1) loses log2(1 / tanh(x))
# bits to cancellation there (23 at x = 1e-7), under one above it.
TANH_POLY_BOUND = tl.constexpr(0.55)
# fp8 caches' f16 probabilities are computed times 2^P_F16_LOG2 (in exp2's shift) so that values
# down to 2^-38 keep f16's precision; acc is scaled back once, after the KV walk.
P_F16_LOG2 = tl.constexpr(14.0)
P_F16_SCALE = tl.constexpr(2.0 ** P_F16_LOG2.value)


@triton.jit
def _stable_tanh(x):
    """tanh(x) within a few float32 ulps relative at every magnitude, never NaN for finite x.

    |x| < TANH_POLY_BOUND: x + x^3 * Q(x^2), Q a degree-4 polynomial fitted (weighted least
    squares, minimax by Lawson reweighting) to (tanh(x) - x) / x^3 on [0, 0.55]; the fit's own
    relative error is 1e-9. Larger |x|: 1 - 2 / (e^{2|x|} + 1) with tanh's sign put back:
    e^{2|x|} overflowing to inf gives exactly 1 (unlike (e^x - e^-x) / (e^x + e^-x), no NaN).
    Both are computed and one is selected per element.
    """
    ax = tl.abs(x)
    large = 1.0 - 2.0 / (tl.exp2(ax * (2.0 * LOG2E)) + 1.0)
    large = tl.where(x < 0, -large, large)
    x2 = x * x
    q = -0.00627420945
    q = q * x2 + 0.0210716623
    q = q * x2 - 0.0538523069
    q = q * x2 + 0.133325861
    q = q * x2 - 0.333333176
    small = x + x * x2 * q
    return tl.where(ax < TANH_POLY_BOUND, small, large)


@triton.jit
def _f16_operand(x, scale):
    """``x`` (16-bit floats) as an f16 dot operand, and ``scale`` times the factor it was scaled by.

    e4m3 values convert to f16 in one instruction per two values, to bf16 in three (through f16),
    and the bf16 conversions, on a quarter-rate pipe, bound one-byte decode (Decision [f16 operands
    for fp8 caches]). So with an fp8 cache bf16 queries become f16: scaled
    by the power of two that puts their largest magnitude in [2^14, 2^15), where f16 holds every
    bf16 value of the block down to 2^-28 of it exactly (bf16: 8 significant bits, f16: 11). Zero,
    subnormal, inf or NaN maxima are not scaled (inf/NaN then propagate as they would in bf16).
    """
    amax = tl.max(tl.max(tl.abs(x.to(tl.float32)), 1), 0)
    exp_field = (amax.to(tl.int32, bitcast=True) >> 23) & 0xFF
    shift = tl.where((exp_field == 0) | (exp_field == 255), 0, exp_field - 127 - 14)
    up = ((127 - shift) << 23).to(tl.float32, bitcast=True)  # 2^-shift, exact
    down = ((127 + shift) << 23).to(tl.float32, bitcast=True)  # 2^shift
    return (x.to(tl.float32) * up).to(tl.float16), scale * down


@triton.jit
def _load_kv_tile(base_ptr, phys_block, slot, stride_blk, stride_slot, stride_dim, dims, key_valid, dim_valid,
                  TRANSPOSED: tl.constexpr, MASKED: tl.constexpr):
    """Gather a tile of cache rows: ``[HEAD_PAD, TILE]`` when TRANSPOSED (keys), else ``[TILE, HEAD_PAD]``.

    Unmasked (tiles every row sees, whole heads) the loads carry no predicate (Decision [Block id
    clamp]); the caller then guarantees every ``phys_block`` is a real block.
    """
    row_off = phys_block * stride_blk + slot.to(tl.int64) * stride_slot
    if TRANSPOSED:
        ptrs = base_ptr + row_off[None, :] + dims[:, None] * stride_dim
        mask = key_valid[None, :] & dim_valid[:, None]
    else:
        ptrs = base_ptr + row_off[:, None] + dims[None, :] * stride_dim
        mask = key_valid[:, None] & dim_valid[None, :]
    if MASKED:
        return tl.load(ptrs, mask=mask, other=0.0)
    return tl.load(ptrs)


@triton.jit
def _tile_block_ids(block_table_row, stride_bt_blk, tile, tile_end, key_lo, key_hi, rswa_len, TILE: tl.constexpr,
                    BLOCK_SIZE: tl.constexpr, BLOCKS_PER_TILE: tl.constexpr, MASKED: tl.constexpr,
                    USE_RSWA: tl.constexpr):
    """The block-table entries of the cache blocks KV tile ``tile`` covers; 0 for a tile at or
    past ``tile_end`` and (MASKED) for blocks holding no key of ``[key_lo, key_hi)`` (USE_RSWA: nor
    of R-SWA's prefix ``[0, rswa_len)``), unread."""
    table_col = (tile * TILE) // BLOCK_SIZE + tl.arange(0, BLOCKS_PER_TILE)
    col_valid = (tile + tl.zeros([BLOCKS_PER_TILE], tl.int32)) < tile_end
    if MASKED:
        if USE_RSWA:
            key_lo = tl.where(table_col * BLOCK_SIZE < rswa_len, 0, key_lo)
        col_valid = col_valid & (table_col * BLOCK_SIZE < key_hi) & ((table_col + 1) * BLOCK_SIZE > key_lo)
    return tl.load(block_table_row + table_col * stride_bt_blk, mask=col_valid, other=0)


@triton.jit
def _rht_signs(HEAD_PAD: tl.constexpr, RHT_BLOCK: tl.constexpr, RHT_SIGNS: tl.constexpr):
    """``[HEAD_PAD]`` float32: the INT4 rotation's signs ``D`` (bit i of ``RHT_SIGNS`` set: -1), repeated
    over every group of ``RHT_BLOCK`` dims. The mask is a compile-time int: read 16 bits at a time."""
    lane = tl.arange(0, HEAD_PAD) % RHT_BLOCK
    negative = tl.zeros([HEAD_PAD], tl.int32)
    for word in tl.static_range((RHT_BLOCK + 15) // 16):
        bits = (RHT_SIGNS >> (16 * word)) & 0xFFFF  # a constexpr (no annotation: it is reassigned per word)
        negative = tl.where(lane // 16 == word, (tl.full([HEAD_PAD], bits, tl.int32) >> (lane % 16)) & 1, negative)
    return 1.0 - 2.0 * negative.to(tl.float32)


@triton.jit
def _hadamard_entries(rows, cols, RHT_BLOCK: tl.constexpr):
    """float32 ``H[rows, cols]`` for index vectors ``rows`` and ``cols``. ``H`` is block diagonal, each block
    the Sylvester-Hadamard matrix of order ``RHT_BLOCK`` (entry (i, j): (-1)^popcount(i & j)); symmetric,
    ``H @ H = RHT_BLOCK * I``. Indices at or past the padded head fall in no block with a real dim."""
    both = rows[:, None] & cols[None, :] & (RHT_BLOCK - 1)
    # The parity of the set bits, folded down (RHT_BLOCK <= 512 < 2^16).
    both ^= both >> 8
    both ^= both >> 4
    both ^= both >> 2
    both ^= both >> 1
    same_group = (rows[:, None] // RHT_BLOCK) == (cols[None, :] // RHT_BLOCK)
    return tl.where(same_group, 1.0 - 2.0 * (both & 1).to(tl.float32), 0.0)


@triton.jit
def _rotate_into_halves(x, HEAD_PAD: tl.constexpr, LANES: tl.constexpr, RHT_BLOCK: tl.constexpr,
                        RHT_SIGNS: tl.constexpr):
    """INT4 caches hold rows rotated by ``R = H D``. Rows of ``x`` (float32 ``[rows, HEAD_PAD]``) times ``R / b``,
    into the cache's space (``(R q / b) . (R k) = q . k``, so the softmax scale stays), returned as the
    rotated rows' even dims and odd dims (``[rows, LANES]`` each): the dims of a byte's low and high
    nibbles, so the cache's tiles are never interleaved. ``/ b`` is a power of two and keeps
    ``|R q / b| <= max |q|``: no overflow in q's dtype. IEEE float32 dots: +-1 products are exact."""
    dims = tl.arange(0, HEAD_PAD)
    lanes = tl.arange(0, LANES)
    signed = x * _rht_signs(HEAD_PAD, RHT_BLOCK, RHT_SIGNS)[None, :]
    even = tl.dot(signed, _hadamard_entries(dims, 2 * lanes, RHT_BLOCK), input_precision="ieee")
    odd = tl.dot(signed, _hadamard_entries(dims, 2 * lanes + 1, RHT_BLOCK), input_precision="ieee")
    return even * (1.0 / RHT_BLOCK), odd * (1.0 / RHT_BLOCK)


@triton.jit
def _rotate_from_halves(even, odd, HEAD_PAD: tl.constexpr, LANES: tl.constexpr, RHT_BLOCK: tl.constexpr,
                        RHT_SIGNS: tl.constexpr):
    """Rows in the cache's rotated space, given as their even and odd dims (float32 ``[rows, LANES]``), times
    ``R^-1 = D H / b``: float32 ``[rows, HEAD_PAD]`` in q's space."""
    dims = tl.arange(0, HEAD_PAD)
    lanes = tl.arange(0, LANES)
    rows = tl.dot(even, _hadamard_entries(2 * lanes, dims, RHT_BLOCK), input_precision="ieee")
    rows = tl.dot(odd, _hadamard_entries(2 * lanes + 1, dims, RHT_BLOCK), rows, input_precision="ieee")
    return rows * (_rht_signs(HEAD_PAD, RHT_BLOCK, RHT_SIGNS) * (1.0 / RHT_BLOCK))[None, :]


@triton.jit
def _unpack_int4(packed, zero):
    """A loaded INT4 tile of bytes (byte i of a row holds dim 2i in its low nibble, dim 2i + 1 in its high
    one) as two float32 tiles of its shape, the even dims and the odd dims, each ``u - zero`` (``zero``
    broadcasts along the keys; integers in [-15, 15]: exact in every dot dtype; the scale multiplies
    scores or probabilities, as for int8). A nibble ``u`` becomes float32 ``2^23 + u`` by setting the
    exponent bits above it, and ``2^23 + zero`` is subtracted: no integer-to-float conversion."""
    bits = packed.to(tl.int32)
    offset = (zero | 0x4B000000).to(tl.float32, bitcast=True)
    low = ((bits & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - offset
    high = ((bits >> 4) | 0x4B000000).to(tl.float32, bitcast=True) - offset
    return low, high


@triton.jit
def _split_int4_scale(raw):
    """INT4 scale-cache entries (float32) -> (the scale with its 4 low mantissa bits cleared, the zero
    point those bits hold, int32)."""
    bits = raw.to(tl.int32, bitcast=True)
    return (bits & -16).to(tl.float32, bitcast=True), bits & 0xF


@triton.jit
def _attend_tiles(
    acc, m_i, l_i, acc_odd, q, q_odd, tile_begin, tile_end,
    k_base, v_base, block_table_row, stride_bt_blk,
    stride_k_blk, stride_k_slot, stride_k_dim, stride_v_blk, stride_v_slot, stride_v_dim,
    row_pos, key_lo, key_hi, seq_len, window_left, window_right, num_blocks,
    qk_scale, softcap, alibi_slope, dims, dim_valid, row_first, extra_lo, extra_hi,
    ks_base, vs_base, stride_ks_blk, stride_ks_slot, stride_vs_blk, stride_vs_slot,
    rswa_len, rswa_hi, qq_row_ptrs, qq_row_valid, stride_qqb_col, qq_bias_cols, context_len,
    MASKED: tl.constexpr, TILE: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_PADDED: tl.constexpr,
    USE_SOFTCAP: tl.constexpr, USE_ALIBI: tl.constexpr, DOT_PRECISION: tl.constexpr,
    CHUNKED: tl.constexpr, USE_PREFIX: tl.constexpr, KV_PER_TOKEN_HEAD: tl.constexpr, PV_F16: tl.constexpr,
    TABLE_AHEAD: tl.constexpr, FOLD_SCALE: tl.constexpr, ALIBI_SQRT: tl.constexpr, USE_QQ_BIAS: tl.constexpr,
    USE_RSWA: tl.constexpr, KV_INT4: tl.constexpr,
):
    """Online softmax over KV tiles ``[tile_begin, tile_end)``; returns the updated (acc, m_i, l_i, acc_odd).

    Scores are scaled, soft-capped, given their ALiBi bias (``ALIBI_SQRT``: ``-slope * sqrt(p - j)``
    for keys at or before the row, none after) and their ``qq_bias`` (``USE_QQ_BIAS``: column
    ``key - context_len`` of the rows' bias rows ``qq_row_ptrs``), then masked.

    ``KV_INT4`` (packed INT4 rows, per-token-head): ``dims`` / ``dim_valid`` address bytes, each unpacked
    into two dims with the row's zero point subtracted (``_unpack_int4``). Every tile stays split in its
    even and odd dims: ``q`` / ``acc`` hold the even dims of the rotated q / accumulator and ``q_odd`` /
    ``acc_odd`` the odd ones (the caller rotates them); QK^T and P x V are two dots each. Other caches
    leave ``q_odd`` and ``acc_odd`` untouched.

    K converts to q's dtype for QK^T. P x V takes q's dtype too, or with ``PV_F16`` (fp8 V under
    16-bit or fp8 queries) f16 operands: V exact, P computed times P_F16_SCALE and acc kept in
    those units (the caller scales it back).

    With ``FOLD_SCALE`` (the host proved ``qk_scale > 0``; no softcap, ALiBi or per-key scales)
    scores stay unscaled: a tile's row max times qk_scale is the max of the scaled scores, and the
    scaling joins exp2's argument (one FFMA per score instead of an FMUL and an FADD).

    With MASKED=False every key of every tile is known to be visible to every row (the caller
    proves it), so loads and scores skip masking. With MASKED=True keys outside
    ``[key_lo, key_hi)`` are not loaded at all (nor the block-table entry of a block holding
    none of them) and values there are zero, so NaN garbage in slots no query sees cannot reach
    the output.
    USE_RSWA: keys of R-SWA's prefix ``[0, rswa_len)`` below ``key_lo`` are loaded too.
    In both, a block id outside ``[0, num_blocks)`` (bad metadata) is not dereferenced: it is
    clamped to block ``num_blocks - 1`` (one unsigned 32-bit min per id per tile) and its keys
    take that block's values (the output of a call with invalid metadata is unspecified). The
    caller keeps every key below the block table's capacity; the host guarantees num_blocks >= 1.
    """
    offs = tl.arange(0, TILE)
    POW2_BLOCK: tl.constexpr = (BLOCK_SIZE & (BLOCK_SIZE - 1)) == 0
    # Power-of-two blocks and tiles: a tile covers whole blocks, or lies inside one. Per-token-head
    # caches read scales per key anyway and keep one id per key. Decision [Block-table ids per block].
    PER_BLOCK_IDS: tl.constexpr = POW2_BLOCK and not KV_PER_TOKEN_HEAD
    BLOCKS_PER_TILE: tl.constexpr = TILE // BLOCK_SIZE if POW2_BLOCK and BLOCK_SIZE < TILE else 1
    IDS_AHEAD: tl.constexpr = TABLE_AHEAD and PER_BLOCK_IDS
    if IDS_AHEAD:
        ids_ahead = _tile_block_ids(block_table_row, stride_bt_blk, tile_begin, tile_end, key_lo, key_hi, rswa_len,
                                    TILE, BLOCK_SIZE, BLOCKS_PER_TILE, MASKED, USE_RSWA)
    for tile in range(tile_begin, tile_end):
        key = tile * TILE + offs
        if POW2_BLOCK:
            # Keys are >= 0, so unsigned: one shift and one mask per key, where a signed division
            # and remainder also fix up negatives. Decision [Unsigned key split].
            key_u = key.to(tl.uint32, bitcast=True)
            block_index = (key_u // BLOCK_SIZE).to(tl.int32, bitcast=True)
            slot = (key_u % BLOCK_SIZE).to(tl.int32, bitcast=True)
        else:
            block_index = key // BLOCK_SIZE
            slot = key % BLOCK_SIZE
        if MASKED:
            if USE_RSWA:
                key_valid = ((key >= key_lo) | (key < rswa_len)) & (key < key_hi)
            else:
                key_valid = (key >= key_lo) & (key < key_hi)
        if PER_BLOCK_IDS:
            # One table entry per cache block the tile covers, broadcast to its keys: far fewer
            # table copies than one per key. Decision [Block-table ids per block].
            if IDS_AHEAD:
                # Loaded one iteration earlier, so this tile's K/V copies wait on no table copy and
                # stay in flight across iterations. Decision [Block-table ids a tile ahead].
                block_ids = ids_ahead
                ids_ahead = _tile_block_ids(block_table_row, stride_bt_blk, tile + 1, tile_end, key_lo, key_hi,
                                            rswa_len, TILE, BLOCK_SIZE, BLOCKS_PER_TILE, MASKED, USE_RSWA)
            else:
                # Inline rather than through _tile_block_ids: decode's masked walks compiled longer
                # through the helper (sm_90).
                table_col = (tile * TILE) // BLOCK_SIZE + tl.arange(0, BLOCKS_PER_TILE)
                if MASKED:
                    # Entries of blocks holding no key of [key_lo, key_hi) (nor of R-SWA's prefix) stay unread.
                    col_lo = tl.where(table_col * BLOCK_SIZE < rswa_len, 0, key_lo) if USE_RSWA else key_lo
                    col_valid = (table_col * BLOCK_SIZE < key_hi) & ((table_col + 1) * BLOCK_SIZE > col_lo)
                    block_ids = tl.load(block_table_row + table_col * stride_bt_blk, mask=col_valid, other=0)
                else:
                    block_ids = tl.load(block_table_row + table_col * stride_bt_blk)
            phys_block = tl.reshape(tl.broadcast_to(block_ids[:, None], [BLOCKS_PER_TILE, TILE // BLOCKS_PER_TILE]),
                                    [TILE])
        elif MASKED:
            phys_block = tl.load(block_table_row + block_index * stride_bt_blk, mask=key_valid, other=0)
        else:
            phys_block = tl.load(block_table_row + block_index * stride_bt_blk)
        # An out-of-range id (bad metadata) is clamped to the last block, so the K/V loads keep their
        # masks; as unsigned one umin covers both ends. Decision [Block id clamp].
        block_u = phys_block.to(tl.uint32, bitcast=True)
        # (+ an int32 zero: num_blocks == 1 arrives as a specialized constexpr int)
        num_blocks_u = (num_blocks + tl.zeros([], tl.int32)).to(tl.uint32, bitcast=True)
        if not MASKED:
            key_valid = key >= 0  # every key of an unmasked tile: the loads ignore it (unless HEAD_PADDED)
        phys_block = tl.minimum(block_u, num_blocks_u - 1).to(tl.int64)
        k_tile = _load_kv_tile(k_base, phys_block, slot, stride_k_blk, stride_k_slot, stride_k_dim, dims,
                               key_valid, dim_valid, True, MASKED or HEAD_PADDED)
        v_tile = _load_kv_tile(v_base, phys_block, slot, stride_v_blk, stride_v_slot, stride_v_dim, dims,
                               key_valid, dim_valid, False, MASKED or HEAD_PADDED)
        if KV_PER_TOKEN_HEAD:
            # Under the rows' key mask: a scale no row may see is never read (NaN there cannot reach
            # a product). They scale columns, not tiles: Decision [Per-token-head scales on columns].
            ks_ptrs = ks_base + phys_block * stride_ks_blk + slot.to(tl.int64) * stride_ks_slot
            vs_ptrs = vs_base + phys_block * stride_vs_blk + slot.to(tl.int64) * stride_vs_slot
            if MASKED:
                k_row_scale = tl.load(ks_ptrs, mask=key_valid, other=0.0)
                v_row_scale = tl.load(vs_ptrs, mask=key_valid, other=0.0)
            else:
                k_row_scale = tl.load(ks_ptrs)
                v_row_scale = tl.load(vs_ptrs)
            if KV_INT4:
                # Masked-off keys read scale 0 (zero point 0): their bytes, loaded as 0, center to 0.
                k_row_scale, k_zero = _split_int4_scale(k_row_scale)
                v_row_scale, v_zero = _split_int4_scale(v_row_scale)
                k_tile, k_odd = _unpack_int4(k_tile, k_zero[None, :])
                v_tile, v_odd = _unpack_int4(v_tile, v_zero[:, None])
        k_tile = k_tile.to(q.dtype)
        # fp8 queries: fp8 x fp8 for QK^T only; P x V in f16: fp8 wgmma wants V's keys contiguous,
        # the cache stores each key's dims contiguous. Decision [fp8 queries' P x V in f16].
        v_tile = v_tile.to(tl.float16 if PV_F16 else q.dtype)

        scores = tl.dot(q, k_tile, input_precision=DOT_PRECISION)
        if KV_INT4:
            scores = tl.dot(q_odd, k_odd.to(q.dtype), scores, input_precision=DOT_PRECISION)
        if not FOLD_SCALE:
            scores = scores * qk_scale
        if KV_PER_TOKEN_HEAD:
            scores = scores * k_row_scale[None, :]
        if USE_SOFTCAP:
            scores = softcap * _stable_tanh(scores / softcap)
        if USE_ALIBI:
            if ALIBI_SQRT:
                back = tl.maximum(row_pos[:, None] - key[None, :], 0).to(tl.float32)
                scores -= alibi_slope[:, None] * tl.sqrt(back)
            else:
                scores += alibi_slope[:, None] * (key[None, :] - row_pos[:, None]).to(tl.float32)
        if USE_QQ_BIAS:
            # Only the columns of the sequence's new tokens ([0, qq_bias_cols), clipped to the rows' bias
            # rows) are read; other keys get no bias. A -inf entry hides its key like the mask does.
            column = key - context_len
            qq_valid = qq_row_valid[:, None] & ((column >= 0) & (column < qq_bias_cols))[None, :]
            bias = tl.load(qq_row_ptrs[:, None] + column.to(tl.int64)[None, :] * stride_qqb_col, mask=qq_valid,
                           other=0.0)
            scores += bias.to(tl.float32) * LOG2E
        if MASKED:
            # The stand-in block's keys stay visible, as in unmasked tiles: with invalid metadata the
            # output is unspecified, and hiding them costs. Decision [Block id clamp].
            visible = _visible(row_pos, key, seq_len, window_left, window_right, row_first, extra_lo, extra_hi,
                               rswa_hi, CHUNKED, USE_PREFIX, USE_RSWA) & key_valid[None, :]
            scores = tl.where(visible, scores, float("-inf"))

        if FOLD_SCALE:
            # The scaled row max without scaling every score. Decision [Folded softmax scale].
            m_new = tl.maximum(m_i, tl.max(scores, 1) * qk_scale)
        else:
            m_new = tl.maximum(m_i, tl.max(scores, 1))
        # A row that has seen no visible key yet keeps m = -inf; shifting by 0 instead keeps
        # exp2(-inf - (-inf)) = NaN out of p and alpha.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_shift)
        if PV_F16:
            tl.static_assert(not FOLD_SCALE)  # fp8 caches scale by device descales: the sign is not known
            p = tl.exp2(scores - (m_shift - P_F16_LOG2)[:, None])  # p * P_F16_SCALE, <= P_F16_SCALE
            l_i = l_i * alpha + tl.sum(p, 1) * (1.0 / P_F16_SCALE)
            if KV_PER_TOKEN_HEAD:
                # Each value's scale over the tile's largest keeps p * scale inside f16's range
                # whatever the scales are; the tile's product is scaled back by that largest one.
                v_top = tl.max(v_row_scale, 0)
                v_top = tl.where(v_top > 0.0, v_top, 1.0)
                p_v = p * (v_row_scale * (1.0 / v_top))[None, :]
                pv = tl.dot(p_v.to(tl.float16), v_tile, input_precision=DOT_PRECISION) * v_top
            else:
                pv = tl.dot(p.to(tl.float16), v_tile, input_precision=DOT_PRECISION)
        else:
            if FOLD_SCALE:
                p = tl.exp2(scores * qk_scale - m_shift[:, None])
            else:
                p = tl.exp2(scores - m_shift[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            p_v = p * v_row_scale[None, :] if KV_PER_TOKEN_HEAD else p
            pv = tl.dot(p_v.to(v_tile.dtype), v_tile, input_precision=DOT_PRECISION)
            if KV_INT4:
                pv_odd = tl.dot(p_v.to(v_tile.dtype), v_odd.to(v_tile.dtype), input_precision=DOT_PRECISION)
                acc_odd = acc_odd * alpha[:, None] + pv_odd
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    return acc, m_i, l_i, acc_odd


@triton.jit
def _stage_tiles(STAGE: tl.constexpr, tile_p0, tile_pu, tile_pm, tile_a, tile_b, tile_c, tile_d):
    """Tile range of phase STAGE: 0 -> [a, b) masked, 1 -> [b, c) unmasked, 2 -> [c, d) masked; with
    R-SWA, its prefix's tiles before them: -2 -> [p0, pu) unmasked, -1 -> [pu, pm) masked."""
    if STAGE < 0:
        tile_begin = tile_p0 if STAGE == -2 else tile_pu
        tile_end = tile_pu if STAGE == -2 else tile_pm
    else:
        tile_begin = tile_a if STAGE == 0 else (tile_b if STAGE == 1 else tile_c)
        tile_end = tile_b if STAGE == 0 else (tile_c if STAGE == 1 else tile_d)
    return tile_begin, tile_end


@triton.jit
def _segment_weights(part_max_ptr, part_sum_ptr, part, valid, sinks_ptr, heads, head_valid, USE_SINKS: tl.constexpr,
                     CACHE: tl.constexpr):
    """Each segment's weight ``exp2(m_s - top)``, the merged normalizer and ``top`` (0 for a row with
    no logit), for ``[rows, segments]`` offsets ``part`` whose rows are query heads ``heads`` (with
    ``USE_SINKS`` each row's sink logit joins the normalizer); segments outside ``valid`` weigh 0.
    ``CACHE``: the partial loads' cache modifier: the fused merge reads partials other programs of
    the same launch wrote, with ``.cg`` (L2, never an L1 line; sm_90 `LDG.E.STRONG.GPU`); the
    reduction launch, which reads them after the 3D launch is done, with plain loads (`LDG.E`)."""
    seg_max = tl.load(part_max_ptr + part, mask=valid, other=float("-inf"), cache_modifier=CACHE)
    seg_sum = tl.load(part_sum_ptr + part, mask=valid, other=0.0, cache_modifier=CACHE)
    top = tl.max(seg_max, 1)
    if USE_SINKS:
        sink = tl.load(sinks_ptr + heads, mask=head_valid, other=float("-inf")).to(tl.float32) * LOG2E
        top = tl.maximum(top, sink)
    # All segments empty and no sink: shift by 0 so every weight is exp2(-inf) = 0, not NaN.
    top = tl.where(top == float("-inf"), 0.0, top)
    weight = tl.exp2(seg_max - top[:, None])
    denom = tl.sum(seg_sum * weight, 1)
    if USE_SINKS:
        denom += tl.exp2(sink - top)
    return weight, denom, top


@triton.jit
def _merge_partials(part_acc_ptr, part, valid, weight, denom, dims, dim_valid, HEAD_PAD: tl.constexpr,
                    CACHE: tl.constexpr):
    """``[rows, dims]``: the segments' partial outputs, weighted, summed and normalized (0 where
    the normalizer is 0: a row that saw no key and no sink); ``CACHE`` as in ``_segment_weights``."""
    acc = tl.load(part_acc_ptr + part[:, :, None] * HEAD_PAD + dims[None, None, :],
                  mask=valid[:, :, None] & dim_valid[None, None, :], other=0.0, cache_modifier=CACHE)
    return tl.sum(acc * weight[:, :, None], 1) / tl.where(denom == 0.0, 1.0, denom)[:, None]


@triton.jit
def _store_lse(lse_ptrs, top, expsum, mask):
    """Store rows' natural-log log-sum-exp from their max ``top`` (log2 units) and their exp-sum
    relative to it; -inf for a row that saw no key and no sink (exp-sum 0)."""
    empty = expsum == 0.0
    lse = tl.where(empty, float("-inf"), (top + tl.log2(tl.where(empty, 1.0, expsum))) * LN2)
    tl.store(lse_ptrs, lse, mask=mask)


@triton.jit
def _store_output(o_ptrs, result, mask, output_scale_ptr, OUT_FP8: tl.constexpr, OUT_FP8_MAX: tl.constexpr):
    """Store normalized rows into out (fp8 out: divided by its scale and saturated first)."""
    if OUT_FP8:
        result = result / tl.load(output_scale_ptr)
        result = tl.minimum(tl.maximum(result, -OUT_FP8_MAX), OUT_FP8_MAX)
    tl.store(o_ptrs, result.to(o_ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _merge_block_segments(
    out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, sinks_ptr, output_scale_ptr, lse_ptr,
    first_token, num_block_tokens, first_head, active, stride_o_tok, stride_o_head, stride_o_dim,
    stride_part_tok, stride_part_head, stride_lse_tok, stride_lse_head, NUM_QUERIES_PER_KV: tl.constexpr,
    MERGE_HEADS: tl.constexpr, MERGE_SEGMENTS: tl.constexpr, HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr,
    USE_SINKS: tl.constexpr, OUT_FP8: tl.constexpr, OUT_FP8_MAX: tl.constexpr, STORE_LSE: tl.constexpr,
):
    """The fused merge: the output of ``num_block_tokens`` tokens from ``first_token`` on, for the
    ``NUM_QUERIES_PER_KV`` heads from ``first_head`` on, from their ``active`` segments' partials
    (the planner bounds heads x segments x head dims: all held at once)."""
    heads = first_head + tl.arange(0, MERGE_HEADS)
    head_valid = tl.arange(0, MERGE_HEADS) < NUM_QUERIES_PER_KV
    segs = tl.arange(0, MERGE_SEGMENTS)
    valid = head_valid[:, None] & (segs < active)[None, :]
    dims = tl.arange(0, HEAD_PAD)
    dim_valid = dims < HEAD_SIZE
    # Decode blocks hold one token; the loop keeps any other block (bad metadata) memory-safe.
    for t in range(0, num_block_tokens):
        token = (first_token + t).to(tl.int64)
        part = token * stride_part_tok + heads[:, None] * stride_part_head + segs[None, :]
        weight, denom, top = _segment_weights(part_max_ptr, part_sum_ptr, part, valid, sinks_ptr, heads, head_valid,
                                              USE_SINKS, ".cg")
        result = _merge_partials(part_acc_ptr, part, valid, weight, denom, dims, dim_valid, HEAD_PAD, ".cg")
        o_ptrs = out_ptr + token * stride_o_tok + heads[:, None] * stride_o_head + dims[None, :] * stride_o_dim
        _store_output(o_ptrs, result, head_valid[:, None] & dim_valid[None, :], output_scale_ptr, OUT_FP8, OUT_FP8_MAX)
        if STORE_LSE:
            _store_lse(lse_ptr + token * stride_lse_tok + heads * stride_lse_head, top, denom, head_valid)


@triton.jit
def _paged_attention_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, block_table_ptr, cu_seqlens_q_ptr, seqused_k_ptr,
    alibi_ptr, sinks_ptr, k_descale_ptr, v_descale_ptr, output_scale_ptr, q_descale_ptr,
    part_acc_ptr, part_max_ptr, part_sum_ptr, prefix_ptr, k_scale_ptr, v_scale_ptr, merge_counter_ptr,
    qq_bias_ptr, causal_ptr, rswa_ptr, lse_ptr,
    stride_q_tok, stride_q_head, stride_q_dim,
    stride_o_tok, stride_o_head, stride_o_dim,
    stride_k_blk, stride_k_slot, stride_k_head, stride_k_dim,
    stride_v_blk, stride_v_slot, stride_v_head, stride_v_dim,
    stride_bt_seq, stride_bt_blk,
    stride_part_tok, stride_part_head,
    num_seqs, num_tokens, num_blocks, kv_capacity, qk_scale, softcap, window_left, window_right, num_segments,
    chunk_size, chunk_lookback, stride_pr_seq, stride_pr_range, stride_pr_end, num_ranges,
    stride_kds_seq, stride_kds_head, stride_vds_seq, stride_vds_head,
    stride_ks_blk, stride_ks_slot, stride_ks_head, stride_vs_blk, stride_vs_slot, stride_vs_head,
    stride_qqb_row, stride_qqb_col, stride_lse_tok, stride_lse_head, qq_bias_rows, qq_bias_cols,
    NUM_QUERIES_PER_KV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr,
    TILE: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr,
    USE_SOFTCAP: tl.constexpr, USE_ALIBI: tl.constexpr, USE_SINKS: tl.constexpr,
    KV_FP8: tl.constexpr, OUT_FP8: tl.constexpr, OUT_FP8_MAX: tl.constexpr,
    SPLIT_KV: tl.constexpr, DOT_PRECISION: tl.constexpr, CHUNKED: tl.constexpr,
    USE_PREFIX: tl.constexpr, PREFIX_CLAMP: tl.constexpr, DESCALE_PER_HEAD: tl.constexpr,
    KV_PER_TOKEN_HEAD: tl.constexpr, Q_FP8: tl.constexpr, PV_F16: tl.constexpr,
    PROGRAMMATIC_LAUNCH: tl.constexpr, SEQ_GRID: tl.constexpr, NARROW_Q: tl.constexpr,
    AWAIT_PRIMARY: tl.constexpr, TABLE_AHEAD: tl.constexpr, FOLD_SCALE: tl.constexpr,
    FUSED_MERGE: tl.constexpr, MERGE_HEADS: tl.constexpr, MERGE_SEGMENTS: tl.constexpr,
    USE_QQ_BIAS: tl.constexpr, ALIBI_SQRT: tl.constexpr, PER_SEQ_CAUSAL: tl.constexpr, USE_RSWA: tl.constexpr,
    STORE_LSE: tl.constexpr, KV_INT4: tl.constexpr, RHT_BLOCK: tl.constexpr, RHT_SIGNS: tl.constexpr,
):
    if PROGRAMMATIC_LAUNCH:
        # Let the dependent launch start now: the reduction (it waits for this grid before reading
        # a partial) or a mixed batch's narrow launch (it fills the SMs this grid's last wave leaves).
        gdc_launch_dependents()
    kv_head = tl.program_id(1)
    segment = tl.program_id(2)
    if SEQ_GRID:
        # One program per (sequence, KV head) for sequences of at most BLOCK_Q tokens: a decode launch
        # (a longer sequence is bad metadata: no output) or a mixed batch's narrow launch.
        seq = tl.program_id(0)
        q_start, q_len, seq_len = _sequence_extent(cu_seqlens_q_ptr, seqused_k_ptr, seq, num_tokens, kv_capacity)
        local_block = 0
        if _seq_grid_skips(q_len, BLOCK_Q):
            if AWAIT_PRIMARY:
                gdc_wait()  # see the end of the kernel
            return
    else:
        # Highest query blocks first: under causal masking they walk the most KV tiles, and
        # starting them early keeps the last wave of a prefill grid short.
        q_block = tl.num_programs(0) - 1 - tl.program_id(0)
        seq = _sequence_of(cu_seqlens_q_ptr, q_block, num_seqs, BLOCK_Q, True)
        q_start, q_len, seq_len = _sequence_extent(cu_seqlens_q_ptr, seqused_k_ptr, seq, num_tokens, kv_capacity)
        local_block = q_block - (q_start // BLOCK_Q + seq)
        # local_block < 0 happens only with bad metadata (a clamped q_start); such blocks own no rows.
        if (local_block < 0) | (local_block * BLOCK_Q >= q_len):
            return
        if NARROW_Q > 0:
            if q_len <= NARROW_Q:
                return  # a short sequence: the narrow launch attends it with decode-sized blocks
    context_len = seq_len - q_len
    if PER_SEQ_CAUSAL:
        # The host's right bound is a bidirectional sequence's (its left window, mirrored); a causal
        # sequence's is 0. Every bound below derives from it.
        window_right = tl.where(tl.load(causal_ptr + seq) != 0, 0, window_right)

    rows = tl.arange(0, BLOCK_M)
    row_tok = local_block * BLOCK_Q + rows // NUM_QUERIES_PER_KV
    row_head = kv_head * NUM_QUERIES_PER_KV + rows % NUM_QUERIES_PER_KV
    row_valid = (rows < BLOCK_Q * NUM_QUERIES_PER_KV) & (row_tok < q_len)
    row_pos = context_len + row_tok
    dims = tl.arange(0, HEAD_PAD)
    dim_valid = dims < HEAD_SIZE
    if KV_INT4:
        # A packed row's bytes, two dims each; at least 16 lanes, a dot's shortest inner dim.
        INT4_LANES: tl.constexpr = HEAD_PAD // 2 if HEAD_PAD >= 32 else 16
        kv_dims = tl.arange(0, INT4_LANES)
        kv_dim_valid = kv_dims < HEAD_SIZE // 2
        KV_PADDED: tl.constexpr = 2 * INT4_LANES != HEAD_SIZE
    else:
        kv_dims = dims
        kv_dim_valid = dim_valid
        KV_PADDED: tl.constexpr = HEAD_PAD != HEAD_SIZE

    # q stays in registers for the whole KV walk.
    q_rows = (q_start + row_tok).to(tl.int64)
    q_ptrs = q_ptr + q_rows[:, None] * stride_q_tok + row_head[:, None] * stride_q_head + dims[None, :] * stride_q_dim
    q = tl.load(q_ptrs, mask=row_valid[:, None] & dim_valid[None, :], other=0.0)
    if KV_INT4:
        # Into the cache's rotated space once per program, split in even and odd dims (the output comes
        # back after the walk).
        q_even, q_odd = _rotate_into_halves(q.to(tl.float32), HEAD_PAD, INT4_LANES, RHT_BLOCK, RHT_SIGNS)
        q_odd = q_odd.to(q.dtype)
        q = q_even.to(q.dtype)
    else:
        q_odd = q  # unused

    # Keys some row of this block sees, and keys every row sees (those tiles skip masking).
    first_pos = context_len + local_block * BLOCK_Q
    last_pos = context_len + tl.minimum(q_len, (local_block + 1) * BLOCK_Q) - 1
    # Chunked attention is causal (window_right = 0) and its first key is non-decreasing in the
    # position, so the block's first and last rows bound it just as they bound a window.
    key_lo = _first_key(first_pos, window_left, chunk_size, chunk_lookback, CHUNKED)
    key_hi = tl.minimum(seq_len, last_pos + window_right + 1)
    all_lo = _first_key(last_pos, window_left, chunk_size, chunk_lookback, CHUNKED)
    all_hi = tl.minimum(seq_len, first_pos + window_right + 1)
    if USE_PREFIX:
        # Range keys widen the block's key range, to the right of the diagonal included; every
        # row still sees [all_lo, all_hi) (ranges only add keys), so the unmasked tiles stay.
        range_row_ptr = prefix_ptr + seq.to(tl.int64) * stride_pr_seq
        extra_lo, extra_hi = _row_extra_keys(range_row_ptr, stride_pr_range, stride_pr_end, num_ranges, row_pos,
                                             seq_len, window_left, BLOCK_M, PREFIX_CLAMP)
        has_extra = row_valid & (extra_lo <= extra_hi)
        key_lo = tl.minimum(key_lo, tl.min(tl.where(has_extra, extra_lo, INT32_MAX), 0))
        key_hi = tl.maximum(key_hi, tl.max(tl.where(has_extra, extra_hi + 1, 0), 0))
    else:
        extra_lo = row_pos  # unused
        extra_hi = row_pos
    tile_a = key_lo // TILE
    tile_d = tl.cdiv(key_hi, TILE)
    tile_b = tl.minimum(tl.maximum(tl.cdiv(all_lo, TILE), tile_a), tile_d)
    tile_c = tl.minimum(tl.maximum(all_hi // TILE, tile_b), tile_d)
    if USE_RSWA:
        # R-SWA's prefix [0, rswa_len) is a second key range (the window is the sliding one, window_left =
        # rswa_window - 1): its tiles get two phases of their own, [p0, pu) that every row sees whole
        # (keys below all_hi) and [pu, pm) masked, and the window's phases start past them.
        rswa_len = _rswa_prefix(rswa_ptr, seq, seq_len)
        rswa_hi = tl.minimum(rswa_len, row_pos + window_right + 1)
        rswa_tiles = tl.cdiv(rswa_len, TILE)
        tile_p0 = 0
        tile_pm = tl.minimum(rswa_tiles, tile_d)
        tile_pu = tl.minimum(tl.minimum(rswa_len, all_hi) // TILE, tile_pm)
        tile_a = tl.maximum(tile_a, rswa_tiles)
        tile_b = tl.maximum(tile_b, rswa_tiles)
        tile_c = tl.maximum(tile_c, rswa_tiles)
        tile_d = tl.maximum(tile_d, rswa_tiles)
    else:
        rswa_len = seq_len  # unused
        rswa_hi = row_pos
        tile_p0 = tile_a
        tile_pu = tile_a
        tile_pm = tile_a
    if SPLIT_KV:
        if USE_PREFIX:
            range_first = _prefix_first_key(range_row_ptr, stride_pr_range, stride_pr_end, num_ranges, context_len,
                                            seq_len, window_left, PREFIX_CLAMP)
        else:
            range_first = seq_len  # unused
        first_tile, tiles_per_segment, active = _segment_layout(seq_len, q_len, window_left, chunk_size,
                                                                chunk_lookback, num_segments, range_first, rswa_len,
                                                                TILE, CHUNKED, USE_PREFIX, USE_RSWA)
        # With the fused merge a sequence with no tile still has one (empty) segment: its program
        # is the one that writes the rows' output.
        if segment >= (tl.maximum(active, 1) if FUSED_MERGE else active):
            return
        if USE_RSWA:
            # The segment's numbers (_segment_layout): the prefix's tiles first, then the window's.
            number_lo = segment * tiles_per_segment
            number_hi = number_lo + tiles_per_segment
            prefix_lo = tl.minimum(number_lo, rswa_tiles)
            prefix_hi = tl.minimum(number_hi, rswa_tiles)
            tile_p0 = prefix_lo
            tile_pu = tl.minimum(tl.maximum(tile_pu, prefix_lo), prefix_hi)
            tile_pm = tl.minimum(tl.maximum(tile_pm, prefix_lo), prefix_hi)
            seg_lo = first_tile + tl.maximum(number_lo - rswa_tiles, 0)
            seg_hi = first_tile + tl.maximum(number_hi - rswa_tiles, 0)
        else:
            seg_lo = first_tile + segment * tiles_per_segment
            seg_hi = seg_lo + tiles_per_segment
        tile_a = tl.minimum(tl.maximum(tile_a, seg_lo), seg_hi)
        tile_b = tl.minimum(tl.maximum(tile_b, seg_lo), seg_hi)
        tile_c = tl.minimum(tl.maximum(tile_c, seg_lo), seg_hi)
        tile_d = tl.minimum(tl.maximum(tile_d, seg_lo), seg_hi)

    scale = qk_scale
    if Q_FP8:
        # fp8 queries stay fp8 for the fp8 x fp8 QK^T dot; their per-tensor descale folds into the scale.
        scale = scale * tl.load(q_descale_ptr)
    if KV_FP8:
        if DESCALE_PER_HEAD:
            # One descale per (sequence, KV head); a one-element descale comes with zero strides.
            scale = scale * tl.load(k_descale_ptr + seq * stride_kds_seq + kv_head * stride_kds_head)
        else:
            scale = scale * tl.load(k_descale_ptr)
    if PV_F16 and q.dtype == tl.bfloat16:  # fp8 cache: bf16 queries join the f16 dots too
        q, scale = _f16_operand(q, scale)
    if USE_ALIBI:
        alibi_slope = tl.load(alibi_ptr + row_head, mask=row_valid, other=0.0).to(tl.float32) * LOG2E
    else:
        alibi_slope = tl.zeros([BLOCK_M], dtype=tl.float32)

    if CHUNKED:
        row_first = _first_key(row_pos, window_left, chunk_size, chunk_lookback, CHUNKED)
    else:
        row_first = row_pos  # unused
    if USE_QQ_BIAS:
        # Row i of qq_bias is the sequence's i-th new token; rows past the bias's own (bad metadata) read none.
        qq_row_ptrs = qq_bias_ptr + row_tok.to(tl.int64) * stride_qqb_row
        qq_row_valid = row_valid & (row_tok < qq_bias_rows)
    else:
        qq_row_ptrs = row_pos  # unused
        qq_row_valid = row_valid

    if KV_INT4:
        acc = tl.zeros([BLOCK_M, INT4_LANES], dtype=tl.float32)
        acc_odd = tl.zeros([BLOCK_M, INT4_LANES], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32)
        acc_odd = tl.zeros([1, 1], dtype=tl.float32)  # unused
    if USE_SINKS and not SPLIT_KV:
        # The sink is one extra logit with no value: start the softmax from it.
        m_i = tl.load(sinks_ptr + row_head, mask=row_valid, other=float("-inf")).to(tl.float32) * LOG2E
        l_i = tl.where(m_i == float("-inf"), 0.0, 1.0)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    k_base = k_ptr + kv_head.to(tl.int64) * stride_k_head
    v_base = v_ptr + kv_head.to(tl.int64) * stride_v_head
    block_table_row = block_table_ptr + seq.to(tl.int64) * stride_bt_seq
    ks_base = k_scale_ptr + kv_head.to(tl.int64) * stride_ks_head
    vs_base = v_scale_ptr + kv_head.to(tl.int64) * stride_vs_head

    # Masked left-edge tiles, tiles every row sees whole, masked right-edge tiles (R-SWA: after its
    # prefix's whole and masked tiles): unrolled at compile time, so each phase is its own loop
    # specialized on MASKED.
    FIRST_STAGE: tl.constexpr = -2 if USE_RSWA else 0
    for stage in tl.static_range(FIRST_STAGE, 3):
        tile_begin, tile_end = _stage_tiles(stage, tile_p0, tile_pu, tile_pm, tile_a, tile_b, tile_c, tile_d)
        acc, m_i, l_i, acc_odd = _attend_tiles(
            acc, m_i, l_i, acc_odd, q, q_odd, tile_begin, tile_end, k_base, v_base, block_table_row, stride_bt_blk,
            stride_k_blk, stride_k_slot, stride_k_dim, stride_v_blk, stride_v_slot, stride_v_dim,
            row_pos, key_lo, key_hi, seq_len, window_left, window_right, num_blocks, scale, softcap, alibi_slope,
            kv_dims, kv_dim_valid, row_first, extra_lo, extra_hi,
            ks_base, vs_base, stride_ks_blk, stride_ks_slot, stride_vs_blk, stride_vs_slot,
            rswa_len, rswa_hi, qq_row_ptrs, qq_row_valid, stride_qqb_col, qq_bias_cols, context_len,
            (stage != 1) and (stage != -2), TILE, BLOCK_SIZE, KV_PADDED, USE_SOFTCAP, USE_ALIBI,
            DOT_PRECISION, CHUNKED, USE_PREFIX, KV_PER_TOKEN_HEAD, PV_F16, TABLE_AHEAD, FOLD_SCALE, ALIBI_SQRT,
            USE_QQ_BIAS, USE_RSWA, KV_INT4)
    if PV_F16:
        acc = acc * (1.0 / P_F16_SCALE)
    if KV_INT4:
        # Back into q's space; the 3D kernel's partials too (the merge is linear in them).
        acc = _rotate_from_halves(acc, acc_odd, HEAD_PAD, INT4_LANES, RHT_BLOCK, RHT_SIGNS)

    if KV_FP8:
        if DESCALE_PER_HEAD:
            acc = acc * tl.load(v_descale_ptr + seq * stride_vds_seq + kv_head * stride_vds_head)
        else:
            acc = acc * tl.load(v_descale_ptr)

    if SPLIT_KV:
        part = (q_start + row_tok).to(tl.int64) * stride_part_tok + row_head * stride_part_head + segment
        tl.store(part_max_ptr + part, m_i, mask=row_valid)
        tl.store(part_sum_ptr + part, l_i, mask=row_valid)
        acc_ptrs = part_acc_ptr + part[:, None] * HEAD_PAD + dims[None, :]
        tl.store(acc_ptrs, acc, mask=row_valid[:, None])
        if FUSED_MERGE:
            # The last program of this (query block, KV head) to arrive merges (grid-indexed counters: back
            # to zero whatever the metadata); the barrier and acq_rel order every partial before its read.
            tl.debug_barrier()
            counter_ptr = merge_counter_ptr + (tl.program_id(0) * tl.num_programs(1) + kv_head)
            arrived = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")
            if arrived == tl.maximum(active, 1) - 1:
                tl.store(counter_ptr, 0)  # each launch leaves the counters as it found them: zero
                _merge_block_segments(
                    out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, sinks_ptr, output_scale_ptr, lse_ptr,
                    q_start + local_block * BLOCK_Q, tl.minimum(BLOCK_Q, q_len - local_block * BLOCK_Q),
                    kv_head * NUM_QUERIES_PER_KV, active, stride_o_tok, stride_o_head, stride_o_dim,
                    stride_part_tok, stride_part_head, stride_lse_tok, stride_lse_head, NUM_QUERIES_PER_KV,
                    MERGE_HEADS, MERGE_SEGMENTS, HEAD_SIZE, HEAD_PAD, USE_SINKS, OUT_FP8, OUT_FP8_MAX, STORE_LSE)
    else:
        # l_i == 0 only for rows that saw no key and no sink: their acc is 0, so they store 0.
        result = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o_ptrs = out_ptr + q_rows[:, None] * stride_o_tok + row_head[:, None] * stride_o_head + dims[None, :] * stride_o_dim
        _store_output(o_ptrs, result, row_valid[:, None] & dim_valid[None, :], output_scale_ptr, OUT_FP8, OUT_FP8_MAX)
        if STORE_LSE:
            _store_lse(lse_ptr + q_rows * stride_lse_tok + row_head * stride_lse_head, m_i, l_i, row_valid)
    if AWAIT_PRIMARY:
        # A programmatic dependent of the wide launch needs none of its results, but no program of
        # it ends before that launch has: whatever the stream runs next reads every row of out.
        gdc_wait()


@triton.jit
def _reduce_segments_kernel(
    out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, cu_seqlens_q_ptr, seqused_k_ptr,
    sinks_ptr, output_scale_ptr, prefix_ptr, rswa_ptr, lse_ptr,
    stride_o_tok, stride_o_head, stride_o_dim,
    stride_part_tok, stride_part_head,
    num_seqs, num_tokens, kv_capacity, num_q_heads, window_left, num_segments, chunk_size, chunk_lookback,
    stride_pr_seq, stride_pr_range, stride_pr_end, num_ranges, stride_lse_tok, stride_lse_head,
    TILE: tl.constexpr, HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr, SEGMENTS_PAD: tl.constexpr,
    HEADS: tl.constexpr, DIMS: tl.constexpr, USE_SINKS: tl.constexpr, OUT_FP8: tl.constexpr,
    OUT_FP8_MAX: tl.constexpr, CHUNKED: tl.constexpr, USE_PREFIX: tl.constexpr, PREFIX_CLAMP: tl.constexpr,
    PROGRAMMATIC_LAUNCH: tl.constexpr, SEQ_GRID_BLOCK_Q: tl.constexpr, USE_RSWA: tl.constexpr,
    STORE_LSE: tl.constexpr,
):
    """Merge the segments of ``HEADS`` query heads x ``DIMS`` head-dim lanes of one token.

    Reads only the segments ``_segment_layout`` calls active; the others were never written.
    """
    token = tl.program_id(0)
    seq = _sequence_of(cu_seqlens_q_ptr, token, num_seqs, 1, False)
    # The same clamped extent as the 3D kernel's, so both agree on the segment layout.
    q_start, q_len, seq_len = _sequence_extent(cu_seqlens_q_ptr, seqused_k_ptr, seq, num_tokens, kv_capacity)
    if (token < q_start) | (token >= q_start + q_len):
        return  # padding rows past the last sequence (or, with bad metadata, rows no sequence owns)
    if SEQ_GRID_BLOCK_Q > 0:
        if _seq_grid_skips(q_len, SEQ_GRID_BLOCK_Q):
            return  # the 3D launch's per-sequence grid wrote no partial of this sequence
    if USE_PREFIX:
        range_first = _prefix_first_key(prefix_ptr + seq.to(tl.int64) * stride_pr_seq, stride_pr_range,
                                        stride_pr_end, num_ranges, seq_len - q_len, seq_len, window_left,
                                        PREFIX_CLAMP)
    else:
        range_first = seq_len  # unused
    if USE_RSWA:
        rswa_len = _rswa_prefix(rswa_ptr, seq, seq_len)
    else:
        rswa_len = seq_len  # unused
    first_tile, tiles_per_segment, active = _segment_layout(seq_len, q_len, window_left, chunk_size, chunk_lookback,
                                                            num_segments, range_first, rswa_len, TILE, CHUNKED,
                                                            USE_PREFIX, USE_RSWA)

    heads = tl.program_id(1) * HEADS + tl.arange(0, HEADS)
    head_valid = heads < num_q_heads
    if PROGRAMMATIC_LAUNCH:
        gdc_wait()  # metadata above is the caller's; the partials below are the 3D kernel's
    segs = tl.arange(0, SEGMENTS_PAD)
    valid = head_valid[:, None] & (segs < active)[None, :]
    part = token.to(tl.int64) * stride_part_tok + heads[:, None] * stride_part_head + segs[None, :]
    weight, denom, top = _segment_weights(part_max_ptr, part_sum_ptr, part, valid, sinks_ptr, heads, head_valid,
                                          USE_SINKS, "")
    dims = tl.program_id(2) * DIMS + tl.arange(0, DIMS)
    dim_valid = dims < HEAD_SIZE
    result = _merge_partials(part_acc_ptr, part, valid, weight, denom, dims, dim_valid, HEAD_PAD, "")
    o_ptrs = out_ptr + token.to(tl.int64) * stride_o_tok + heads[:, None] * stride_o_head + dims[None, :] * stride_o_dim
    _store_output(o_ptrs, result, head_valid[:, None] & dim_valid[None, :], output_scale_ptr, OUT_FP8, OUT_FP8_MAX)
    if STORE_LSE:
        if tl.program_id(2) == 0:  # the token's head-dim programs merge the same weights: one stores the LSE
            _store_lse(lse_ptr + token.to(tl.int64) * stride_lse_tok + heads * stride_lse_head, top, denom, head_valid)
