"""mutation tier (nightly) and the triage tools' own tests.

``test_every_mutant_is_killed`` runs the quick tiers against every seeded bug of
``triage/mutants.py`` (a few minutes on CPU); the ``harness`` tests check the catalog against
the current kernels, the mutant copies, the kill-matrix bookkeeping, the report comparison,
the minimizer and replay on synthetic inputs, in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from attention_suite import Case, Verdict, build, repro
from triage import compare, minimize, mutants, mutation_run

ROOT = Path(__file__).resolve().parents[1]
ISSUE_BUGS = {  # the bugs the issue names, by catalog name
    "no-rescale", "merge-no-max-correction", "expsum-normalized-partials", "bt-unmasked", "tile-vs-block",
    "window-off-by-one", "softcap-naive-tanh", "int32-offsets", "v-stride", "reduce-all-segments",
}


# --------------------------------------------------------------------------------------------
# The catalog and the mutant copies


@pytest.mark.harness
def test_catalog_applies_to_the_current_kernels():
    assert mutants.check_catalog() == []


@pytest.mark.harness
def test_catalog_holds_the_issue_bugs_and_unique_names():
    names = [m.name for m in mutants.CATALOG]
    assert len(names) == len(set(names))
    assert ISSUE_BUGS <= set(names), ISSUE_BUGS - set(names)
    assert all(m.note for m in mutants.CATALOG if m.gpu_only), "a gpu-only mutant must say where it is caught"


@pytest.mark.harness
def test_target_must_occur_exactly_once(tmp_path):
    copy = mutants.materialize(None, tmp_path)
    source = copy / "paged_kernels" / "_attention.py"
    text = source.read_text()
    mutant = mutants.BY_NAME["no-rescale"]
    target = mutant.edits[0].target
    source.write_text(text + "\n# " + target + "\n")  # now twice
    with pytest.raises(mutants.CatalogError, match="occurs 2 times"):
        mutant.sources(copy / "paged_kernels")
    source.write_text(text.replace(target, "acc = acc * alpha[:, None]  +  tl.dot("))  # now never
    with pytest.raises(mutants.CatalogError, match="occurs 0 times"):
        mutant.sources(copy / "paged_kernels")


@pytest.mark.harness
def test_materialize_mutates_only_the_copy(tmp_path):
    shipped = {p.name: p.read_bytes() for p in (ROOT / "paged_kernels").glob("*.py")}
    mutant = mutants.BY_NAME["scale-not-log2"]
    copy = mutants.materialize(mutant, tmp_path) / "paged_kernels"
    assert {p.name: p.read_bytes() for p in (ROOT / "paged_kernels").glob("*.py")} == shipped
    changed = {p.name for p in copy.glob("*.py") if p.read_bytes() != shipped[p.name]}
    assert changed == {e.file for e in mutant.edits}
    assert mutants.fingerprint(copy) != mutants.fingerprint(ROOT / "paged_kernels")


@pytest.mark.harness
def test_the_copy_is_the_kernels_python_imports(tmp_path):
    """What the runner relies on: cwd + PYTHONPATH at the copy shadow the repository's kernels."""
    root = mutants.materialize(mutants.BY_NAME["no-rescale"], tmp_path)
    env = {**os.environ, "PYTHONPATH": str(root), "TRITON_INTERPRET": "1"}
    code = "import paged_kernels, pathlib; print(pathlib.Path(paged_kernels.__file__).resolve().parent)"
    found = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert Path(found.stdout.strip()) == (root / "paged_kernels").resolve()


# --------------------------------------------------------------------------------------------
# Kill-matrix bookkeeping


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_numerics" name="test_quick_matches_reference[quick-mixed-2d]" time="1"/>
<testcase classname="tests.test_numerics" name="test_quick_matches_reference[quick-mixed-3d]" time="1">
<failure message="AssertionError: quick-mixed via 3d: max err 1.5">trace</failure></testcase>
<testcase classname="tests.test_poison" name="test_quick_poison[2d]" time="1">
<skipped message="no">skip</skipped></testcase>
<testcase classname="tests.test_poison" name="test_quick_poison[3d]" time="1">
<error message="RuntimeError: boom">trace</error></testcase>
</testsuite></testsuites>"""


def _result(name, tests, returncode=1, gpu_only=False, fingerprint="abc", died=False):
    return mutation_run.MutantResult(name=name, description="", gpu_only=gpu_only, note="gpu note",
                                     returncode=returncode, seconds=1.0, tests=tests,
                                     imported={"fingerprint": fingerprint}, expected_fingerprint="abc", died=died)


@pytest.mark.harness
def test_junit_parsing_and_statuses(tmp_path):
    (tmp_path / "junit.xml").write_text(JUNIT)
    tests = mutation_run.parse_junit(tmp_path / "junit.xml")
    assert [(t.tier, t.outcome) for t in tests] == [
        ("numerics", "passed"), ("numerics", "failed"), ("poison", "skipped"), ("poison", "error")]
    assert tests[1].by_assertion and not tests[3].by_assertion
    assert _result("m", tests).status == "killed"
    assert _result("m", tests[:1], returncode=0).status == "survived"
    assert _result("m", tests, fingerprint="other").status == "invalid"  # ran some other kernels
    assert _result("m", tests, returncode=-11, died=True).status == "crashed"
    assert _result("m", [], returncode=4).status == "invalid"  # usage error is no kill
    assert _result("m", [], returncode=None).status == "timeout"


@pytest.mark.harness
def test_kill_matrix_exit_status():
    passed = [mutation_run.TestOutcome("tests/test_numerics.py::t[a]", "numerics", "passed")]
    failed = [mutation_run.TestOutcome("tests/test_numerics.py::t[a]", "numerics", "failed", "AssertionError: x")]
    control = _result("control", passed, returncode=0)
    killed = _result("bug", failed)
    survivor = _result("bug2", passed, returncode=0)
    gpu = _result("gpu-bug", passed, returncode=0, gpu_only=True)
    assert mutation_run.summarize(control, [killed, gpu], "cpu")[1] == 0
    assert mutation_run.summarize(control, [killed, gpu], "cuda")[1] == 1  # on a GPU it must be caught
    assert mutation_run.summarize(control, [killed, survivor], "cpu")[1] == 1
    assert mutation_run.summarize(_result("control", failed), [killed], "cpu")[1] == 2
    text = mutation_run.format_matrix(control, [killed, survivor, gpu], "cpu", "quick")
    assert "KILLED by assertion" in text and "SURVIVED" in text and "gpu-only, expected on CPU" in text


# --------------------------------------------------------------------------------------------
# Report comparison


def _report(*records):
    return {"impl": "x", "device": "cpu",
            "cases": [{"nodeid": f"tests/t.py::t[{c}-{p}]", "case": c, "path": p, "ratio": r} for c, p, r in records]}


@pytest.mark.harness
def test_compare_finds_new_failures_growth_and_missing_by_severity():
    base = _report(("a", "2d", 0.2), ("b", "2d", 0.05), ("c", "2d", 0.3), ("d", "2d", 0.5), ("e", "2d", 3.0),
                   ("gone", "3d", 0.1))
    cand = _report(("a", "2d", 40.0), ("b", "2d", 0.08), ("c", "2d", 0.9), ("d", "2d", 0.6), ("e", "2d", 3.5),
                   ("new", "3d", float("inf")))
    findings = compare.compare(base, cand, factor=2.0, min_ratio=0.1)
    assert [(f.kind, f.key.split("[")[1][:1]) for f in findings] == [
        ("new failure", "n"),  # non-finite first
        ("new failure", "a"),
        ("grew", "c"),  # x3, b grew x1.6 and stays under min_ratio; d, e grew < x2
        ("missing", "g"),
    ]


@pytest.mark.harness
def test_compare_keeps_the_worst_of_repeated_records_and_sets_exit_status(tmp_path):
    base = _report(("fuzz", "auto", 0.1), ("fuzz", "auto", 0.3))
    assert compare.ratios(base) == {"tests/t.py::t[fuzz-auto]": 0.3}
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "same.json").write_text(json.dumps(_report(("fuzz", "auto", 0.5))))
    (tmp_path / "worse.json").write_text(json.dumps(_report(("fuzz", "auto", 1.5))))
    quiet = dict(factor=2.0, min_ratio=0.1, limit=None, allow_missing=False, printer=lambda *a: None)
    assert compare.run_compare(str(tmp_path / "base.json"), str(tmp_path / "same.json"), **quiet) == 0
    assert compare.run_compare(str(tmp_path / "base.json"), str(tmp_path / "worse.json"), **quiet) == 1


# --------------------------------------------------------------------------------------------
# Minimizer


@pytest.mark.harness
def test_shrink_finds_the_smallest_failing_case():
    """A synthetic bug: any sequence of >= 37 keys with ALiBi fails, on either path."""
    start = minimize.Trial(Case(label="big", seq_lens=(50, 23, 70, 9), query_lens=(1, 23, 10, 1), num_q_heads=8,
                                num_kv_heads=2, head_size=64, alibi=True, sinks=True, window_size=(30, -1)), "auto")

    def fails(trial):
        return trial.case.alibi and max(trial.case.seq_lens) >= 37

    result = minimize.shrink(start, fails, max_trials=500)
    c = result.trial.case
    assert not result.exhausted
    assert (c.seq_lens, c.query_lens, c.num_q_heads, c.num_kv_heads, c.head_size) == ((37,), (1,), 1, 1, 16)
    assert c.alibi and not c.sinks and c.window_size == (-1, -1) and result.trial.path == "2d"
    assert minimize.shrink(start, fails, max_trials=3).exhausted


# --------------------------------------------------------------------------------------------
# Replay and minimize on a real reproducer (a deliberately wrong implementation, no kernel needed)

WRONG_IMPL = '''
def unified_attention(q, k, v, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, softmax_scale, causal,
                      window_size, block_table, softcap, q_descale, k_descale, v_descale,
                      alibi_slopes=None, sinks=None, output_scale=None):
    out.zero_()  # wrong everywhere
    out[:, 0] = float("nan") if q.shape[0] > 2 else 0.0  # and non-finite for batches of more than 2 tokens
    return out
'''


def _reproducer(tmp_path, device, impl):
    case = Case(label="triage-selftest", seq_lens=(20, 9, 33), query_lens=(5, 1, 1), num_q_heads=4,
                num_kv_heads=2, head_size=32)
    inputs = build(case, device, seed=11)
    verdict = Verdict(False, 1.0, 0.5, 0.01, 0.001, 0)
    ctx = SimpleNamespace(impl=impl, nodeid="tests/test_mutation.py::selftest", repro_dir=str(tmp_path))
    return repro.save(ctx, inputs, "auto", verdict, {})  # a plain function offers only its own path


@pytest.mark.harness
def test_reproducer_replays_and_minimizes(tmp_path, device):
    from attention_suite import Implementation
    from triage import replay

    (tmp_path / "wrong.py").write_text(WRONG_IMPL)
    impl = Implementation.load(f"{tmp_path / 'wrong.py'}:unified_attention")
    file = _reproducer(tmp_path, device, impl)
    payload = torch.load(file, weights_only=True)
    assert payload["case"]["seq_lens"] == (20, 9, 33) and payload["tensors"]["q"].shape == (7, 4, 32)
    lines = []
    status = replay.replay(file, device=device, printer=lines.append)
    text = "\n".join(lines)
    assert status == 1, text
    assert "identical to the stored tensors" in text and "per query head" in text and "non-finite" in text
    lines.clear()
    status = minimize.minimize(device=device, impl_spec=None, file=file, out_dir=str(tmp_path / "min"),
                               printer=lines.append)
    text = "\n".join(lines)
    assert status == 0, text
    assert "seq_lens=(1,)" in text and "heads=1/1 d=16" in text, text
    smaller = list((tmp_path / "min").glob("*.pt"))
    assert len(smaller) == 1 and replay.replay(str(smaller[0]), device=device, printer=lambda *a: None) == 1


# --------------------------------------------------------------------------------------------
# The nightly check


@pytest.mark.mutation
def test_every_mutant_is_killed(device):
    """Every catalog mutant fails some quick-tier test (gpu-only ones: the stress tier, on a GPU)."""
    tiers = "quick" if device == "cpu" else "quick or stress"
    # On a GPU the runs share one device: the stress test holds ~8 GB, so a few at a time.
    workers = (os.cpu_count() or 1) if device == "cpu" else min(4, os.cpu_count() or 1)
    control, results = mutation_run.run_catalog(mutants.CATALOG, tiers=tiers, device=device, workers=workers,
                                                progress=lambda *a: None)
    matrix = mutation_run.format_matrix(control, results, device, tiers)
    summary, status = mutation_run.summarize(control, results, device)
    assert status == 0, f"{summary}\n\n{matrix}"


@pytest.mark.harness
@pytest.mark.quick
def test_child_runs_do_not_inherit_the_parent_workers_identity():
    """Run inside an xdist worker (the nightly test under -n), the kill matrix's child pytest must not
    see the worker's PYTEST_XDIST_* variables: its guard would take itself for a worker and never
    record which kernels it imported, so every mutant came out 'invalid'."""
    parent = {"PYTEST_XDIST_WORKER": "gw1", "PYTEST_XDIST_TESTRUNUID": "abc", "PYTEST_XDIST_WORKER_COUNT": "2",
              "PYTEST_CURRENT_TEST": "tests/test_mutation.py::x (call)", "TRITON_INTERPRET": "1",
              "PYTEST_ADDOPTS": "-p no:randomly", "PATH": "/usr/bin"}
    child = mutation_run.child_environment(parent)
    assert child == {"PYTEST_ADDOPTS": "-p no:randomly", "PATH": "/usr/bin"}
    assert "workerinput" in mutation_run._GUARD and "PYTEST_XDIST_WORKER" not in mutation_run._GUARD


@pytest.mark.harness
@pytest.mark.parametrize("label", ["quick-int8-pertokenhead", "quick-fp8q-bf16out", "quick-prefix-ranges"])
def test_reproducer_stores_every_feature_tensor(tmp_path, device, label):
    """A reproducer replayed from its stored tensors alone (the builder may have changed since)
    must carry every tensor the case needs: scale caches, q_descale, prefix ranges."""
    from attention_suite import Implementation, compare, tables
    from triage import replay

    inputs = build(tables.find(label), device, seed=5)
    impl = Implementation.load()
    ctx = SimpleNamespace(impl=impl, nodeid=f"selftest::{label}", repro_dir=str(tmp_path))
    payload = torch.load(repro.save(ctx, inputs, "auto", Verdict(False, 1.0, 0.5, 0.01, 0.001, 0), {}),
                         weights_only=True)
    stored = replay._from_stored(inputs.case, payload, device)
    verdict = compare(stored, impl.run(stored, "auto"))
    assert verdict.passed, verdict.message()
