"""harness tier: the project installs and starts cleanly.

- No top-level package of ours may share its name with a module another installed distribution
  provides: one process holds one module per name, so the clash breaks one of the two (our former
  ``kernels`` package shadowed Hugging Face's, which transformers >= 5.25 imports).
- Every command parses its arguments before it imports torch, triton, transformers or lm-eval:
  ``--help`` and usage errors answer at once. The commands run with those imports blocked, so a
  module-level import that creeps in ahead of parsing fails here by name.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "paged-attention-verify"
HEAVY = ("torch", "triton", "transformers", "lm_eval", "datasets")

# Every command a user types: (module run with -m, its arguments before --help).
COMMANDS = [
    ("attention_suite.verify", ()),
    ("attention_suite.memsafety", ()),
    ("triage", ()),
    ("triage", ("replay",)),
    ("triage", ("minimize",)),
    ("triage", ("compare",)),
    ("triage", ("mutants",)),
    ("triage", ("cover",)),
    ("eval.gsm8k", ()),
    ("benchmarks.sweep", ()),
    ("benchmarks.ceiling", ()),
    ("benchmarks.disasm", ()),
    ("benchmarks.report", ()),
]

# Runs a command as `python -m MODULE ARGS` would, with the heavy modules made unimportable.
_BLOCKED_RUN = """
import importlib.abc, runpy, sys
HEAVY = {heavy!r}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"{{name}} imported before argument parsing")
sys.meta_path.insert(0, Refuse())
sys.argv = [{module!r}] + {args!r}
runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
"""


def our_top_level_packages() -> list[str]:
    return sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests")


def shadowed_modules(packages, distributions) -> dict:
    """{package: [other distributions providing a top-level module of that name]}."""
    clashes = {}
    for name in packages:
        others = sorted(set(distributions.get(name, ())) - {DISTRIBUTION})
        if others:
            clashes[name] = others
    return clashes


@pytest.mark.harness
@pytest.mark.quick
def test_no_package_of_ours_shadows_an_installed_module():
    clashes = shadowed_modules(our_top_level_packages(), importlib.metadata.packages_distributions())
    assert not clashes, ("top-level packages of ours named like a module another installed distribution provides "
                         f"(one process can import only one of them): {clashes}")


@pytest.mark.harness
@pytest.mark.quick
def test_the_shadowing_check_sees_a_clash():
    """The check above on a package named like one a dependency installs (pytest's own ``_pytest``)."""
    distributions = importlib.metadata.packages_distributions()
    assert shadowed_modules(["_pytest", "paged_kernels"], distributions) == {"_pytest": ["pytest"]}
    assert "paged_kernels" in our_top_level_packages()


def _run_blocked(module: str, args) -> subprocess.CompletedProcess:
    code = _BLOCKED_RUN.format(heavy=HEAVY, module=module, args=list(args))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


def _command_id(command) -> str:
    module, args = command
    return " ".join((module,) + tuple(args))


# (extra argument, expected exit status, stream that must hold the usage line)
ANSWERS = {"help": ("--help", 0, "stdout"), "usage-error": ("--no-such-option", 2, "stderr")}


@pytest.mark.harness
@pytest.mark.quick
@pytest.mark.parametrize("answer", ANSWERS)
@pytest.mark.parametrize("command", COMMANDS, ids=_command_id)
def test_answers_before_heavy_imports(command, answer):
    module, args = command
    extra, status, stream = ANSWERS[answer]
    proc = _run_blocked(module, list(args) + [extra])
    assert proc.returncode == status and "usage:" in getattr(proc, stream), (
        f"`python -m {_command_id(command)} {extra}` must answer (exit {status}) before importing any of "
        f"{HEAVY}:\n{proc.stderr[-1500:]}")


BAD_IMPLS = {
    "no-colon": ("paged_kernels", "expected MODULE:FUNC"),
    "module-not-found": ("nosuch.module:fn", "module 'nosuch.module' not found"),
    "file-not-found": ("missing_impl.py:fn", "file 'missing_impl.py' not found"),
    "no-such-function": ("paged_kernels:no_such_function", "has no function 'no_such_function'"),
}


@pytest.mark.harness
@pytest.mark.quick
@pytest.mark.parametrize("form", BAD_IMPLS)
def test_bad_impl_is_one_line_naming_impl(form):
    spec, reason = BAD_IMPLS[form]
    proc = subprocess.run([sys.executable, "-m", "attention_suite.verify", "--impl", spec, "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and f"--impl {spec}" in lines[0] and reason in lines[0], (
        proc.returncode, proc.stderr[-1500:])


@pytest.mark.harness
@pytest.mark.quick
def test_main_job_tier_names_are_the_tables():
    from attention_suite import tables, verify

    assert verify.TIER_NAMES == tuple(tables.TABLES)
    assert set(verify.FULL_TIERS) | set(verify.CPU_DEFAULT_TIERS) <= set(tables.TABLES)
