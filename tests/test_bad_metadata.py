"""bad_metadata tier: invalid metadata values never crash, and the checked mode and the reference refuse them.

Each fault of ``attention_suite.metadata_faults`` breaks one rule of the metadata contract on a
small mixed batch. Checked (``check_metadata=True``), and always in the reference: a ValueError
naming the argument, ``out`` untouched. Unchecked: the call completes (no crash, no hang); on a
GPU the memsafety tier runs the same faults under compute-sanitizer memcheck.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference
from attention_suite import build, same_bits, tables
from attention_suite.metadata_faults import BY_NAME, FAULT_CASE as BASE, FAULTS, break_metadata, guarded


def _checked_kwargs(impl, path):
    if "check_metadata" not in impl.params:
        pytest.skip(f"{impl.spec} has no 'check_metadata' argument")
    kwargs = {"check_metadata": True}
    if "split_kv" in impl.params and path != "auto":
        kwargs["split_kv"] = path == "3d"
    return kwargs


def _refused(call, args, kwargs, arg):
    before = args[3].clone()
    with pytest.raises(ValueError, match=f"^{arg}:"):
        call(*args, **kwargs)
    assert same_bits(args[3], before), "out was written before the error"


@pytest.mark.bad_metadata
@pytest.mark.parametrize("path", ("2d", "3d"))
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_checked_mode_refuses(ctx, fault, path):
    kwargs = _checked_kwargs(ctx.impl, path)
    args, extra = break_metadata(build(BASE, ctx.device, ctx.seed), fault)
    _refused(ctx.impl.func, args, {**extra, **kwargs}, fault.arg)


@pytest.mark.bad_metadata
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_reference_refuses(ctx, fault):
    args, extra = break_metadata(build(BASE, ctx.device, ctx.seed), fault)
    _refused(reference.unified_attention, args, extra, fault.arg)


def _unchecked_stays_inside(ctx, fault, path, seq=None, amount=None, **call_kwargs):
    """Run the faulty call unchecked twice, its tensors inside guard buffers of different contents:
    equal outputs mean no guard byte was read, unchanged guards mean none was written. A crash
    fails the xdist worker running it."""
    if ctx.impl.path_unsupported(path, BASE):
        pytest.skip(ctx.impl.path_unsupported(path, BASE))
    outputs = []
    for fill, table_fill in ((float("nan"), 0), (0.0, -1)):
        clean = build(BASE, ctx.device, ctx.seed)
        table_fill = table_fill % clean.k.shape[0]  # a valid id: what a read past the table finds is real data
        boxed = guarded(clean, fill, table_fill)
        before = {name: boxed.guard_bytes(name) for name in boxed.buffers}
        args, extra = break_metadata(boxed.inputs, fault, seq, amount, in_place=True)
        if "split_kv" in ctx.impl.params and path != "auto":
            extra["split_kv"] = path == "3d"
        ctx.impl.func(*args, **extra, **call_kwargs)
        if ctx.device == "cuda":
            torch.cuda.synchronize()  # an illegal address surfaces here
        for name, guard in before.items():
            assert same_bits(boxed.guard_bytes(name), guard), f"{fault.name} via {path}: wrote outside {name}"
        outputs.append(args[3])
    if fault.races and ctx.device == "cuda":
        return  # racing programs, not a read outside: memcheck (memsafety tier) covers the reads here
    assert same_bits(outputs[0], outputs[1]), f"{fault.name} via {path}: the output depends on memory outside its tensors"


@pytest.mark.bad_metadata
@pytest.mark.parametrize("path", ("2d", "3d"))
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_unchecked_call_stays_inside_its_tensors(ctx, fault, path):
    _unchecked_stays_inside(ctx, fault, path)


@pytest.mark.bad_metadata
@pytest.mark.quick
def test_environment_switch_turns_the_checks_on(ctx, monkeypatch):
    if "check_metadata" not in ctx.impl.params:
        pytest.skip(f"{ctx.impl.spec} has no 'check_metadata' argument")
    fault = BY_NAME["block-id-minus-1"]
    args, extra = break_metadata(build(BASE, ctx.device, ctx.seed), fault)
    monkeypatch.setenv("ATTN_CHECK_METADATA", "1")
    _refused(ctx.impl.func, args, extra, fault.arg)


@pytest.mark.bad_metadata
@pytest.mark.quick
@pytest.mark.parametrize("label", ["exact-fit-table", "exact-fit-table-decode", "quick-qlen0-padded"])
def test_valid_boundary_metadata_is_accepted(ctx, label):
    """A block table filled exactly, the last block id, q_len 0: valid, so nobody may refuse them."""
    inputs = build(tables.find(label), ctx.device, ctx.seed)
    inputs.block_table[0, 0] = inputs.k.shape[0] - 1  # the largest valid id (aliasing another slot is legal)
    kwargs = dict(inputs.call_kwargs())
    reference.unified_attention(*inputs.call_args(inputs.fresh_out()), **kwargs)
    if "check_metadata" in ctx.impl.params:
        ctx.impl.func(*inputs.call_args(inputs.fresh_out()), **kwargs, check_metadata=True)


@pytest.mark.bad_metadata
@pytest.mark.quick
@pytest.mark.parametrize("path", ("2d", "3d"))
@pytest.mark.parametrize("label", ["block-id-minus-1", "block-id-in-last-partial-block", "cu-past-tokens", "cu-negative",
                                   "seqused-past-table"])
def test_quick_bad_metadata(ctx, label, path):
    """A cross-section for the quick tier: refused when checked, kept inside its tensors when not."""
    fault = BY_NAME[label]
    args, extra = break_metadata(build(BASE, ctx.device, ctx.seed), fault)
    if "check_metadata" in ctx.impl.params:
        _refused(ctx.impl.func, args, {**extra, "check_metadata": True}, fault.arg)
    _unchecked_stays_inside(ctx, fault, path)


@pytest.mark.bad_metadata
@pytest.mark.quick
@pytest.mark.parametrize("num_segments", (2, 32), ids=("fused-merge", "reduction-launch"))
def test_decode_plan_of_a_prefill_batch_stays_inside(ctx, num_segments):
    """max_seqlen_q = 0 on a batch with prefill sequences gets a decode plan, whose per-sequence split
    grid skips the longer sequences: neither merge may read the partials they never wrote."""
    if "num_segments" not in ctx.impl.params:
        pytest.skip(f"{ctx.impl.spec} has no 'num_segments' argument")
    _unchecked_stays_inside(ctx, BY_NAME["max-seqlen-q-zero"], "3d", num_segments=num_segments)


@pytest.mark.bad_metadata
@pytest.mark.fuzz
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)
@given(fault=st.sampled_from(FAULTS), seq=st.integers(0, len(BASE.seq_lens) - 1), amount=st.integers(1, 5000),
       split=st.booleans())
def test_random_corruption(ctx, fault, seq, amount, split):
    """Any single corruption: refused with the right name (reference and checked mode), kept inside
    its tensors unchecked."""
    args, extra = break_metadata(build(BASE, ctx.device, ctx.seed), fault, seq, amount)
    _refused(reference.unified_attention, args, extra, fault.arg)
    if "check_metadata" in ctx.impl.params:
        _refused(ctx.impl.func, args, {**extra, "check_metadata": True}, fault.arg)
    _unchecked_stays_inside(ctx, fault, "3d" if split else "2d", seq, amount)


@pytest.mark.bad_metadata
@pytest.mark.quick
def test_empty_batch_leaves_out_untouched(ctx):
    """Zero sequences (cu_seqlens_q == [0]) is a legal batch: nothing to attend, nothing written."""
    inputs = build(BASE, ctx.device, ctx.seed)
    args = list(inputs.call_args(inputs.fresh_out()))
    args[4] = torch.zeros(1, dtype=torch.int32, device=inputs.q.device)  # cu_seqlens_q
    args[6] = args[6][:0]  # seqused_k
    args[11] = args[11][:0]  # block_table
    args[5] = args[7] = 0  # max_seqlen_q, max_seqlen_k
    before = args[3].clone()
    for call in (reference.unified_attention, ctx.impl.func):
        call(*args, **inputs.call_kwargs())
        assert same_bits(args[3], before), f"{getattr(call, '__module__', call)} wrote into out for an empty batch"


@pytest.mark.bad_metadata
@pytest.mark.quick
def test_checked_mode_refuses_a_workspace_with_stale_merge_counters(ctx):
    """A split decode that merges in the 3D launch counts arrivals in the workspace; a counter left
    non-zero (a launch that never finished) would make it merge early or never. Checked mode refuses
    such a workspace naming it, before writing; ``reset_counters_`` makes it usable again."""
    if not ctx.impl.is_ours:
        pytest.skip("merge counters are paged_kernels.Workspace's")
    import paged_kernels

    from attention_suite import compare, split_workspace

    case = tables.find("quick-decode-window-sinks")
    inputs = build(case, ctx.device, ctx.seed)
    workspace = split_workspace(inputs, case.num_segments)
    kwargs = dict(inputs.call_kwargs(), split_kv=True, num_segments=case.num_segments, workspace=workspace,
                  check_metadata=True)
    assert paged_kernels.make_plan(inputs.q, inputs.k, inputs.cu_seqlens_q, inputs.max_seqlen_q, inputs.max_seqlen_k,
                             split_kv=True, num_segments=case.num_segments, workspace=workspace).fused_merge
    workspace.merge_counters[1] = 1
    out = inputs.fresh_out()
    _refused(paged_kernels.unified_attention, inputs.call_args(out), kwargs, "workspace")
    workspace.reset_counters_()
    paged_kernels.unified_attention(*inputs.call_args(out), **kwargs)
    assert compare(inputs, out).passed
