"""graph tier (GPU): the 3D path with a preallocated workspace, captured once, replayed on new batches."""

import pytest
import torch

from attention_suite import build, compare, tables

CAPACITY_LEN = 1200 if tables.ON_GPU else 64


@pytest.mark.graph
@pytest.mark.parametrize("num_seqs", [1, 4])
def test_split_kv_graph_replay(ctx, num_seqs):
    if not ctx.impl.is_ours:
        pytest.skip("graph capture needs paged_kernels.Workspace")
    import paged_kernels

    case = tables.composition_case("decode").with_(
        label=f"graph-{num_seqs}seqs", seq_lens=(CAPACITY_LEN,) * num_seqs, query_lens=(1,) * num_seqs, num_segments=8)
    static = build(case, ctx.device, ctx.seed)
    workspace = paged_kernels.Workspace(num_seqs, case.num_q_heads, case.head_size, 8, ctx.device).fill_(float("nan"))
    out = static.fresh_out()

    def call():
        paged_kernels.unified_attention(*static.call_args(out), **static.call_kwargs(), split_kv=True, num_segments=8,
                                  workspace=workspace)

    call()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    generator = torch.Generator().manual_seed(ctx.seed)
    for replay in range(3):
        lens = tuple(int(x) for x in torch.randint(1, CAPACITY_LEN + 1, (num_seqs,), generator=generator))
        fresh = build(case.with_(label=f"{case.label}-replay{replay}", seq_lens=lens), ctx.device, ctx.seed + replay)
        # New lengths and block tables go into the captured tensors; the cache is the captured one too.
        static.q.copy_(fresh.q)
        static.seqused_k.copy_(fresh.seqused_k)
        static.block_table.zero_()
        static.block_table[:, : fresh.block_table.shape[1]].copy_(fresh.block_table)
        static.k[: fresh.k.shape[0]].copy_(fresh.k)
        static.v[: fresh.v.shape[0]].copy_(fresh.v)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        verdict = compare(fresh, out)
        assert verdict.passed, f"replay {replay} with lengths {lens}: {verdict.message()}"
