"""harness tier: packages point one way.

The kernels and the reference import nothing of ours (nor each other: the reference must stay
independent of what it checks); the suite's engine imports only those two; triage, eval and the
benchmarks import the engine, the kernels or the reference, not one another; nothing imports
``tests``. Read from the source (every ``import`` and ``from`` statement, function
bodies included), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"paged_kernels", "reference", "attention_suite", "benchmarks", "triage", "eval", "tests"}
# package: the packages of ours it may import (itself always)
ALLOWED = {
    "paged_kernels": set(),
    "reference": set(),
    "attention_suite": {"paged_kernels", "reference"},
    "benchmarks": {"attention_suite", "paged_kernels", "reference"},
    "triage": {"attention_suite", "paged_kernels", "reference"},
    "eval": {"attention_suite", "paged_kernels", "reference"},
    "tests": OURS - {"tests"},
}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.harness
@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_point_one_way(package):
    wrong = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        extra = _imported_packages(path) - ALLOWED[package] - {package}
        if extra:
            wrong[str(path.relative_to(ROOT))] = sorted(extra)
    assert not wrong, f"{package} imports packages it must not: {wrong}"
