"""dispatch tier: ``unified_attention`` launches its kernels by keyword, with exactly the kernels'
parameter names, so a renamed, added or dropped parameter fails here by name; and it launches the
plan ``make_plan`` describes."""

import inspect

import pytest

from attention_suite import build, tables

# Options Triton's launcher takes beside the kernel's own parameters.
LAUNCH_OPTIONS = {"num_warps", "num_stages", "launch_pdl"}
# Between them: a wide launch and a mixed batch's narrow one, a fused-merge split, a split with a
# reduction launch, and every optional tensor (fp8, per-token-head scales, prefix ranges, qq_bias,
# per-sequence causal flags, R-SWA prefix lengths, the log-sum-exp output, packed INT4 caches, ...).
CASES = [("quick-mixed-narrow-boundary", None), ("quick-decode-window-sinks", True), ("quick-varlen", True),
         ("quick-prefix-ranges", True), ("quick-fp8kv-descale-seqhead", True), ("quick-int8-pertokenhead", None),
         ("quick-fp8kv-fp8out", False), ("quick-verify-tree", True), ("quick-verify-tree", False),
         ("quick-causal-per-seq-rswa", True), ("quick-int4-pertokenhead", True)]
# Feature switches some launch of each kernel must turn on (their arguments are None while off).
SWITCHES = {"_paged_attention_kernel": ("NARROW_Q", "FUSED_MERGE", "USE_QQ_BIAS", "ALIBI_SQRT", "PER_SEQ_CAUSAL",
                                        "USE_RSWA", "STORE_LSE", "KV_INT4"),
            "_reduce_segments_kernel": ("USE_RSWA", "STORE_LSE")}


class _Recorder:
    """Stands in for a JIT kernel: records each launch's grid and keywords (positional arguments raise)."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        def launch(**kwargs):
            self.launches.append((tuple(grid), kwargs))
        return launch


@pytest.fixture
def recorded(impl, monkeypatch):
    """Run calls with both kernels recorded instead of launched; returns {kernel name: (recorder, params)}."""
    if not impl.is_ours:
        pytest.skip("launch arguments of paged_kernels.unified_attention only")
    from paged_kernels import _attention

    kernels = {}
    for name in ("_paged_attention_kernel", "_reduce_segments_kernel"):
        params = list(inspect.signature(getattr(_attention, name).fn).parameters)
        kernels[name] = (_Recorder(), params)
        monkeypatch.setattr(_attention, name, kernels[name][0])
    return kernels


def _call(label, split_kv):
    import paged_kernels

    inputs = build(tables.find(label), "meta", seed=0)
    paged_kernels.unified_attention(*inputs.call_args(inputs.out), **inputs.call_kwargs(), split_kv=split_kv)
    return inputs


@pytest.mark.dispatch
@pytest.mark.quick
def test_launches_pass_every_kernel_parameter_by_name(recorded):
    for label, split_kv in CASES:
        _call(label, split_kv)
    for name, (recorder, params) in recorded.items():
        assert recorder.launches, f"no case launched {name}"
        for _, kwargs in recorder.launches:
            passed = set(kwargs) - LAUNCH_OPTIONS
            assert passed == set(params), (f"{name}: missing {sorted(set(params) - passed)}, "
                                           f"unknown {sorted(passed - set(params))}")
    for name, switches in SWITCHES.items():
        launches = [kwargs for _, kwargs in recorded[name][0].launches]
        off = [switch for switch in switches if not any(kw[switch] for kw in launches)]
        assert not off, f"{name}: no case launches it with {off} on"


@pytest.mark.dispatch
@pytest.mark.quick
@pytest.mark.parametrize("label,split_kv", CASES, ids=[f"{label}-{split_kv}" for label, split_kv in CASES])
def test_make_plan_is_what_the_call_launches(recorded, label, split_kv):
    import paged_kernels

    inputs = _call(label, split_kv)
    case = inputs.case
    plan = paged_kernels.make_plan(inputs.q, inputs.k, inputs.cu_seqlens_q, inputs.max_seqlen_q, inputs.max_seqlen_k,
                                   split_kv=split_kv, window_size=case.window_size, chunk_lookback=case.chunk_lookback,
                                   kv_quant_mode=case.kv_quant_mode)
    (grid, kwargs), *narrow = recorded["_paged_attention_kernel"][0].launches
    assert (grid, kwargs["BLOCK_M"], kwargs["TILE"], kwargs["num_segments"]) == (
        plan.grid, plan.block_m, plan.tile_size, plan.num_segments), plan
    assert [g for g, _ in narrow] == ([] if plan.narrow is None else [plan.narrow.grid])
    assert [g for g, _ in recorded["_reduce_segments_kernel"][0].launches] == (
        [plan.reduce_grid] if plan.reduce_grid else [])
