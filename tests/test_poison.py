"""poison tier: NaN/Inf in every byte the result must not depend on changes nothing, bit for bit.

Poisoned: unreferenced blocks, block tails past seqused_k, slots outside the window, the spare
block that block-table columns past each sequence's last block point at, head-dim padding,
the output buffer, and (3D) the whole workspace before the call.
"""

import pytest

from tests.harness import tables
from tests.harness.check import check_against_reference, run_case, same_bits, skip_if_unsupported

CASES = tables.poison_cases()


def _workspace(ctx, case, path):
    """A NaN-filled workspace for our 3D path (vLLM-style buffers are poisoned by the adapter)."""
    if path != "3d" or ctx.impl.style != "split_kv" or "workspace" not in ctx.impl.params:
        return {}
    import kernels

    segments = case.num_segments or 4
    tokens = sum(case.query_lens) + case.pad_tokens
    ws = kernels.Workspace(tokens, case.num_q_heads, case.head_size, segments, ctx.device).fill_(float("nan"))
    return {"workspace": ws, "num_segments": segments}


@pytest.mark.poison
@pytest.mark.parametrize("path", tables.PATHS)
@pytest.mark.parametrize("case", CASES, ids=tables.ids(CASES))
def test_poison_changes_nothing(ctx, case, path):
    skip_if_unsupported(ctx.impl, case, path)
    extra = _workspace(ctx, case, path)
    _, poisoned = check_against_reference(ctx, case, path, poison=True, **extra)
    clean_inputs, clean = run_case(ctx, case, path, poison=False, **({"num_segments": extra["num_segments"]}
                                                                       if extra else {}))
    rows = clean_inputs.num_tokens_used
    assert same_bits(poisoned[:rows], clean[:rows]), f"{case.name} via {path}: output depends on poisoned memory"


@pytest.mark.quick
@pytest.mark.poison
@pytest.mark.parametrize("path", ("2d", "3d"))
def test_quick_poison(ctx, path):
    case = tables.poison_cases()[3]  # windowed decode with segments: the densest poison case
    if ctx.impl.path_unsupported(path, case):
        pytest.skip(ctx.impl.path_unsupported(path, case))
    extra = _workspace(ctx, case, path)
    _, poisoned = check_against_reference(ctx, case, path, poison=True, **extra)
    _, clean = run_case(ctx, case, path, **({"num_segments": extra["num_segments"]} if extra else {}))
    assert same_bits(poisoned[: len(case.query_lens)], clean[: len(case.query_lens)])
