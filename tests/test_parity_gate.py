"""The gsm8k parity gate's rule (``eval.parity``) on synthetic backend results: the fixed 8 eps_eff
limit, and the noise floor that a same-dtype baseline sets for models that amplify rounding."""

import pytest
import torch

from eval import parity
from eval.engine import Generation

pytestmark = pytest.mark.accuracy

BF16 = torch.bfloat16
TOKENS = 200


def _result(name: str, offset: float, flips: int = 0) -> parity.BackendResult:
    """Log-probs shifted by ``offset`` per token from a shared base; ``flips`` greedy choices changed."""
    gen = torch.Generator().manual_seed(0)
    base = -torch.rand(TOKENS, generator=gen, dtype=torch.float64) * 3
    forced = Generation()
    for i in range(TOKENS):
        forced.add(token=i, logprob=float(base[i] + offset), argmax=-1 if i < flips else i, margin=5.0)
    metrics = {f: (0.0, 0.0) for f in parity.FILTERS}
    return parity.BackendResult(name, metrics, {0: "x"}, {f: {0: "1"} for f in parity.FILTERS},
                                token_logprobs={0: (base + offset).tolist()}, forced={0: forced})


def _means(pair):
    return {c.name: c.passed for c in pair.checks if "mean" in c.name}


@pytest.mark.parametrize("offset, noise_offset, passes", [
    (0.03, None, True),   # within 8 eps_eff(bf16) = 0.0625, no baseline in the run
    (0.10, None, False),  # beyond it
    (0.10, 0.08, True),   # the baseline moves 0.08 by rounding alone: 0.10 is within 2 x that
    (0.40, 0.08, False),  # 5 x the floor: a real difference
])
def test_mean_limits_follow_the_noise_floor(offset, noise_offset, passes):
    golden, candidate = _result("reference", 0.0), _result("kernel", offset)
    noise = None
    if noise_offset is not None:
        noise = parity.noise_floor(golden, _result("reference-native", noise_offset), BF16)
        assert noise.prefill == pytest.approx(noise_offset) and noise.decode == pytest.approx(noise_offset)
    pair = parity.compare(candidate, golden, BF16, noise)
    assert set(_means(pair).values()) == {passes}, pair.checks


def test_confident_margin_grows_with_the_decode_limit():
    """Flips at a 5-nat margin are confident under 8 eps (0.5 nats), not under a 0.4 floor (6.4 nats)."""
    golden, candidate = _result("reference", 0.0), _result("kernel", 0.0, flips=20)
    fixed = parity.compare(candidate, golden, BF16)
    assert not [c for c in fixed.checks if c.name == "decode: confident flips"][0].passed
    noise = parity.noise_floor(golden, _result("reference-native", 0.4), BF16)
    scaled = parity.compare(candidate, golden, BF16, noise)
    assert [c for c in scaled.checks if c.name == "decode: confident flips"][0].passed


def test_nan_floor_keeps_the_fixed_limit():
    golden = _result("reference", 0.0)
    noise = parity.NoiseFloor(float("nan"), float("nan"), "reference-native vs reference")
    pair = parity.compare(_result("kernel", 0.1), golden, BF16, noise)
    assert not any(_means(pair).values())


@pytest.mark.parametrize("em_candidate, passes", [(1.0, True), (0.0, False)])
def test_one_problem_needs_equal_scores(em_candidate, passes):
    """--limit 1: lm-eval's stderr is NaN; equal scores pass, different ones fail (not NaN limits)."""
    golden, candidate = _result("reference", 0.0), _result("kernel", 0.0)
    golden.metrics = {f: (1.0, float("nan")) for f in parity.FILTERS}
    candidate.metrics = {f: (em_candidate, float("nan")) for f in parity.FILTERS}
    em_checks = [c.passed for c in parity.compare(candidate, golden, BF16).checks if c.name.startswith("|dEM|")]
    assert em_checks == [passes] * len(parity.FILTERS)


def test_nearest_floor_takes_the_smallest_per_measure():
    floors = [parity.NoiseFloor(1.25, 1.97, "reference-native vs reference"),
              parity.NoiseFloor(0.60, float("nan"), "sdpa vs reference"),
              parity.NoiseFloor(0.70, 0.65, "eager vs reference")]
    nearest = parity.nearest_floor(floors)
    assert (nearest.prefill, nearest.decode) == (0.60, 0.65)
    assert "sdpa" in nearest.pair and "eager" in nearest.pair
    assert parity.nearest_floor([]) is None


def test_a_noisy_baseline_does_not_hide_a_decode_bug():
    """The H200 8B blind spot in miniature: reference-native rounds far more (1.0 per token) than
    the stock attention (0.3); a kernel 1.0 off passed twice the former, it fails twice the latter,
    and the kernel's own distance never enters the floor."""
    from eval.gsm8k import select_noise_floor

    golden = _result("reference", 0.0)
    results = {"reference-native": _result("reference-native", 1.0), "sdpa": _result("sdpa", 0.3),
               "kernel": _result("kernel", 1.0)}
    floors = {name: parity.noise_floor(golden, r, BF16) for name, r in results.items()}
    native_only = parity.compare(results["kernel"], golden, BF16, floors["reference-native"])
    assert all(_means(native_only).values())
    noise = select_noise_floor(floors)
    assert noise.prefill == pytest.approx(0.3)
    assert not any(_means(parity.compare(results["kernel"], golden, BF16, noise)).values())
    assert all(_means(parity.compare(_result("kernel", 0.5), golden, BF16, noise)).values())


def test_the_kernel_never_sets_its_own_floor():
    """A kernel nearer float64 (0.05) than the stock attention (0.3) is still compared with that
    attention (0.25 apart) under twice the stock's floor, not twice its own."""
    from eval.gsm8k import select_noise_floor

    golden = _result("reference", 0.0)
    results = {"sdpa": _result("sdpa", 0.3), "kernel": _result("kernel", 0.05)}
    floors = {name: parity.noise_floor(golden, r, BF16) for name, r in results.items()}
    pair = parity.compare(results["kernel"], results["sdpa"], BF16, select_noise_floor(floors))
    assert all(_means(pair).values()), pair.checks
