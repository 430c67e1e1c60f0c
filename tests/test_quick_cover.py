"""The quick tier is chosen by what it kills: ``triage/cover.py`` over the stored kill matrix."""

import pytest

from attention_suite import tables
from triage import cover, mutants

pytestmark = [pytest.mark.quick, pytest.mark.harness]


@pytest.fixture(scope="module")
def matrix():
    return cover.load()


def test_quick_selection_is_the_stored_matrix_cover(matrix):
    chosen, why = cover.choose(matrix, tables.cross_section_cases(), tables.all_cases(), tables.coverage,
                               tables.QUICK_PINNED)
    assert list(tables.QUICK_SELECTION) == chosen, (
        f"tables.QUICK_SELECTION is not the cover of {cover.KILL_MATRIX.name}; `python -m triage cover` prints it")


def test_quick_kills_every_mutant_the_full_tiers_kill(matrix):
    quick = {f"case:{c.label}" for c in tables.quick_cases()}
    missed = [name for name, row in matrix["mutants"].items() if row["full_tiers_kill"]
              and not any(u in quick or u.startswith("test:") for u in row["quick_units"])]
    assert not missed, f"killed by the full tiers, not by quick: {missed}"


def test_matrix_rows_are_the_cpu_catalog(matrix):
    """A new mutant needs its row (`triage mutants --only NAME --tiers "quick or cross_section" --json R`,
    then `triage cover --from-run R`); a removed one loses it."""
    catalog = {m.name for m in mutants.CATALOG if not m.gpu_only}
    assert set(matrix["mutants"]) == catalog, (
        f"rows without a mutant: {sorted(set(matrix['mutants']) - catalog)}; "
        f"mutants without a row: {sorted(catalog - set(matrix['mutants']))}")


def test_pinned_cases_are_quick():
    assert set(tables.QUICK_PINNED) <= set(tables.QUICK_SELECTION)
    kills = {"mutants": {"m1": {"full_tiers_kill": True, "quick_units": ["case:quick-varlen"]}}}
    cross = [c for c in tables.cross_section_cases() if c.label in ("quick-varlen", *tables.QUICK_PINNED)]
    chosen, why = cover.choose(kills, cross, cross, lambda c: set(), tables.QUICK_PINNED)
    assert chosen == [c.label for c in cross] and all(why[p].startswith("pinned") for p in tables.QUICK_PINNED)


def test_cover_takes_the_fewest_units():
    kills = {"case:a": {"m1"}, "case:b": {"m1", "m2", "m3"}, "case:c": {"m4"}, "test:t": {"m4"}}
    assert cover.greedy_cover(kills, {"m1", "m2", "m3", "m4"}, fixed={"test:t"}) == ["case:b"]
    with pytest.raises(ValueError, match="m5"):
        cover.greedy_cover(kills, {"m5"})


def test_case_units_from_node_ids():
    labels = ["quick-prefix-ranges", "quick-prefix-ranges-unclamped"]
    ids = [f"{cover.CASE_TEST}[quick-prefix-ranges-unclamped-f16-d64-2d]", f"{cover.CASE_TEST}[quick-prefix-ranges-f16-3d]",
           "tests/test_poison.py::test_quick_poison[quick-prefix-ranges-2d]"]
    assert cover.units_of(ids, labels) == {"case:quick-prefix-ranges-unclamped", "case:quick-prefix-ranges",
                                           "test:tests/test_poison.py::test_quick_poison[quick-prefix-ranges-2d]"}
