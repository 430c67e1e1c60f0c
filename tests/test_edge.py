"""edge tier: segment boundaries, zero exp-sums, q_len 0 and padding rows, extreme logits, dominant sinks."""

import pytest

from tests.harness import tables
from tests.harness.check import check_against_reference

CASES = tables.edge_cases()


@pytest.mark.edge
@pytest.mark.parametrize("path", tables.PATHS)
@pytest.mark.parametrize("case", CASES, ids=tables.ids(CASES))
def test_edge_matches_reference(ctx, case, path):
    reason = ctx.impl.missing_feature(case) or ctx.impl.path_unsupported(path, case)
    if reason:
        pytest.skip(reason)
    check_against_reference(ctx, case, path)
