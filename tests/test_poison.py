"""poison tier: NaN/Inf in every byte the result must not depend on changes nothing, bit for bit.

Poisoned: unreferenced blocks, block tails past seqused_k, slots outside the window, the spare
block that block-table columns past each sequence's last block point at, head-dim padding,
the output buffer, and (3D) the whole workspace before the call.
"""

import pytest

from attention_suite import check_poison_free, skip_if_unsupported, tables

CASES = tables.poison_cases()


@pytest.mark.poison
@pytest.mark.parametrize("path", tables.PATHS)
@pytest.mark.parametrize("case", CASES, ids=tables.ids(CASES))
def test_poison_changes_nothing(ctx, case, path):
    skip_if_unsupported(ctx.impl, case, path)
    check_poison_free(ctx, case, path)


@pytest.mark.quick
@pytest.mark.poison
@pytest.mark.parametrize("path", ("2d", "3d"))
# Windowed decode with segments (the densest poison), and non-causal tiles that must stop at seq_len.
@pytest.mark.parametrize("label", ["poison-window-decode", "poison-noncausal"])
def test_quick_poison(ctx, label, path):
    case = tables.find(label)
    skip_if_unsupported(ctx.impl, case, path)
    check_poison_free(ctx, case, path)


@pytest.mark.quick
@pytest.mark.poison
@pytest.mark.skipif(not tables.ON_GPU, reason="GPU only: the interpreter launches the reduction after the 3D kernel")
def test_quick_reduction_waits_for_the_split_kernel(ctx):
    case = tables.find("poison-long-split")
    skip_if_unsupported(ctx.impl, case, "3d")
    check_poison_free(ctx, case, "3d")
