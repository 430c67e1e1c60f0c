"""harness tier: the suite's own machinery (GPU pinning, interpreter fix, tolerance rule, case builder)."""

import collections
import inspect

import pytest
import torch

from attention_suite import (Implementation, VllmKVQuantMode as _QuantMode, build, gpus, judge, same_bits, tables,
                             visible_slots)


@pytest.mark.harness
@pytest.mark.quick
@pytest.mark.parametrize("num_gpus", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("num_workers", [1, 2, 4, 8, 16])
def test_round_robin_pinning_balances(num_workers, num_gpus):
    table = gpus.assignment_table(num_workers, num_gpus)
    load = collections.Counter(table.values())
    assert set(table.values()) <= set(range(num_gpus))
    if num_workers <= num_gpus:
        assert len(load) == num_workers, f"two workers share a GPU while another sits idle: {table}"
    else:
        assert max(load.values()) - min(load.values()) <= 1, table


@pytest.mark.harness
def test_memsafety_shards_partition_the_curated_cases():
    from attention_suite import memsafety

    cases = [c.name for c in memsafety.curated_cases()]
    shards = [[c.name for c in memsafety.in_shard(memsafety.curated_cases(), (i, 4))] for i in range(4)]
    assert all(shards) and sorted(sum(shards, [])) == sorted(cases)
    assert memsafety.parse_shard("3/4") == (3, 4) and memsafety.parse_shard(None) is None
    for bad in ("4/4", "1", "-1/2", "a/b"):
        with pytest.raises(ValueError, match="--shard"):
            memsafety.parse_shard(bad)


@pytest.mark.harness
def test_pinning_edge_cases():
    assert gpus.assign_gpu(None, 4) == 0  # the controller / a plain run
    assert gpus.assign_gpu("gw5", 0) is None  # no GPU
    assert gpus.worker_index("master") is None


@pytest.mark.harness
def test_this_worker_is_on_its_gpu(request):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    import os

    expected = gpus.assign_gpu(os.environ.get("PYTEST_XDIST_WORKER"), torch.cuda.device_count())
    assert torch.cuda.current_device() == expected


@pytest.mark.harness
@pytest.mark.quick
@pytest.mark.parametrize("fix_index", [0, 1, 2], ids=["bf16-dot", "fp8-cast", "int-bf16-cast"])
def test_interpreter_fix(device, fix_index):
    """Each installed fix is needed (its probe fails without it) and sufficient (passes with it)."""
    if device != "cpu":
        pytest.skip("interpreter only")
    from attention_suite import interpreter_fix

    fix = interpreter_fix.FIXES[fix_index]
    if not interpreter_fix.installed(fix.name):
        pytest.skip(f"{fix.name}: not installed on this Triton (exact already, or unknown: dtype refused)")
    assert interpreter_fix._probe(fix)
    interpreter_fix.uninstall(fix.name)
    try:
        assert not interpreter_fix._probe(fix), "bug gone: the fix can be retired"
    finally:
        interpreter_fix.install()
    assert interpreter_fix._probe(fix)


@pytest.mark.harness
def test_interpreter_speedup_keeps_every_bit(device):
    """The speed-up changes no result: a feature case through 2D and 3D, with and without it."""
    if device != "cpu":
        pytest.skip("interpreter only")
    from attention_suite import interpreter_speed

    if not interpreter_speed.installed():
        pytest.skip("interpreter speed-up not installed on this Triton")
    case = tables.composition_case("mixed", sinks=True, window_size=(30, -1), softcap=4.0)
    inputs = build(case, device, 0)

    def outputs():
        return [Implementation.load().run(inputs, path) for path in ("2d", "3d")]

    fast = outputs()
    interpreter_speed.uninstall()
    try:
        slow = outputs()
    finally:
        interpreter_speed.install()
    assert all(same_bits(a, b) for a, b in zip(fast, slow))


@pytest.mark.harness
def test_interpreter_speedup_refuses_a_shortcut_that_changes_results(device, monkeypatch):
    """The self-check can fail: a shortcut that never patches a launch again is not installed."""
    if device != "cpu":
        pytest.skip("interpreter only")
    from attention_suite import interpreter_speed

    calls = []

    def patches_only_once(fn):
        calls.append(fn)
        return interpreter_speed._original_patch_lang(fn) if len(calls) == 1 else interpreter_speed._NothingToRestore()

    interpreter_speed.uninstall()
    monkeypatch.setattr(interpreter_speed, "_patch_lang_once", patches_only_once)
    try:
        status = interpreter_speed.install()
        assert status.endswith("not installed"), status
        assert not interpreter_speed.installed()
    finally:
        monkeypatch.undo()
        interpreter_speed.install()
    assert interpreter_speed.installed()


@pytest.mark.harness
@pytest.mark.quick
def test_tolerance_rule_accepts_baseline_and_rejects_bugs():
    gen = torch.Generator().manual_seed(0)
    golden = torch.randn(64, 8, 32, generator=gen, dtype=torch.float64)
    baseline = golden.half().double()
    assert judge(baseline, golden, baseline, torch.float16).passed
    assert judge(golden.clone(), golden, baseline, torch.float16).passed
    off = baseline.clone()
    off[3, 2, 1] += 0.05  # one element off by ~50 fp16 ulps
    assert not judge(off, golden, baseline, torch.float16).passed
    drift = baseline * 1.01  # small systematic error everywhere
    assert not judge(drift, golden, baseline, torch.float16).passed
    nan = baseline.clone()
    nan[0, 0, 0] = float("nan")
    assert not judge(nan, golden, baseline, torch.float16).passed


@pytest.mark.harness
@pytest.mark.quick
def test_quick_tier_is_a_cross_section():
    """Every feature, dtype, layout and size class any table exercises has a quick case."""
    quick = set().union(*(tables.coverage(c) for c in tables.quick_cases()))
    for case in tables.all_cases():
        missing = tables.coverage(case) - quick
        assert not missing, f"{case.name} exercises {sorted(missing)}, which no quick case does: add it to one"


@pytest.mark.harness
@pytest.mark.quick
def test_case_names_are_unique_and_built_from_fields():
    by_name = {}
    for table in tables.TABLES.values():
        for case in table():
            by_name.setdefault(case.name, set()).add(case)
    shared = {name: len(cases) for name, cases in by_name.items() if len(cases) > 1}
    assert not shared, f"different cases share a name: {shared}"
    for cases in by_name.values():
        case = next(iter(cases))
        assert f"-d{case.head_size}-g{case.num_q_heads // case.num_kv_heads}-b{case.block_size}" in case.name


@pytest.mark.harness
def test_poisoned_build_only_changes_hidden_slots():
    case = tables.find("poison-window")
    clean, poisoned = build(case, "cpu", 7), build(case, "cpu", 7, poison=True)
    seen = visible_slots(case, clean.block_table.cpu(), clean.k.shape[0])
    assert torch.equal(clean.k[seen], poisoned.k[seen]) and torch.equal(clean.q, poisoned.q)
    assert not torch.isfinite(poisoned.k[~seen].float()).any()


def _vllm_style(q, k, v, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, softmax_scale, causal,
                window_size, block_table, softcap, q_descale, k_descale, v_descale, seq_threshold_3D=None,
                num_par_softmax_segments=None, softmax_segm_output=None, softmax_segm_max=None,
                softmax_segm_expsum=None, alibi_slopes=None, output_scale=None, sinks=None,
                kv_quant_mode=_QuantMode.NONE, k_scale_cache=None, v_scale_cache=None):
    _vllm_style.seen = kv_quant_mode


@pytest.mark.harness
@pytest.mark.quick
@pytest.mark.parametrize("label, expected", [("quick-fp8kv", _QuantMode.FP8_PER_TENSOR),
                                             ("quick-int8-pertokenhead", _QuantMode.INT8_PER_TOKEN_HEAD),
                                             ("quick-int4-pertokenhead", _QuantMode.INT4_PER_TOKEN_HEAD),
                                             ("quick-varlen", _QuantMode.NONE)])
def test_vllm_dialect_passes_its_own_quant_mode(device, label, expected):
    """vLLM dequantizes an fp8 cache only when told (FP8_PER_TENSOR) and takes its own enum: the
    adapter must pass the member, also where our kernels infer the mode from the dtype."""
    impl = Implementation("fake-vllm", _vllm_style, frozenset(inspect.signature(_vllm_style).parameters))
    assert impl.style == "vllm"
    _vllm_style.seen = None
    impl.run(build(tables.find(label), device, 0), "auto")
    assert _vllm_style.seen is expected
    descale_case = next(c for c in tables.all_cases() if c.descale_per_head)
    assert "k_descale[0, 0]" in impl.missing_feature(descale_case)


@pytest.mark.harness
@pytest.mark.quick
def test_every_case_field_shows_in_the_id():
    """A new Case field must say how it shows in a case id, or two cases could share one id."""
    from dataclasses import fields

    from attention_suite.cases import COMPANIONS, ID_TAGS, Case

    untagged = [f.name for f in fields(Case) if f.name not in ID_TAGS and f.name not in COMPANIONS]
    assert not untagged, f"Case fields with no id tag (attention_suite.cases.ID_TAGS): {untagged}"
    names = collections.Counter(c.name for c in tables.all_cases())
    assert not [n for n, count in names.items() if count > 1], "two cases share an id"


@pytest.mark.harness
def test_poisoned_int4_build_poisons_hidden_scales():
    """INT4 bytes cannot hold NaN: the hidden slots' scales carry it; visible bytes and scales stay."""
    case = tables.find("poison-int4-pertokenhead")
    clean, poisoned = build(case, "cpu", 7), build(case, "cpu", 7, poison=True)
    seen = visible_slots(case, clean.block_table.cpu(), clean.k.shape[0])
    assert (~seen).any() and clean.k.dtype == torch.uint8 and clean.k.shape[-1] == case.head_size // 2
    for name in ("k", "v", "k_scale_cache", "v_scale_cache"):
        assert same_bits(getattr(clean, name)[seen], getattr(poisoned, name)[seen]), name
    for name in ("k_scale_cache", "v_scale_cache"):
        assert not torch.isfinite(getattr(poisoned, name)[~seen]).any(), name


@pytest.mark.harness
def test_int4_builder_uses_vllms_writer_where_it_imports(device, monkeypatch):
    """Caches come from vLLM's reshape_and_cache_int4 when the peer copy imports (under the interpreter
    it stores what reference.int4's writer stores; a GPU build may fuse an FMA, so CPU only)."""
    from attention_suite import cases

    if device != "cpu":
        pytest.skip("bit for bit under the interpreter only")
    if cases.int4_writer(device)[1] != "vllm":
        pytest.skip("vLLM's peer copy does not import here: the builder uses reference.int4's writer")
    case = tables.find("quick-int4-pertokenhead")
    via_vllm = build(case, device, 3)
    monkeypatch.setattr(cases, "vllm_int4_module", lambda: None)
    assert cases.int4_writer(device)[1] == "reference"
    via_reference = build(case, device, 3)
    for name in ("k", "v", "k_scale_cache", "v_scale_cache"):
        assert same_bits(getattr(via_vllm, name), getattr(via_reference, name)), name
