"""dispatch tier: the planner's documented choices, and forced paths agreeing with each other."""

import dataclasses

import pytest

from attention_suite import build, tables

H100_SMS = 132
LLAMA = dict(num_q_heads=32, num_kv_heads=8, head_size=128, num_sms=H100_SMS)
PREFILL_4X2048 = dict(LLAMA, num_tokens=8192, num_seqs=4, max_seqlen_q=2048, max_seqlen_k=2048)


@pytest.fixture
def planner(impl):
    if not impl.is_ours:
        pytest.skip("planner tests apply to paged_kernels.unified_attention only")
    from paged_kernels import plan

    return plan


def _decode(planner, num_seqs, seq_len, **overrides):
    args = dict(LLAMA, num_tokens=num_seqs, num_seqs=num_seqs, max_seqlen_q=1, max_seqlen_k=seq_len)
    return planner.plan_launch(**{**args, **overrides})


@pytest.mark.dispatch
@pytest.mark.quick
def test_small_batch_long_decode_splits_kv(planner):
    plan = _decode(planner, 1, 13_300)
    assert plan.path == "3d"
    programs = plan.grid[0] * plan.grid[1] * plan.grid[2]
    assert programs >= planner.PROGRAMS_PER_SM * H100_SMS * 0.5, plan


@pytest.mark.dispatch
@pytest.mark.quick
def test_decode_grid_that_fills_the_device_stays_2d(planner):
    num_seqs = planner.SPLIT_BELOW_PROGRAMS_PER_SM * H100_SMS // LLAMA["num_kv_heads"]
    assert _decode(planner, num_seqs, 4096).path == "2d"
    assert _decode(planner, num_seqs - 1, 4096).path == "3d"
    assert _decode(planner, 64, 4096).path == "2d"  # 512 programs: 2D measured fastest on the H100


@pytest.mark.dispatch
@pytest.mark.quick
def test_short_decode_stays_2d(planner):
    """A sequence that fits in fewer than two segments' worth of tiles has nothing to split."""
    tile = _decode(planner, 1, 100).tile_size
    plan = _decode(planner, 1, (2 * planner.MIN_TILES_PER_SEGMENT - 1) * tile)
    assert plan.path == "2d", plan


@pytest.mark.dispatch
@pytest.mark.quick
@pytest.mark.parametrize("num_seqs, q_len, seq_len", [(1, 2, 8192), (1, 8, 32_768), (8, 4, 8192), (16, 8, 4096)])
def test_small_verify_batch_splits_kv(planner, num_seqs, q_len, seq_len):
    """A few drafted tokens per sequence fit one query block: a grid as small as decode's, split alike."""
    plan = planner.plan_launch(**LLAMA, num_tokens=num_seqs * q_len, num_seqs=num_seqs, max_seqlen_q=q_len,
                               max_seqlen_k=seq_len)
    assert plan.path == "3d" and plan.block_q >= q_len, plan


@pytest.mark.dispatch
@pytest.mark.quick
def test_verify_grid_that_fills_the_device_stays_2d(planner):
    full = -(-planner.VERIFY_SPLIT_BELOW_PROGRAMS_PER_SM * H100_SMS // LLAMA["num_kv_heads"])  # ceil
    for num_seqs, q_len in ((full, 4), (32, 8), (4, planner.VERIFY_MAX_QUERY_LEN + 1)):
        plan = planner.plan_launch(**LLAMA, num_tokens=num_seqs * q_len, num_seqs=num_seqs, max_seqlen_q=q_len,
                                   max_seqlen_k=8192)
        assert plan.path == "2d", plan


@pytest.mark.dispatch
@pytest.mark.quick
def test_prefill_is_2d_with_large_query_blocks(planner):
    plan = planner.plan_launch(**PREFILL_4X2048)
    assert plan.path == "2d" and plan.block_m >= 64, plan


@pytest.mark.dispatch
@pytest.mark.quick
@pytest.mark.parametrize("num_seqs, seq_len, segments, tile", [
    (1, 13_300, 32, 128), (1, 131_072, 32, 128), (4, 4096, 8, 128), (16, 4096, 2, 128),
    (1, 510, 32, 16), (1, 600, 38, 16), (1, 1300, 41, 32), (1, 2100, 33, 64), (1, 3700, 32, 64),
    (1, 6900, 32, 128)])
def test_documented_segment_counts(planner, num_seqs, seq_len, segments, tile):
    """The counts of Decisions [Split-KV segment count] (benchmarks/results/*-tune.md), [Short decode
    tiles] and [One tile per segment within one wave] (L3700's 58 x 64 keys would need a second wave)."""
    plan = _decode(planner, num_seqs, seq_len)
    assert (plan.path, plan.num_segments, plan.tile_size) == ("3d", segments, tile), plan


@pytest.mark.dispatch
@pytest.mark.quick
def test_segments_never_exceed_the_cap_or_the_tiles(planner):
    for seq_len in (300, 5_000, 131_072):
        plan = _decode(planner, 1, seq_len)
        tiles = -(-seq_len // plan.tile_size)
        assert plan.num_segments <= planner.MAX_SEGMENTS
        assert plan.path == "2d" or plan.num_segments <= max(2, tiles // planner.MIN_TILES_PER_SEGMENT)


@pytest.mark.dispatch
@pytest.mark.quick
@pytest.mark.parametrize("split_kv, path", [(True, "3d"), (False, "2d")])
def test_forcing_wins_over_heuristic(planner, split_kv, path):
    assert _decode(planner, 1, 13_300, split_kv=split_kv).path == path
    assert _decode(planner, 512, 100, split_kv=split_kv).path == path


@pytest.mark.dispatch
@pytest.mark.quick
def test_workspace_caps_segments(planner):
    assert _decode(planner, 1, 100_000, max_segments=8).num_segments == 8
    with pytest.raises(ValueError, match="num_segments"):
        _decode(planner, 1, 100_000, num_segments=16, max_segments=8)


@pytest.mark.dispatch
@pytest.mark.quick
def test_batch_invariant_plan_ignores_the_batch(planner):
    plans = {(_decode(planner, n, L, batch_invariant=True).path, _decode(planner, n, L, batch_invariant=True).tile_size,
              _decode(planner, n, L, batch_invariant=True).block_m) for n in (1, 7, 300) for L in (10, 5000)}
    assert len(plans) == 1, plans


@pytest.mark.dispatch
@pytest.mark.quick
@pytest.mark.parametrize("label", ["quick-varlen", "quick-decode-window-sinks", "quick-fp8kv", "quick-qlen0-padded"])
def test_argument_checks_and_planning_read_no_tensor_values(planner, label):
    """The per-call checks and the planner look at shapes, dtypes and host ints only: on tensors on
    the meta device, which hold no values, any read (``.item()``, ``.tolist()``, a comparison turned
    into a Python bool) raises. That is what keeps a call sync-free and CUDA-graph capturable."""
    import paged_kernels

    inputs = build(tables.find(label), "meta", seed=0)
    args = inputs.call_args(inputs.out)
    paged_kernels.check_arguments(*args, *inputs.call_kwargs().values(), None, None)
    for split_kv in (None, False, True):
        paged_kernels.make_plan(inputs.q, inputs.k, inputs.cu_seqlens_q, inputs.max_seqlen_q, inputs.max_seqlen_k,
                          split_kv=split_kv)


@pytest.mark.dispatch
@pytest.mark.quick
def test_mixed_batches_give_short_sequences_a_narrow_launch(planner):
    """512 new tokens on 4096 plus 32 decodes: the decodes get one decode-sized program per (sequence,
    KV head); batches without room for both kinds (decode only, one sequence, batch-invariant) do not."""
    mixed = dict(LLAMA, num_tokens=544, num_seqs=33, max_seqlen_q=512, max_seqlen_k=4608)
    narrow = planner.plan_launch(**mixed).narrow
    assert narrow is not None and narrow.grid == (33, LLAMA["num_kv_heads"], 1), narrow
    assert narrow.block_m == 16 and narrow.block_q == 4 and narrow.tile_size == _decode(planner, 64, 4096).tile_size == 128
    assert planner.plan_launch(**{**mixed, "num_tokens": 512, "num_seqs": 1}).narrow is None
    assert planner.plan_launch(**mixed, batch_invariant=True).narrow is None
    assert planner.plan_launch(**mixed, split_kv=True).narrow is None
    assert _decode(planner, 33, 4096).narrow is None


@pytest.mark.dispatch
@pytest.mark.quick
def test_one_byte_caches_prefill_in_64_row_blocks(planner):
    """fp8/int8 caches: prefill in 64-row blocks of 4 warps at three stages (three programs per SM),
    on every card; 16-bit caches keep 128 rows of 8 warps, and decode's block does not depend on
    the cache's bytes."""
    prefill = PREFILL_4X2048
    wide, one_byte = planner.plan_launch(**prefill), planner.plan_launch(**prefill, one_byte_kv=True)
    assert (wide.block_m, wide.num_warps, wide.num_stages) == (128, 8, 3), wide
    assert (one_byte.block_m, one_byte.num_warps, one_byte.num_stages) == (64, 4, 3), one_byte
    small_card = planner.plan_launch(**prefill, one_byte_kv=True, shared_memory_per_block=99 * 1024)
    assert small_card.num_stages == 3, small_card
    two_byte_decode = _decode(planner, 16, 4096)
    one_byte_decode = _decode(planner, 16, 4096, one_byte_kv=True)
    assert dataclasses.replace(one_byte_decode, num_stages=two_byte_decode.num_stages,
                               table_ahead=two_byte_decode.table_ahead) == two_byte_decode


@pytest.mark.dispatch
@pytest.mark.quick
@pytest.mark.parametrize("num_seqs,seq_len", [(1, 131_072), (16, 4096), (256, 4096)])
def test_fp8_caches_decode_at_five_stages(planner, num_seqs, seq_len):
    """One-byte caches with one scale per tensor decode at five stages where 160 KiB of shared
    memory or more is there; per-token-head caches (a scale load per tile), 16-bit caches, heads
    over 128 and 99-KiB cards keep two."""
    def stages(**overrides):
        return _decode(planner, num_seqs, seq_len, **overrides).num_stages

    assert stages(one_byte_kv=True) == 5
    assert stages(one_byte_kv=True, kv_per_token_head=True) == 2
    assert stages() == 2
    assert stages(one_byte_kv=True, head_size=256) == 2
    assert stages(one_byte_kv=True, shared_memory_per_block=99 * 1024) == 2


@pytest.mark.dispatch
@pytest.mark.quick
@pytest.mark.parametrize("mode,per_token_head", [(None, False), ("fp8_per_tensor", False),
                                                 ("fp8_per_token_head", True)])
def test_make_plan_tells_the_planner_the_kv_quant_mode(planner, monkeypatch, mode, per_token_head):
    """``make_plan`` (what ``unified_attention`` launches) passes ``kv_quant_mode`` on, so a
    per-token-head cache is not planned like a per-tensor one."""
    import paged_kernels

    seen = {}
    monkeypatch.setattr(planner, "plan_launch", lambda **kw: seen.update(kw))
    inputs = build(tables.find("quick-fp8kv"), "meta", seed=0)
    paged_kernels.make_plan(inputs.q, inputs.k, inputs.cu_seqlens_q, inputs.max_seqlen_q, inputs.max_seqlen_k,
                            kv_quant_mode=mode)
    assert seen["one_byte_kv"] and seen["kv_per_token_head"] == per_token_head


@pytest.mark.dispatch
@pytest.mark.quick
def test_prefill_sized_launches_load_the_block_table_one_tile_ahead(planner):
    """Prefill, mixed, batch-invariant and two-stage decode launches read each KV tile's
    block-table ids one tile ahead (what lets three prefill stages keep copies in flight); five-stage
    fp8 decode reads them in the loop (ahead, its five stages no longer fit two programs per SM).
    Decision [Block-table ids a tile ahead]."""
    assert planner.plan_launch(**PREFILL_4X2048).table_ahead
    assert planner.plan_launch(**PREFILL_4X2048, one_byte_kv=True).table_ahead
    assert _decode(planner, 16, 4096, batch_invariant=True).table_ahead
    for num_seqs, seq_len in ((1, 510), (1, 131_072), (256, 4096)):
        two_stage = _decode(planner, num_seqs, seq_len)
        assert two_stage.num_stages == 2 and two_stage.table_ahead, two_stage
        five_stage = _decode(planner, num_seqs, seq_len, one_byte_kv=True)
        assert five_stage.num_stages == 5 and not five_stage.table_ahead, five_stage


@pytest.mark.dispatch
@pytest.mark.quick
def test_prefill_pipeline_depth_follows_the_cards_shared_memory(planner):
    """Prefill pipelines three stages (129 KiB on sm_90 at 128 rows of head 128) where a program
    may use 160 KiB or more (H100 / H200 227, A100 163), two on 99-KiB cards (sm_86 / sm_89), which
    three would not fit; decode keeps two everywhere."""
    prefill = PREFILL_4X2048
    kib = 1024
    assert planner.plan_launch(**prefill).num_stages == 3  # the default: an H100 / H200
    assert planner.plan_launch(**prefill, shared_memory_per_block=163 * kib).num_stages == 3
    assert planner.plan_launch(**prefill, shared_memory_per_block=99 * kib).num_stages == 2
    for shared in (99 * kib, 227 * kib):  # 16-bit caches; fp8 ones: test_fp8_caches_decode_at_five_stages
        assert _decode(planner, 16, 4096, shared_memory_per_block=shared).num_stages == 2


@pytest.mark.dispatch
@pytest.mark.quick
@pytest.mark.parametrize("num_seqs,seq_len,segments", [(16, 4096, 2), (4, 4096, 8)])
def test_small_split_decode_merges_in_the_attention_launch(planner, num_seqs, seq_len, segments):
    """A split decode whose merge is small (heads x segments x head dims <= FUSED_MERGE_MAX_FLOATS,
    heads of <= 128 dims) merges in its last program per (query block, KV head): no reduction
    launch. Larger merges, heads of 256, prefill splits and workspaces without enough counters keep it."""
    plan = _decode(planner, num_seqs, seq_len)
    assert (plan.path, plan.num_segments, plan.fused_merge, plan.reduce_grid) == ("3d", segments, True, None), plan
    assert plan.merge_heads == 4
    counters = plan.grid[0] * plan.grid[1]
    assert _decode(planner, num_seqs, seq_len, merge_counters=counters).fused_merge
    kept = [_decode(planner, num_seqs, seq_len, merge_counters=counters - 1),  # the workspace is short
            _decode(planner, num_seqs, seq_len, head_size=256),
            _decode(planner, num_seqs, seq_len, num_segments=2 * planner.FUSED_MERGE_MAX_FLOATS // (4 * 128))]
    for other in kept:
        assert other.path == "3d" and not other.fused_merge and other.reduce_grid is not None, other


@pytest.mark.dispatch
@pytest.mark.quick
def test_wide_merges_keep_the_reduction_launch(planner):
    """bs1 decode splits 32 ways: one program merging 4 heads x 32 segments lost to the reduction's
    128 programs (Decision [Fused merge])."""
    for seq_len in (510, 13_300, 131_072):
        plan = _decode(planner, 1, seq_len)
        assert plan.num_segments == 32 and not plan.fused_merge and plan.reduce_grid is not None, plan
    prefill = planner.plan_launch(**PREFILL_4X2048, split_kv=True)
    assert prefill.path == "3d" and not prefill.fused_merge


@pytest.mark.dispatch
@pytest.mark.quick
def test_decode_launches_index_programs_by_sequence(planner):
    """Decode grids, and verify grids whose sequences each fit one query block, count sequences, so no
    program searches cu_seqlens_q for its own (a chain of dependent loads before its first KV read) and
    none is surplus; prefill, mixed, batch-invariant grids and verify batches that need two blocks per
    sequence count query blocks."""
    for num_seqs, seq_len in ((1, 510), (4, 4096), (16, 4096), (256, 4096)):
        plan = _decode(planner, num_seqs, seq_len)
        assert plan.seq_grid and plan.grid[0] == num_seqs, plan
    for num_seqs, q_len, split in ((1, 4, True), (8, 2, True), (32, 8, False)):
        plan = planner.plan_launch(**LLAMA, num_tokens=num_seqs * q_len, num_seqs=num_seqs, max_seqlen_q=q_len,
                                   max_seqlen_k=4096, split_kv=split)
        assert plan.seq_grid and plan.grid[0] == num_seqs and plan.block_q >= q_len, plan
    # float32 caps a block at 32 rows: 8 tokens x 8 heads need two blocks per sequence.
    two_blocks = planner.plan_launch(**{**LLAMA, "num_kv_heads": 4}, num_tokens=8, num_seqs=1, max_seqlen_q=8,
                                     max_seqlen_k=4096, fp32=True)
    assert not two_blocks.seq_grid and two_blocks.block_q < 8, two_blocks
    invariant = _decode(planner, 16, 4096, batch_invariant=True)
    assert not invariant.seq_grid and invariant.grid[0] == 16 // invariant.block_q + 16
    prefill = planner.plan_launch(**PREFILL_4X2048)
    assert not prefill.seq_grid and prefill.grid[0] == 8192 // prefill.block_q + 4
