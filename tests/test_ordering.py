"""stress tier (GPU): ordering between programs and between launches, under load.

A race does not show in one small call. These run thousands of programs at once, many times, into
NaN-filled buffers: every repeat must give the same bits as every other and pass the tolerance rule.
The interpreter runs programs one at a time, so they are GPU-only.
"""

import pytest
import torch

from attention_suite import build, compare, same_bits, split_workspace, tables

pytestmark = pytest.mark.stress
REPEATS = 50


def _our_kernels(ctx):
    if not ctx.impl.is_ours:
        pytest.skip("exercises paged_kernels' own launch structure (fused merge, narrow launch)")
    import paged_kernels

    return paged_kernels


def _plan(paged_kernels, inputs, **kwargs):
    return paged_kernels.make_plan(inputs.q, inputs.k, inputs.cu_seqlens_q, inputs.max_seqlen_q, inputs.max_seqlen_k,
                                   **kwargs)


# (sequence lengths, segments, repeats). Many waves: 512 decodes x 8 KV heads x 4 segments, 16,384
# programs; a row's segments sit far apart in launch order. One wave: 16 equal decodes x 8 KV heads x 2
# segments, 256 programs resident at once on a 132-SM card, so a row's two segments finish together and
# the last arriver reads the other's partials right after they were stored.
MERGE_LOADS = {
    "many-waves": (tuple(64 + (37 * i) % 256 for i in range(512)), 4, REPEATS),
    "one-wave": ((1024,) * 16, 2, 20 * REPEATS),
}


@pytest.mark.parametrize("load", MERGE_LOADS)
def test_fused_merge_under_load(ctx, load):
    """Each (sequence, KV head)'s last program to arrive merges its segments from a NaN-filled workspace.
    A merge that reads a partial before its program stored it gives NaN or a result that changes from
    repeat to repeat: every repeat must match the first bit for bit and pass the tolerance rule. (The
    reduction launch merges in another order: its bits may differ, so it is no bitwise yardstick; the
    H100 showed so.)"""
    paged_kernels = _our_kernels(ctx)
    seq_lens, segments, repeats = MERGE_LOADS[load]
    case = tables.composition_case("decode").with_(
        label=f"fused-merge-{load}", seq_lens=seq_lens, query_lens=(1,) * len(seq_lens), num_q_heads=32,
        num_kv_heads=8, head_size=128, num_segments=segments)
    inputs = build(case, ctx.device, ctx.seed)
    fused = split_workspace(inputs, segments)
    assert _plan(paged_kernels, inputs, split_kv=True, num_segments=segments, workspace=fused).fused_merge
    first, differing = None, []
    for repeat in range(repeats):
        fused.fill_(float("nan"))  # a partial read before its program stored it is NaN
        out = ctx.impl.run(inputs, "3d", workspace=fused, num_segments=segments)
        if first is None:
            first = out
        elif not same_bits(out, first):
            differing.append(repeat)
    assert not differing, \
        f"{len(differing)} of {repeats} fused-merge repeats differ from the first (first: {differing[0]})"
    verdict = compare(inputs, first)
    assert verdict.passed, f"fused merge under load ({load}): {verdict}"


def _programmatic_copy():
    """A copy kernel launched as a programmatic dependent of whatever the stream ran last: it may start
    before that launch ends and waits (``gdc_wait``) only for it, as a serving stack's next kernel may."""
    import triton
    import triton.language as tl
    from triton.language.extra.cuda import gdc_wait

    @triton.jit
    def copy(src_ptr, dst_ptr, numel, BLOCK: tl.constexpr):
        gdc_wait()
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(dst_ptr + offsets, tl.load(src_ptr + offsets, mask=offsets < numel), mask=offsets < numel)

    def launch(src: torch.Tensor, dst: torch.Tensor):
        block = 1024
        copy[(triton.cdiv(src.numel(), block),)](src, dst, src.numel(), BLOCK=block, launch_pdl=True)

    return launch


def test_output_read_right_after_a_mixed_call(ctx):
    """A mixed batch's short sequences go to a narrow launch, a programmatic dependent of the wide
    launch on Hopper and later: it starts while the wide one runs. The kernel the stream runs next must
    still see every row the wide launch writes, whether it is stream-ordered (a clone) or itself a
    programmatic dependent that waits only for the launch before it (the narrow one)."""
    paged_kernels = _our_kernels(ctx)
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launches need compute capability 9+")
    decodes = 64
    case = tables.composition_case("mixed").with_(
        label="narrow-after-wide", seq_lens=(8192,) + (300,) * decodes, query_lens=(4096,) + (1,) * decodes,
        num_q_heads=32, num_kv_heads=8, head_size=128)
    inputs = build(case, ctx.device, ctx.seed)
    assert _plan(paged_kernels, inputs, split_kv=False).narrow is not None, "the batch no longer gets a narrow launch"
    programmatic_copy = _programmatic_copy()
    out = inputs.fresh_out()
    snapshots = {"stream-ordered": [], "programmatic": []}
    for repeat in range(REPEATS):
        out.fill_(float("nan"))
        ctx.impl.run(inputs, "2d", out=out)
        if repeat % 2:  # no sync in between either way
            snapshots["stream-ordered"].append(out.clone())
        else:
            snapshot = torch.empty_like(out)
            programmatic_copy(out, snapshot)
            snapshots["programmatic"].append(snapshot)
    torch.cuda.synchronize()
    final = out.clone()
    assert not final.isnan().any(), "the call left NaN in out"
    early = {how: sum(not same_bits(snap, final) for snap in snaps) for how, snaps in snapshots.items()}
    assert not any(early.values()), f"copies that saw out unfinished, of {REPEATS // 2} each: {early}"
