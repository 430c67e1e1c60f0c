"""The adapter's vLLM dialect against the real thing: the unmodified copy of vLLM's kernel in
``../shared/peers/vllm`` (or ``$VLLM_PEER_DIR``); skips with the reason where it is absent."""

import dataclasses

import pytest

from attention_suite import VLLM_FUNC, Implementation, build, compare, tables, vllm_peer_absent, vllm_peer_module


@pytest.fixture(scope="module")
def vllm_impl():
    if vllm_peer_module(VLLM_FUNC.partition(":")[0]) is None:
        pytest.skip(vllm_peer_absent())
    return Implementation.load(VLLM_FUNC)


@pytest.mark.harness
@pytest.mark.parametrize("label, path", [("quick-fp8kv", "2d"), ("quick-decode-window-sinks", "3d")])
def test_vllm_dialect_runs_vllm_correctly(device, vllm_impl, label, path):
    """An fp8 cache is dequantized only if FP8_PER_TENSOR is passed; its reduction takes a power of
    two segments (this case asks for 3): without the dialect both cases fail against vLLM."""
    # bf16 queries: vLLM computes float32 queries with TF32 dots on GPUs (a bug of that version,
    # README), which this test is not about.
    case = dataclasses.replace(tables.find(label), dtype="bfloat16")
    assert vllm_impl.style == "vllm" and vllm_impl.missing_feature(case) is None
    inputs = build(case, device, 0)
    verdict = compare(inputs, vllm_impl.run(inputs, path))
    assert verdict.passed, verdict.message()
    assert "validate" in vllm_impl.untested_tier({"bad_input"})
