"""reference tier: the golden checks itself against PyTorch SDPA and its own split-KV semantics."""

import pytest
import torch
import torch.nn.functional as F

import reference
from reference import Partials, merge_partials, segment_bounds, segment_partials
from attention_suite import build, tables

# The reference runs on the CPU at one size everywhere: it checks semantics, not the device.
SELF_CASES = [tables.composition_case(c, scale=1, dtype="float32") for c in tables.COMPOSITIONS] + [
    tables.composition_case("mixed", scale=1, dtype="float32", window_size=(9, -1)).with_(label="mixed-window"),
    tables.composition_case("chunked", scale=1, dtype="float32", causal=False).with_(label="chunked-noncausal"),
    tables.composition_case("decode", scale=1, dtype="float32", **tables._gqa(5)).with_(label="decode-g5"),
]


def _dense(inputs, seq):
    """One sequence's q, k, v as dense [heads, len, dim] float64 tensors (GQA expanded)."""
    c = inputs.case
    q0, q1 = sum(c.query_lens[:seq]), sum(c.query_lens[: seq + 1])
    pos = torch.arange(c.seq_lens[seq])
    blocks = inputs.block_table[seq, pos // c.block_size].long()
    group = c.num_q_heads // c.num_kv_heads
    k = inputs.k[blocks, pos % c.block_size].double().repeat_interleave(group, 1).transpose(0, 1)
    v = inputs.v[blocks, pos % c.block_size].double().repeat_interleave(group, 1).transpose(0, 1)
    return inputs.q[q0:q1].double().transpose(0, 1), k, v, slice(q0, q1)


def _golden(inputs):
    out = torch.zeros(inputs.q.shape, dtype=torch.float64)
    return reference.unified_attention(*inputs.call_args(out), **inputs.call_kwargs())


@pytest.mark.reference
@pytest.mark.quick
@pytest.mark.parametrize("case", SELF_CASES, ids=tables.ids(SELF_CASES))
def test_reference_matches_sdpa_math(case, seed):
    inputs = build(case, "cpu", seed)
    out = _golden(inputs)
    for seq, (n_k, n_q) in enumerate(zip(case.seq_lens, case.query_lens)):
        if n_q == 0:
            continue
        q, k, v, rows = _dense(inputs, seq)
        mask = reference.visibility(n_k, n_q, case.causal, case.window_size, "cpu")
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=inputs.softmax_scale)
        torch.testing.assert_close(out[rows], expected.transpose(0, 1), rtol=0, atol=1e-12)


@pytest.mark.reference
@pytest.mark.quick
@pytest.mark.parametrize("features", [{}, {"sinks": True}, {"window_size": (6, -1)}, {"softcap": 2.0, "alibi": True}])
@pytest.mark.parametrize("num_segments", [1, 2, 3, 7, 64, 200])  # 200: more segments than the 150-key sequence has keys
def test_segment_merge_equals_single_pass(num_segments, features, seed):
    """Including segments past the sequence end (empty) and segments outside the window."""
    case = tables.composition_case("varlen", scale=1, dtype="float32", **features)
    inputs = build(case, "cpu", seed)
    single = _golden(inputs)
    split = torch.zeros_like(single)
    reference.split_kv_attention(*inputs.call_args(split), **inputs.call_kwargs(), num_segments=num_segments)
    rows = inputs.num_tokens_used
    torch.testing.assert_close(split[:rows], single[:rows], rtol=0, atol=1e-12)


@pytest.mark.reference
def test_merge_of_all_empty_segments_is_zero():
    empty = Partials(max=torch.full((3, 2, 1), float("-inf"), dtype=torch.float64),
                     expsum=torch.zeros(3, 2, 1, dtype=torch.float64), acc=torch.zeros(3, 2, 1, 4, dtype=torch.float64))
    merged = merge_partials(empty)
    assert torch.equal(merged, torch.zeros_like(merged))
    with_sinks = merge_partials(empty, sinks=torch.tensor([0.5, -3.0], dtype=torch.float64))
    assert torch.equal(with_sinks, torch.zeros_like(with_sinks))


@pytest.mark.reference
def test_segment_bounds_cover_every_key_once():
    for seq_len in (0, 1, 5, 64, 100):
        for segments in (1, 3, 8, 200):
            bounds = segment_bounds(seq_len, segments)
            covered = [k for a, b in bounds for k in range(a, b)]
            assert covered == list(range(seq_len)) and len(bounds) == segments


@pytest.mark.reference
def test_empty_segment_partials_are_neutral():
    scores = torch.randn(2, 3, 10, dtype=torch.float64)
    values = torch.randn(2, 10, 4, dtype=torch.float64)
    parts = segment_partials(scores, values, [(0, 10), (10, 10)])
    assert torch.isneginf(parts.max[1]).all() and (parts.expsum[1] == 0).all() and (parts.acc[1] == 0).all()


@pytest.mark.reference
@pytest.mark.parametrize("case", tables.poison_cases(), ids=tables.ids(tables.poison_cases()))
def test_reference_ignores_poison(case, seed):
    clean, poisoned = build(case, "cpu", seed), build(case, "cpu", seed, poison=True)
    rows = clean.num_tokens_used
    a, b = _golden(clean)[:rows], _golden(poisoned)[:rows]
    assert torch.isfinite(b).all() and torch.equal(a, b)


@pytest.mark.reference
def test_native_precision_is_a_real_baseline(seed):
    """The same-precision baseline must differ from the golden by about the dtype's rounding."""
    inputs = build(tables.composition_case("mixed", scale=1), "cpu", seed)
    golden = _golden(inputs)
    native = torch.zeros_like(inputs.q)
    reference.unified_attention(*inputs.call_args(native), **inputs.call_kwargs(), precision="native")
    rows = inputs.num_tokens_used
    err = (native[:rows].double() - golden[:rows]).abs().max().item()
    assert 1e-5 < err < 1e-2, err
