"""determinism tier: bit-identical repeats, and batch invariance in batch-invariant mode."""

import pytest

from attention_suite import build, run_case, same_bits, slice_sequence, split_workspace, tables

CASES = [tables.composition_case(c) for c in ("mixed", "decode", "varlen")]
# The quick tier's cross-section: "mixed" holds a decode and a prefill sequence, so alone each may
# plan differently from the batch (the property the mode pins); the other two run in the full tier.
QUICK_INVARIANCE = [pytest.param(c, marks=pytest.mark.quick) if c.label == "mixed" else c for c in CASES]


@pytest.mark.determinism
@pytest.mark.parametrize("path", tables.PATHS)
@pytest.mark.parametrize("case", CASES, ids=tables.ids(CASES))
def test_repeats_are_bit_identical(ctx, case, path):
    if ctx.impl.path_unsupported(path, case):
        pytest.skip(ctx.impl.path_unsupported(path, case))
    inputs, first = run_case(ctx, case, path)
    for _ in range(2):
        again = ctx.impl.run(inputs, path)
        assert same_bits(first, again), f"{case.name} via {path}: repeated call changed the output"


@pytest.mark.determinism
@pytest.mark.parametrize("case", QUICK_INVARIANCE, ids=tables.ids(CASES))
def test_batch_invariant_mode(ctx, case):
    """In batch-invariant mode a sequence's rows are the same alone and inside the batch."""
    if "batch_invariant" not in ctx.impl.params:
        pytest.skip(f"{ctx.impl.spec} has no 'batch_invariant' argument")
    inputs, batched = run_case(ctx, case, "auto", batch_invariant=True)
    for seq in range(len(case.seq_lens)):
        alone_inputs, rows = slice_sequence(inputs, seq)
        alone = ctx.impl.run(alone_inputs, "auto", batch_invariant=True)
        assert same_bits(alone[: rows.stop - rows.start], batched[rows]), (
            f"{case.name}: sequence {seq} differs alone vs in the batch")


@pytest.mark.determinism
@pytest.mark.quick
def test_fused_merge_workspace_reused_across_calls(ctx):
    """A split decode that merges in the attention launch counts arrivals in the workspace: every
    call must leave the counters at zero, so repeated calls on one workspace (what a replayed CUDA
    graph does) give the same bits."""
    if not ctx.impl.is_ours:
        pytest.skip("the workspace's merge counters are paged_kernels.Workspace's")
    import paged_kernels

    case = tables.find("quick-decode-window-sinks")
    inputs = build(case, ctx.device, ctx.seed)
    workspace = split_workspace(inputs, case.num_segments)
    plan = paged_kernels.make_plan(inputs.q, inputs.k, inputs.cu_seqlens_q, inputs.max_seqlen_q, inputs.max_seqlen_k,
                             split_kv=True, num_segments=case.num_segments, workspace=workspace)
    assert plan.fused_merge, f"{case.name} no longer takes the fused merge: pick a case that does"
    # On a GPU the programs of a (query block, KV head) finish in any order: repeat enough to see a race.
    repeats = 200 if tables.ON_GPU else 3
    outs = [ctx.impl.run(inputs, "3d", workspace=workspace, num_segments=case.num_segments) for _ in range(repeats)]
    assert int(workspace.merge_counters.abs().sum()) == 0, "a call left merge counters non-zero"
    for again in outs[1:]:
        assert same_bits(outs[0], again), f"{case.name}: a call on a reused workspace changed the output"


@pytest.mark.determinism
@pytest.mark.quick
@pytest.mark.parametrize("first", ["empty-sequence", "invalid-metadata"])
def test_workspace_after_a_call_that_skips_programs(ctx, first):
    """A call some of whose merge programs have nothing to do (a sequence with no keys, or invalid
    metadata in unchecked mode) must still leave the fused merge's counters at zero: the next valid
    call on the same workspace gives the bits a fresh workspace gives."""
    if not ctx.impl.is_ours:
        pytest.skip("the workspace's merge counters are paged_kernels.Workspace's")
    from attention_suite.metadata_faults import BY_NAME, break_metadata

    case = tables.find("quick-decode-window-sinks")
    inputs = build(case, ctx.device, ctx.seed)
    workspace = split_workspace(inputs, case.num_segments)
    if first == "empty-sequence":
        empty = build(case.with_(seq_lens=(0,) + case.seq_lens[1:], query_lens=(0,) + case.query_lens[1:]),
                      ctx.device, ctx.seed)
        ctx.impl.run(empty, "3d", workspace=workspace, num_segments=case.num_segments)
    else:
        args, kwargs = break_metadata(inputs, BY_NAME["seqused-negative"], seq=0)
        ctx.impl.func(*args, **kwargs, split_kv=True, num_segments=case.num_segments, workspace=workspace)
    assert int(workspace.merge_counters.abs().sum()) == 0, f"the {first} call left merge counters non-zero"
    reused = ctx.impl.run(inputs, "3d", workspace=workspace, num_segments=case.num_segments)
    fresh = ctx.impl.run(inputs, "3d", workspace=split_workspace(inputs, case.num_segments),
                         num_segments=case.num_segments)
    assert same_bits(reused, fresh), f"{case.name}: the workspace reused after the {first} call changed the output"
