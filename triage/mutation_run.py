"""Run the suite against every mutant of the catalog and print the kill matrix.

For each mutant (and an unmutated control) the suite is copied into a fresh temp folder with
the mutated ``paged_kernels/`` beside it, and ``pytest -m <tiers>`` runs there as a subprocess with
that folder as working directory and first on ``PYTHONPATH``, so ``import paged_kernels`` (the
default ``--attn-impl``, the harness's Workspace/planner imports and the interpreter probe)
resolves to the copy. A guard plugin records which ``paged_kernels`` the run imported and its
source digest; a run that imported anything else is reported as invalid rather than counted.
The control must pass, or no kill means anything.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from attention_suite import VLLM_DIR_ENV, vllm_peer_dir

from . import mutants as catalog

REPO_ROOT = catalog.REPO_ROOT
# triage too: tests/test_mutation.py imports it at collection.
SUITE_ITEMS = ("conftest.py", "pyproject.toml", "attention_suite", "tests", "reference", "eval", "benchmarks", "triage")
CONTROL = "control"

_GUARD = '''"""Written by triage.mutation_run: records which kernels package this pytest run imported, and
ends the process when one test hangs (a mutant that corrupts memory can deadlock malloc)."""
import faulthandler
import json
import os
import sys
from pathlib import Path

import pytest

from triage.mutants import fingerprint

_LIMIT = float(os.environ.get("ATTN_TRIAGE_TEST_TIMEOUT") or 0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    # faulthandler's watchdog is a C thread: it fires even when a deadlocked thread holds the GIL.
    if _LIMIT > 0:
        faulthandler.dump_traceback_later(_LIMIT, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        if _LIMIT > 0:
            faulthandler.cancel_dump_traceback_later()


def pytest_sessionstart(session):
    if hasattr(session.config, "workerinput"):  # an xdist worker of this run: the controller records
        return
    import paged_kernels

    where = Path(paged_kernels.__file__).resolve().parent
    Path(os.environ["ATTN_TRIAGE_IMPORTED"]).write_text(
        json.dumps({"paged_kernels": str(where), "fingerprint": fingerprint(where)}))


def pytest_report_header(config):
    return "triage: mutant " + (os.environ.get("ATTN_TRIAGE_MUTANT") or "(none: control)")
'''


def prepare_tree(mutant: catalog.Mutant | None, root: Path) -> Path:
    """The suite plus a (mutated) kernels copy under ``root``; returns ``root``."""
    for item in SUITE_ITEMS:
        src = REPO_ROOT / item
        if src.is_dir():
            shutil.copytree(src, root / item, ignore=catalog.ignore_copies)
        elif src.exists():
            shutil.copy2(src, root / item)
    catalog.materialize(mutant, root)
    (root / "_triage_guard.py").write_text(_GUARD)
    return root


@dataclass
class TestOutcome:
    nodeid: str
    tier: str  # the test file's name without test_ (one column of the matrix)
    outcome: str  # passed, failed, error, skipped
    message: str = ""

    @property
    def is_failure(self) -> bool:
        return self.outcome in ("failed", "error")

    @property
    def by_assertion(self) -> bool:
        return self.message.startswith(("AssertionError", "assert", "Failed:"))


@dataclass
class MutantResult:
    name: str
    description: str
    gpu_only: bool
    note: str
    returncode: int | None
    seconds: float
    tests: list = field(default_factory=list)  # TestOutcome
    imported: dict | None = None
    expected_fingerprint: str = ""
    log_tail: str = ""
    died: bool = False  # the first run died (signal, or the hang watchdog): rerun under xdist to attribute
    tree: str = ""  # the temp copy (kept with --keep)

    @property
    def failures(self) -> list:
        return [t for t in self.tests if t.is_failure]

    @property
    def status(self) -> str:
        if self.imported is None or self.imported.get("fingerprint") != self.expected_fingerprint:
            return "invalid"  # the run did not import this mutant (or never started)
        if self.returncode is None:
            return "timeout"
        if self.died:
            return "crashed"  # the suite goes red; the tests that took the process down are listed
        if self.returncode in (0, 1):
            if self.failures:
                return "killed"
            return "survived" if self.returncode == 0 else "invalid"
        return "invalid"  # pytest usage/internal/collection error or no tests: not a kill

    @property
    def killed(self) -> bool:
        return self.status in ("killed", "crashed", "timeout")


def parse_junit(path: Path) -> list:
    if not path.exists():
        return []
    outcomes = []
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname") or ""
        if module:
            nodeid = f"{module.replace('.', '/')}.py::{case.get('name')}"
        else:  # a module-level skip or collection error: the name is the module
            module = case.get("name", "")
            nodeid = module.replace(".", "/") + ".py"
        tier = module.rsplit(".", 1)[-1].removeprefix("test_")
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or child.text or "").strip().splitlines()[0:1]
                message = message[0] if message else ""
                break
        outcomes.append(TestOutcome(nodeid, tier, outcome, message))
    return outcomes


def _pytest(cmd, cwd, env, timeout):
    """(returncode or None on timeout, output). Runs in its own process group, so a timeout also
    ends the xdist workers it started."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out + f"\n[triage: killed after {timeout:.0f}s]"


def child_environment(parent) -> dict:
    """The parent's environment without what would make the child pytest run misread itself: when
    the kill matrix runs inside an xdist worker (the nightly test under ``-n``), the worker's
    PYTEST_XDIST_* variables would make the child's plugins think they are workers too; the
    conftest sets TRITON_INTERPRET from the device."""
    inherited = ("PYTEST_XDIST_", "PYTEST_CURRENT_TEST", "TRITON_INTERPRET")
    return {k: v for k, v in parent.items() if not k.startswith(inherited)}


def run_one(mutant: catalog.Mutant | None, *, tiers: str, device: str, timeout: float, extra_args: list,
            repro_dir: str | None, report_dir: str | None, keep: bool, threads: int,
            test_timeout: float | None = None) -> MutantResult:
    """One pytest run of the suite against ``mutant`` (None: the control) in a fresh copy."""
    name = mutant.name if mutant else CONTROL
    if test_timeout is None:  # a quick test takes seconds; on a GPU the first call also compiles
        test_timeout = 60 if device == "cpu" else 600
    root = Path(tempfile.mkdtemp(prefix=f"attn-mutant-{name}-"))
    start = time.monotonic()
    try:
        prepare_tree(mutant, root)
        expected = catalog.fingerprint(root / "paged_kernels")
        env = child_environment(os.environ)
        env.update(
            PYTHONPATH=os.pathsep.join([str(root)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]),
            ATTN_TEST_DEVICE={"cuda": "gpu"}.get(device, device),
            ATTN_TRIAGE_MUTANT="" if mutant is None else mutant.name,
            ATTN_TRIAGE_IMPORTED=str(root / "imported.json"),
            PYTHONDONTWRITEBYTECODE="1",
            ATTN_TRIAGE_TEST_TIMEOUT=str(test_timeout),
        )
        # The copy sits elsewhere: it finds the vLLM peer where this checkout does.
        env.setdefault(VLLM_DIR_ENV, str(vllm_peer_dir()))
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        cmd = [sys.executable, "-m", "pytest", "tests", "-m", tiers, "-q", "-p", "no:cacheprovider",
               "-p", "_triage_guard", f"--junitxml={root / 'junit.xml'}", "-o", "junit_family=xunit1"]
        if repro_dir:
            cmd.append(f"--repro-dir={Path(repro_dir).resolve() / name}")
        if report_dir:
            Path(report_dir).mkdir(parents=True, exist_ok=True)
            cmd.append(f"--error-report={Path(report_dir).resolve() / (name + '.json')}")
        cmd += list(extra_args)
        returncode, log = _pytest(cmd, root, env, timeout)
        # Died: killed by a signal, or ended without writing its report (the hang watchdog exits early).
        crashed = returncode is not None and (returncode < 0 or not (root / "junit.xml").exists())
        if crashed:
            # The process died (the interpreter wrote out of bounds, say): rerun under one xdist worker,
            # which reports the test that crashed its worker as failed and goes on with a fresh one.
            (root / "junit.xml").unlink(missing_ok=True)
            code, log2 = _pytest(cmd + ["-n", "1", "--max-worker-restart=1000"], root, env, timeout)
            log = log + "\n--- rerun under one xdist worker to attribute the crash ---\n" + log2
            if code is None:
                returncode = None
        imported_file = root / "imported.json"
        imported = json.loads(imported_file.read_text()) if imported_file.exists() else None
        if imported is not None:
            imported["inside_copy"] = Path(imported["paged_kernels"]).resolve() == (root / "paged_kernels").resolve()
            if not imported["inside_copy"]:
                imported["fingerprint"] = "imported-from-elsewhere"
        tests = parse_junit(root / "junit.xml")
        if crashed:
            for t in tests:
                if "crashed" in t.message or "Timeout" in t.message:
                    t.outcome, t.message = "failed", "crashed: " + t.message
        return MutantResult(
            name=name, description=mutant.description if mutant else "unmutated copy of paged_kernels/",
            gpu_only=bool(mutant and mutant.gpu_only), note=mutant.note if mutant else "",
            returncode=returncode, seconds=time.monotonic() - start, tests=tests,
            imported=imported, expected_fingerprint=expected, log_tail=log[-3000:], died=crashed,
            tree=str(root) if keep else "",
        )
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def run_catalog(mutant_list, *, tiers: str = "quick", device: str = "cpu", workers: int = 2, timeout: float = 900,
                extra_args=(), repro_dir=None, report_dir=None, keep=False, progress=print) -> tuple:
    """Run the control and every mutant; returns (control result, [mutant results] in catalog order)."""
    jobs = [None] + list(mutant_list)
    threads = 1 if workers > 1 else 0
    results: dict = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(run_one, m, tiers=tiers, device=device, timeout=timeout, extra_args=list(extra_args),
                               repro_dir=repro_dir, report_dir=report_dir, keep=keep, threads=threads):
                   (m.name if m else CONTROL) for m in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            result = future.result()
            results[result.name] = result
            state = result.status.upper() if result.name != CONTROL or result.status != "survived" else "PASS"
            progress(f"[{done:>2}/{len(jobs)}] {result.name}: {state} "
                     f"({len(result.failures)} failing of {len(result.tests)} tests, {result.seconds:.0f}s)"
                     + (f", kept in {result.tree}" if result.tree else ""))
    return results[CONTROL], [results[m.name] for m in mutant_list]


def _tiers(results) -> list[str]:
    seen = []
    for result in results:
        for t in result.tests:
            if t.tier not in seen:
                seen.append(t.tier)
    return sorted(seen)


def verdict(result: MutantResult, device: str) -> str:
    status = result.status
    if result.name == CONTROL:
        return "PASS (control)" if status == "survived" else f"CONTROL {status.upper()}: harness broken, kills invalid"
    if status == "killed":
        if any(t.by_assertion for t in result.failures):
            return "KILLED by assertion"
        # No check failed, something raised: fine for a GPU fault, suspicious for a NameError (broken mutant).
        kinds = sorted({t.message.split(":")[0].replace("failed on setup with ", "").strip('"')
                        for t in result.failures})
        return f"KILLED by exception ({', '.join(kinds)[:60]})"
    if status in ("crashed", "timeout"):
        return f"KILLED by {'crash' if status == 'crashed' else 'timeout'} (rc {result.returncode})"
    if status == "survived" and result.gpu_only and device == "cpu":
        return "SURVIVED: gpu-only, expected on CPU"
    return status.upper()


def format_matrix(control: MutantResult, results: list, device: str, tiers: str, detail: int = 3) -> str:
    rows = [control] + results
    columns = _tiers(rows)
    name_width = max(len(r.name) + (11 if r.gpu_only else 0) for r in rows) + 1
    widths = [max(len(c), 7) for c in columns]
    lines = [f"kill matrix: {len(results)} mutants x `-m {tiers}` on {device} "
             "(cell: failing tests / tests run, per test file)"]
    header = f"{'mutant':<{name_width}}" + "".join(f" {c:>{w}}" for c, w in zip(columns, widths)) + f" {'time':>5}  verdict"
    lines += [header, "-" * len(header)]
    for r in rows:
        label = r.name + (" [gpu-only]" if r.gpu_only else "")
        cells = []
        for c, w in zip(columns, widths):
            ran = [t for t in r.tests if t.tier == c and t.outcome != "skipped"]
            failed = sum(t.is_failure for t in ran)
            cells.append(f" {f'{failed}/{len(ran)}' if ran else '-':>{w}}")
        lines.append(f"{label:<{name_width}}" + "".join(cells) + f" {r.seconds:>4.0f}s  {verdict(r, device)}")
    lines.append("")
    for r in results:
        fails = r.failures
        head = f"{r.name}: {r.description}"
        if fails:
            shown = ", ".join(t.nodeid.split("::", 1)[1] for t in fails[:detail])
            more = f" (+{len(fails) - detail} more)" if len(fails) > detail else ""
            lines.append(f"  {head}\n      caught by: {shown}{more}")
        else:
            lines.append(f"  {head}\n      caught by: NOTHING in `-m {tiers}`" + (f"; {r.note}" if r.note else ""))
    return "\n".join(lines)


def summarize(control: MutantResult, results: list, device: str) -> tuple[str, int]:
    """(summary text, exit status): 0 all expected kills, 1 a survivor, 2 the run itself is invalid."""
    if control.status != "survived":
        return (f"the unmutated control did not pass cleanly (status {control.status}, rc {control.returncode}); "
                f"no kill can be trusted. Its log ends:\n{control.log_tail}"), 2
    invalid = [r for r in results if r.status == "invalid"]
    expected = [r for r in results if not (r.gpu_only and device == "cpu")]
    deferred = [r for r in results if r.gpu_only and device == "cpu"]
    killed = [r for r in expected if r.killed]
    survivors = [r for r in expected if not r.killed and r.status != "invalid"]
    pct = 100.0 * len(killed) / max(len(expected), 1)
    lines = [f"killed {len(killed)}/{len(expected)} mutants detectable on {device} ({pct:.0f}%)"]
    for r in deferred:
        state = "killed anyway" if r.killed else "not killed here"
        lines.append(f"gpu-only, {state}: {r.name}: {r.note}")
    if survivors:
        lines.append("SURVIVED (the suite misses these bugs): " + ", ".join(r.name for r in survivors))
    for r in invalid:
        lines.append(f"INVALID run for {r.name} (rc {r.returncode}, imported {r.imported}): log ends:\n{r.log_tail[-1500:]}")
    status = 2 if invalid else (1 if survivors else 0)
    return "\n".join(lines), status


def to_json(control: MutantResult, results: list, device: str, tiers: str) -> dict:
    def one(r: MutantResult):
        data = asdict(r)
        data["status"] = r.status
        data["verdict"] = verdict(r, device)
        data["tests"] = [asdict(t) for t in r.tests if t.is_failure]
        return data

    return {"device": device, "tiers": tiers, "control": one(control), "mutants": [one(r) for r in results]}


def main_mutants(*, names, tiers, device, workers, timeout, extra_args, repro_dir, report_dir, keep, json_path,
                 detail, printer=print) -> int:
    chosen = catalog.get(names)
    problems = catalog.check_catalog()
    if problems:
        printer("catalog does not apply to the current kernels:\n" + "\n".join(problems))
        return 2
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    printer(f"running {len(chosen)} mutants + control, `pytest -m {tiers!r}` on {device}, {workers} at a time")
    started = time.monotonic()
    control, results = run_catalog(chosen, tiers=tiers, device=device, workers=workers, timeout=timeout,
                                   extra_args=extra_args, repro_dir=repro_dir, report_dir=report_dir, keep=keep,
                                   progress=printer)
    printer("")
    printer(format_matrix(control, results, device, tiers, detail))
    text, status = summarize(control, results, device)
    printer("")
    printer(text)
    printer(f"wall time {time.monotonic() - started:.0f}s with {workers} worker(s)")
    if json_path:
        Path(json_path).write_text(json.dumps(to_json(control, results, device, tiers), indent=1))
        printer(f"kill matrix JSON: {json_path}")
    return status
