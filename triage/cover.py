"""The quick tier chosen by what it kills: a greedy set cover over a stored kill matrix.

The matrix (``KILL_MATRIX``, JSON) records, per catalog mutant, whether the full CPU tiers kill it
and which *units* do: ``case:<label>`` for a cross-section case run by the quick numerics test,
``test:<node id>`` for any other quick test (those stay quick whatever is chosen). ``choose``
picks the fewest cross-section cases that, with the fixed tests, kill every mutant the full tiers
kill, then adds cases until the field-coverage rule holds (every class ``tables.coverage`` finds in
any table has a quick case). ``tables.QUICK_SELECTION`` holds the result; ``tests/test_quick_cover.py``
fails when the two disagree or when a mutant the full tiers kill has no quick killer.

    python -m triage cover                      # the selection from the stored matrix, and why
    python -m triage mutants --tiers "quick or cross_section" --json RUN.json [--only NEW]
    python -m triage cover --from-run RUN.json  # store the run's rows in the matrix, then choose
"""

from __future__ import annotations

import json
from pathlib import Path

KILL_MATRIX = Path(__file__).resolve().parent / "kill_matrix.json"
# The quick test that runs each cross-section case through every path: its failures are the case's.
CASE_TEST = "tests/test_numerics.py::test_cross_section_matches_reference"


def units_of(nodeids, labels) -> set[str]:
    """The units a run's failing node ids stand for (a cross-section case, or the test itself)."""
    units = set()
    for nodeid in nodeids:
        base, _, param = nodeid.partition("[")
        label = None
        if base == CASE_TEST:
            # Ids are "<case name>-<path>"; a case name starts with its label. Longest match wins
            # (one label may prefix another).
            found = [lb for lb in labels if param.startswith(lb + "-")]
            label = max(found, key=len) if found else None
        units.add(f"case:{label}" if label else f"test:{nodeid}")
    return units


def matrix_from_run(run: dict, labels, full_kills: dict[str, bool] | None = None, source: str = "") -> dict:
    """A stored matrix from ``triage mutants --json`` output over the quick tier. ``full_kills``
    gives the full tiers' verdict for mutants quick did not kill (quick's kills are the full
    tiers' too: the full tiers include quick)."""
    full_kills = full_kills or {}
    mutants = {}
    for m in run["mutants"]:
        if m["gpu_only"]:
            continue
        units = sorted(units_of([t["nodeid"] for t in m["tests"]], labels))
        full = bool(units) or bool(full_kills.get(m["name"]))
        mutants[m["name"]] = {"full_tiers_kill": full, "quick_units": units}
    return {"source": source, "tiers": run.get("tiers", "quick"), "device": run.get("device", "cpu"),
            "mutants": mutants}


def load(path: Path = KILL_MATRIX) -> dict:
    return json.loads(Path(path).read_text())


def greedy_cover(kills: dict[str, set[str]], required: set[str], fixed: set[str] = frozenset()) -> list[str]:
    """Units, in the order taken, that with ``fixed`` cover ``required`` (mutant names): each step
    takes the unit killing the most mutants still uncovered (ties: its order in ``kills``)."""
    uncovered = set(required) - set().union(*(kills.get(u, set()) for u in fixed))
    chosen = []
    while uncovered:
        best = max((u for u in kills if u not in fixed and u not in chosen),
                   key=lambda u: len(kills[u] & uncovered), default=None)
        if best is None or not kills[best] & uncovered:
            raise ValueError(f"no unit kills {sorted(uncovered)}")
        chosen.append(best)
        uncovered -= kills[best]
    return chosen


def choose(matrix: dict, cross_section, all_cases, coverage, pinned: dict | None = None) -> tuple[list[str], dict]:
    """(labels of the quick cases in cross-section order, why: {label: reason}).

    ``cross_section``: the candidate cases; ``all_cases``: every table's cases (the classes to
    cover); ``coverage``: case -> its classes (``tables.coverage``); ``pinned``: {label: reason} of
    cases quick keeps whatever the matrix says (a boundary class no catalog mutant stands for)."""
    labels = [c.label for c in cross_section]
    pinned = dict(pinned or {})
    unknown = sorted(set(pinned) - set(labels))
    if unknown:
        raise ValueError(f"pinned cases not in the cross-section: {unknown}")
    kills: dict[str, set[str]] = {f"case:{lb}": set() for lb in labels}
    fixed, required = set(), set()
    for name, row in matrix["mutants"].items():
        if row["full_tiers_kill"]:
            required.add(name)
        for unit in row["quick_units"]:
            kills.setdefault(unit, set()).add(name)
            if not unit.startswith("case:"):
                fixed.add(unit)
    why = {label: f"pinned: {reason}" for label, reason in pinned.items()}
    fixed |= {f"case:{label}" for label in pinned}
    for unit in greedy_cover(kills, required, fixed):
        label = unit.removeprefix("case:")
        why[label] = "kills " + ", ".join(sorted(kills[unit]))
    by_label = {c.label: c for c in cross_section}
    needed = set().union(*(coverage(c) for c in all_cases))
    have = set().union(*(coverage(by_label[lb]) for lb in why))
    while needed - have:
        best = max((c for c in cross_section if c.label not in why), key=lambda c: len(coverage(c) & (needed - have)),
                   default=None)
        gain = coverage(best) & (needed - have) if best is not None else set()
        if not gain:
            raise ValueError(f"no cross-section case covers {sorted(needed - have)}")
        why[best.label] = "covers " + ", ".join(sorted(gain))
        have |= gain
    return [lb for lb in labels if lb in why], why


def run(matrix_path: str = str(KILL_MATRIX), from_run: str | None = None, full_kills: str | None = None,
        source: str = "") -> int:
    """``python -m triage cover``: print the selection and why; exit 1 when tables.QUICK_SELECTION differs."""
    from attention_suite import tables

    cross = tables.cross_section_cases()
    if from_run:
        full = json.loads(Path(full_kills).read_text()) if full_kills else {}
        rows = matrix_from_run(json.loads(Path(from_run).read_text()), [c.label for c in cross], full, source)
        # A run of some mutants (a new one, say) updates their rows and keeps the others'.
        matrix = load(Path(matrix_path)) if Path(matrix_path).exists() else {**rows, "mutants": {}}
        matrix["mutants"].update(rows["mutants"])
        if source:
            matrix["source"] = source
        Path(matrix_path).write_text(json.dumps(matrix, indent=1, sort_keys=True) + "\n")
        print(f"wrote {matrix_path} ({len(rows['mutants'])} rows from the run)")
    matrix = load(Path(matrix_path))
    chosen, why = choose(matrix, cross, tables.all_cases(), tables.coverage, tables.QUICK_PINNED)
    required = sorted(n for n, r in matrix["mutants"].items() if r["full_tiers_kill"])
    missed = sorted(n for n, r in matrix["mutants"].items() if not r["full_tiers_kill"])
    print(f"{len(required)} mutants killed by the full tiers, {len(missed)} by none: {', '.join(missed) or '-'}")
    print(f"quick selection: {len(chosen)} of {len(cross)} cross-section cases")
    for label in chosen:
        print(f"  {label}: {why[label]}")
    if list(tables.QUICK_SELECTION) != chosen:
        print(f"tables.QUICK_SELECTION differs; set it to:\n{tuple(chosen)!r}")
        return 1
    return 0
