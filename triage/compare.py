"""Error reports (``pytest --error-report FILE``): summarize one, compare a candidate with a baseline.

A report is ``{"impl", "device", "cases": [{"nodeid", "case", "path", "ratio"}, ...]}`` where
ratio = error / allowed (> 1 fails, ``Infinity`` for non-finite output). One test can check
several calls (fuzz examples): a key's ratio is the worst of its records.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

FAIL = 1.0


def load(path: str) -> dict:
    with open(path) as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or "cases" not in data:
        raise ValueError(f"{path}: not an error report (no 'cases')")
    return data


def _key(rec: dict) -> str:
    """The nodeid, plus case and path when the nodeid does not already say them (fuzz, poison)."""
    nodeid, case, path = rec["nodeid"], rec["case"], rec["path"]
    return nodeid if f"[{case}-{path}]" in nodeid else f"{nodeid} ({case} via {path})"


def ratios(report: dict) -> dict[str, float]:
    """{key: worst ratio}; key = the nodeid (with case and path where the nodeid lacks them)."""
    result: dict[str, float] = {}
    for rec in report["cases"]:
        key = _key(rec)
        ratio = float(rec["ratio"]) if rec["ratio"] is not None else math.inf
        if math.isnan(ratio):
            ratio = math.inf
        result[key] = max(ratio, result.get(key, -math.inf))
    return result


@dataclass(frozen=True)
class Finding:
    key: str
    kind: str  # "new failure", "grew", "missing"
    baseline: float | None
    candidate: float | None

    @property
    def growth(self) -> float:
        if self.baseline is None or self.candidate is None:
            return math.inf
        if self.baseline == 0:
            return math.inf if self.candidate > 0 else 1.0
        return self.candidate / self.baseline

    def severity(self) -> tuple:
        order = {"new failure": 0, "grew": 1, "missing": 2}[self.kind]
        cand = -1.0 if self.candidate is None else self.candidate
        return (order, -cand, -self.growth)


def compare(baseline: dict, candidate: dict, factor: float = 2.0, min_ratio: float = 0.1) -> list[Finding]:
    """Regressions of ``candidate`` against ``baseline``, most severe first.

    - new failure: ratio > 1 in the candidate, <= 1 (or absent) in the baseline;
    - grew: still passing (or failing in both) but the ratio grew by more than ``factor``, counted only
      when the candidate's ratio is at least ``min_ratio`` (tiny ratios moving around is noise);
    - missing: checked in the baseline, not in the candidate (a test crashed or vanished).
    """
    base, cand = ratios(baseline), ratios(candidate)
    findings = []
    for key, c in cand.items():
        b = base.get(key)
        if c > FAIL and (b is None or b <= FAIL):
            findings.append(Finding(key, "new failure", b, c))
        elif b is not None and c >= min_ratio and (c > factor * b) and not (math.isinf(b) and math.isinf(c)):
            findings.append(Finding(key, "grew", b, c))
    for key, b in base.items():
        if key not in cand:
            findings.append(Finding(key, "missing", b, None))
    return sorted(findings, key=Finding.severity)


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return "inf" if math.isinf(x) else f"{x:.3g}"


def format_findings(findings: list[Finding], limit: int | None = None) -> str:
    if not findings:
        return "no regressions"
    rows = findings if limit is None else findings[:limit]
    lines = [f"{'kind':<12} {'baseline':>9} {'candidate':>9} {'growth':>8}  case", ]
    for f in rows:
        growth = "-" if f.kind == "missing" else ("inf" if math.isinf(f.growth) else f"x{f.growth:.3g}")
        lines.append(f"{f.kind:<12} {_fmt(f.baseline):>9} {_fmt(f.candidate):>9} {growth:>8}  {f.key}")
    if limit is not None and len(findings) > limit:
        lines.append(f"... {len(findings) - limit} more")
    return "\n".join(lines)


def run_compare(baseline_path: str, candidate_path: str, factor: float, min_ratio: float, limit: int | None,
                allow_missing: bool, printer=print) -> int:
    """CLI body: prints the findings; exit 1 on new failures or growth (and on missing cases unless allowed)."""
    baseline, candidate = load(baseline_path), load(candidate_path)
    findings = compare(baseline, candidate, factor, min_ratio)
    counts = {k: sum(f.kind == k for f in findings) for k in ("new failure", "grew", "missing")}
    printer(f"baseline:  {baseline_path} ({len(ratios(baseline))} cases, impl {baseline.get('impl')}, "
            f"device {baseline.get('device')})")
    printer(f"candidate: {candidate_path} ({len(ratios(candidate))} cases, impl {candidate.get('impl')}, "
            f"device {candidate.get('device')})")
    printer(f"rule: new failure = ratio > 1 now and not before; grew = ratio x{factor:g} or more "
            f"(candidate ratio >= {min_ratio:g})")
    printer(format_findings(findings, limit))
    printer(f"\n{counts['new failure']} new failures, {counts['grew']} grew by more than x{factor:g}, "
            f"{counts['missing']} missing from the candidate")
    bad = counts["new failure"] + counts["grew"] + (0 if allow_missing else counts["missing"])
    return 1 if bad else 0


def run_summary(path: str, top: int, printer=print) -> int:
    """CLI body of ``report``: worst cases of one report; exit 1 when any case fails."""
    report = load(path)
    table = ratios(report)
    failing = {k: v for k, v in table.items() if v > FAIL}
    printer(f"{path}: {len(table)} cases, {len(failing)} failing, impl {report.get('impl')}, device {report.get('device')}")
    worst = sorted(table.items(), key=lambda kv: -kv[1])[:top]
    for key, value in worst:
        printer(f"  {_fmt(value):>8}  {'FAIL' if value > FAIL else 'pass'}  {key}")
    return 1 if failing else 0
