"""edge tier: segment boundaries, zero exp-sums, q_len 0 and padding rows, extreme logits, dominant sinks."""

import pytest

from attention_suite import check_against_reference, skip_if_unsupported, tables

CASES = tables.edge_cases()


@pytest.mark.edge
@pytest.mark.parametrize("path", tables.PATHS)
@pytest.mark.parametrize("case", CASES, ids=tables.ids(CASES))
def test_edge_matches_reference(ctx, case, path):
    skip_if_unsupported(ctx.impl, case, path)
    check_against_reference(ctx, case, path)
