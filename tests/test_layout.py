"""layout tier: strided q/out, combined and head-major caches, strided block tables, >2^31-element caches."""

import pytest
from attention_suite import check_against_reference, skip_if_unsupported, tables

CASES = tables.layout_cases()


@pytest.mark.layout
@pytest.mark.parametrize("path", tables.PATHS)
@pytest.mark.parametrize("case", CASES, ids=tables.ids(CASES))
def test_layout_matches_reference(ctx, case, path):
    skip_if_unsupported(ctx.impl, case, path)
    check_against_reference(ctx, case, path)


@pytest.mark.layout
@pytest.mark.stress
@pytest.mark.quick  # a second on a GPU, and the only check that sees int32 offset arithmetic
@pytest.mark.parametrize("path", ("2d", "3d"))
def test_cache_past_2_31_elements(ctx, path):
    """Blocks whose element offset exceeds 2^31 must be addressed in int64."""
    from attention_suite.large_cache import judge_large, large_cache_inputs

    if ctx.impl.path_unsupported(path):
        pytest.skip(ctx.impl.path_unsupported(path))
    inputs = large_cache_inputs(ctx.device, ctx.seed)
    out = ctx.impl.run(inputs, path)
    verdict = judge_large(inputs, out)
    assert verdict.passed, f"cache past 2^31 elements via {path}: {verdict.message()} (int32 offsets?)"
