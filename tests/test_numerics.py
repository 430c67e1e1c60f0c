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


@pytest.mark.quick
@pytest.mark.numerics
@pytest.mark.parametrize("path", tables.PATHS)
@pytest.mark.parametrize("case", tables.quick_cases(), ids=tables.ids(tables.quick_cases()))
def test_quick_matches_reference(ctx, case, path):
    skip_if_unsupported(ctx.impl, case, path)
    check_against_reference(ctx, case, path)
