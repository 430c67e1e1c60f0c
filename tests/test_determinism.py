"""determinism tier: bit-identical repeats, and batch invariance in batch-invariant mode."""

import pytest

from attention_suite import run_case, same_bits, slice_sequence, tables

CASES = [tables.composition_case(c) for c in ("mixed", "decode", "varlen")]
# The quick tier's cross-section: "mixed" holds a decode and a prefill sequence, so alone each may
# plan differently from the batch (the property the mode pins); the other two run in the full tier.
QUICK_INVARIANCE = [pytest.param(c, marks=pytest.mark.quick) if c.label == "mixed" else c for c in CASES]


@pytest.mark.determinism
@pytest.mark.parametrize("path", tables.PATHS)
@pytest.mark.parametrize("case", CASES, ids=tables.ids(CASES))
def test_repeats_are_bit_identical(ctx, case, path):
    if ctx.impl.path_unsupported(path, case):
        pytest.skip(ctx.impl.path_unsupported(path, case))
    inputs, first = run_case(ctx, case, path)
    for _ in range(2):
        again = ctx.impl.run(inputs, path)
        assert same_bits(first, again), f"{case.name} via {path}: repeated call changed the output"


@pytest.mark.determinism
@pytest.mark.parametrize("case", QUICK_INVARIANCE, ids=tables.ids(CASES))
def test_batch_invariant_mode(ctx, case):
    """In batch-invariant mode a sequence's rows are the same alone and inside the batch."""
    if "batch_invariant" not in ctx.impl.params:
        pytest.skip(f"{ctx.impl.spec} has no 'batch_invariant' argument")
    inputs, batched = run_case(ctx, case, "auto", batch_invariant=True)
    for seq in range(len(case.seq_lens)):
        alone_inputs, rows = slice_sequence(inputs, seq)
        alone = ctx.impl.run(alone_inputs, "auto", batch_invariant=True)
        assert same_bits(alone[: rows.stop - rows.start], batched[rows]), (
            f"{case.name}: sequence {seq} differs alone vs in the batch")
