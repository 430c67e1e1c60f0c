"""numerics tier: every case of the table through forced 2D, forced 3D and the implementation's choice."""

import pytest

from attention_suite import check_against_reference, skip_if_unsupported, tables

CASES = tables.numerics_cases() + tables.feature_cases()


@pytest.mark.numerics
@pytest.mark.parametrize("path", tables.PATHS)
@pytest.mark.parametrize("case", CASES, ids=tables.ids(CASES))
def test_matches_reference(ctx, case, path):
    skip_if_unsupported(ctx.impl, case, path)
    check_against_reference(ctx, case, path)


# The cross-section: the quick tier runs the cases tables.QUICK_SELECTION names (chosen by what they
# kill, tests/test_quick_cover.py), the numerics tier the rest.
CROSS_SECTION = [pytest.param(c, marks=pytest.mark.quick, id=c.name) if c.label in tables.QUICK_SELECTION
                 else pytest.param(c, id=c.name) for c in tables.cross_section_cases()]


@pytest.mark.numerics
@pytest.mark.cross_section
@pytest.mark.parametrize("path", tables.PATHS)
@pytest.mark.parametrize("case", CROSS_SECTION)
def test_cross_section_matches_reference(ctx, case, path):
    skip_if_unsupported(ctx.impl, case, path)
    check_against_reference(ctx, case, path)
