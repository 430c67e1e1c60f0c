"""fuzz tier: random valid batches from hypothesis; a failure shrinks to a minimal case.

CI runs a fixed, derandomized budget per path (profile ``cpu``: 10 examples, ``gpu``: 20);
nightly runs ``--hypothesis-profile=nightly`` (1000 examples, randomized); mutation runs may
pass ``--hypothesis-profile=noshrink`` (a failure is enough, no shrinking).
"""

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from attention_suite import Case, check_against_reference, tables

MAX_LEN = 400 if tables.ON_GPU else 90


@st.composite
def cases(draw):
    num_seqs = draw(st.integers(1, 4))
    seq_lens = draw(st.lists(st.integers(1, MAX_LEN), min_size=num_seqs, max_size=num_seqs))
    decode = draw(st.booleans())
    query_lens = [1 if decode else draw(st.integers(0, n)) for n in seq_lens]
    if sum(query_lens) == 0:
        query_lens[0] = 1
    ratio = draw(st.sampled_from([1, 2, 3, 4, 8]))
    kv_heads = draw(st.integers(1, 2))
    left = draw(st.sampled_from([-1, -1, 0, 7, 30]))
    return Case(
        label="fuzz", seq_lens=tuple(seq_lens), query_lens=tuple(query_lens),
        num_q_heads=ratio * kv_heads, num_kv_heads=kv_heads,
        head_size=draw(st.sampled_from([16, 32, 40, 64] + ([128, 256] if tables.ON_GPU else []))),
        block_size=draw(st.sampled_from([1, 8, 16, 48])),
        dtype=draw(st.sampled_from(["float16", "float32", "bfloat16"])),
        window_size=(left, -1), softcap=draw(st.sampled_from([0.0, 0.0, 2.5])),
        alibi=draw(st.booleans()), sinks=draw(st.booleans()),
        num_segments=draw(st.sampled_from([None, 1, 3, 16])), pad_tokens=draw(st.integers(0, 2)),
    )


@pytest.mark.fuzz
@pytest.mark.parametrize("path", tables.PATHS)  # one test per path: xdist runs them side by side
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)
@given(case=cases(), seed=st.integers(0, 2**31 - 1))
def test_fuzz_matches_reference(ctx, path, case, seed):
    if ctx.impl.path_unsupported(path):
        pytest.skip(ctx.impl.path_unsupported(path))
    # An example the implementation cannot express is discarded, not passed: hypothesis fails the
    # test (Unsatisfiable) if nothing is left to check.
    assume(not ctx.impl.missing_feature(case) and not ctx.impl.path_unsupported(path, case))
    check_against_reference(replace(ctx, seed=seed), case, path)
