"""harness tier: the documents the code points to exist.

Code cites a tuned constant's or a rejected design's reason as ``Decision [Name]``; each name must
be a heading of ``benchmarks/DECISIONS.md`` (a citation may wrap across comment or docstring lines).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.quick, pytest.mark.harness]

ROOT = Path(__file__).resolve().parents[1]
CITED_IN = ("paged_kernels", "attention_suite", "reference", "benchmarks", "triage", "eval")


def _citations() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for folder in CITED_IN:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for match in re.finditer(r"Decision\s*\[([^\]]+)\]", path.read_text()):
                # A citation wrapped across comment lines or split into adjacent string literals.
                name = " ".join(re.sub(r"[\"']\s*[\"']", "", match.group(1)).replace("#", " ").split())
                found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def test_every_cited_decision_has_an_entry():
    headings = {line[4:].strip() for line in (ROOT / "benchmarks" / "DECISIONS.md").read_text().splitlines()
                if line.startswith("### ")}
    cited = _citations()
    assert len(cited) >= 10, "the citation pattern no longer matches the code's citations"
    missing = {name: files for name, files in cited.items() if name not in headings}
    assert not missing, f"cited in code, no '### Name' entry in benchmarks/DECISIONS.md: {missing}"
