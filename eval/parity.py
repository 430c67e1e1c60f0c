"""Backend parity: how far a candidate backend's answers are from a trusted backend's, and the gate.

Measured per pair (candidate vs trusted), over the same problems and prompts:

- identical generations / identical extracted answers (per filter): shares of problems;
- prefill, teacher-forced: both backends score the gold solution given the same prompt in one
  prefill step (the 2D kernel path); per token the log-prob difference (mean, max) and per
  problem the difference of the summed log-likelihood (the "largest log-likelihood difference");
- decode, replayed: both backends are fed the anchor backend's greedy generation (the first
  trusted backend's) through a prefill and then one decode step per token (the split-KV path);
  per step the log-prob difference of the fed token, and whether the greedy choices differ;
- delta exact_match per filter against twice the combined stderr.

The gate (all must hold):

1. ``|delta EM| <= 2 * sqrt(se_a^2 + se_b^2)`` for both filters: the question the nightly asks
   of a real model (FlashAttention 0.794/0.772 vs Triton 0.798/0.782 passes). It is vacuous
   for the tiny default model, whose accuracy is ~0 on every backend.
2. Mean per-token |delta log p|, prefill and decode each, ``<= TOKEN_TOL_ULPS * eps_eff``.
   ``eps_eff`` is the machine epsilon of the precision attention effectively computes in: the
   model dtype, but at least 2^-10 because fp32 matmuls on a GPU run as TF32 (10-bit
   mantissa). Two correct implementations differ by rounding only: each layer's attention
   output carries a relative error of a few eps, which the remaining layers and the vocabulary
   softmax turn into a log-prob error of that order. Measured on the tiny model: ~2e-6 nats
   (fp32, kernel vs sdpa and vs reference) and 0.024 nats (bf16, float64 reference vs sdpa,
   i.e. 3 eps). 8 eps (0.0078 fp16 / fp32-as-TF32, 0.0625 bf16) sits above that noise and far
   below what an attention bug does: a 1.25x softmax scale gave 0.38 nats on the tiny model.
   The mean, not the max, is gated: over many tokens a few legitimately move by far more than
   the average; the max is reported for triage. When the run has same-dtype trusted backends
   (``reference-native``, the stock attention), the limit is the larger of 8 eps and
   ``NOISE_MULTIPLE`` x the distance from the float64 reference of the one nearest to it
   (``NoiseFloor``, ``nearest_floor``): deeper random models amplify rounding far more than the
   tiny one. The nearest, not the all-bf16 ``reference-native`` alone: on the H200 at 8B scale
   that one sat 1.25 / 1.97 nats per token (prefill / decode) from float64, sdpa 0.682 / 0.770,
   the kernel 0.667 / 0.732, and a kernel dropping each sequence's newest KV block in decode
   (2.14) passed twice the first and fails twice the second.
3. Confident greedy flips in the replayed decode: steps where the candidate's greedy token
   differs from the trusted backend's although the trusted backend's top-2 log-prob margin
   exceeds ``FLIP_MARGIN_ULPS * eps_eff`` (0.5 nats bf16, 0.0625 fp16/fp32) are at most
   ``FLIP_SHARE`` of the steps. A rounding-level error can only flip a choice whose margin it
   exceeds; the worst per-token error seen between correct backends (0.21 nats, bf16 tiny
   model) is well under half that margin. Free generations are NOT gated on: near-ties make
   correct backends part ways (bf16, tiny model, 128 tokens: 0/32 identical generations
   between the float64 reference and sdpa), and after the first differing token nothing can be
   compared. Replaying one fixed token sequence through both is what makes decode-path bugs
   measurable: dropping each sequence's newest KV block in decode steps leaves the prefill
   check untouched but fails checks 2 (decode) and 3.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from .task import FILTERS

TOKEN_TOL_ULPS = 8.0
FLIP_MARGIN_ULPS = 64.0
FLIP_SHARE = 0.005
TF32_EPS = 2.0 ** -10
# With a same-dtype baseline in the run, a candidate may differ from a trusted backend by this many
# times the baseline's distance from the float64 reference (two independent roundings, each of
# about that size).
NOISE_MULTIPLE = 2.0


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def effective_eps(dtype: torch.dtype) -> float:
    return max(torch.finfo(dtype).eps, TF32_EPS)


def token_tolerance(dtype: torch.dtype) -> float:
    return TOKEN_TOL_ULPS * effective_eps(dtype)


@dataclass
class BackendResult:
    """One backend's run, keyed by doc id so backends can be compared problem by problem."""

    backend: str
    metrics: dict[str, tuple[float, float]]  # filter -> (exact_match, stderr)
    generations: dict[int, str]  # doc id -> raw generation
    answers: dict[str, dict[int, str]]  # filter -> doc id -> extracted answer
    token_logprobs: dict[int, list[float]] = field(default_factory=dict)  # doc id -> gold solution log-probs
    # doc id -> this backend replaying the anchor backend's generation through prefill + decode
    # steps: per step the fed token's log-prob, the greedy choice and its top-2 margin.
    forced: dict[int, object] = field(default_factory=dict)
    runtime_s: float = 0.0
    attention_calls: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class NoiseFloor:
    """How far rounding alone moves this model's log-probs: a trusted backend computing in the
    model's dtype (``reference-native``, the stock attention) against the float64 reference, on
    the same prompts and replayed tokens.

    Random-weight models amplify a layer's rounding very differently: bf16, per token, 0.02 nats
    on the tiny Llama but 0.22 on the 6-layer Gemma 3 (CPU scale), where sdpa and eager differ
    from the float64 reference by 0.16-0.22 as well. A fixed 8 eps_eff would fail every correct
    backend there. The references go through the same argument mapping, so a mapping bug moves
    both alike and cannot inflate their floor; the stock attention maps nothing, and the floor is
    the smallest of them (``nearest_floor``), so a backend with a bug cannot widen it either."""

    prefill: float
    decode: float
    pair: str

    def allowance(self, fixed: float, measured: float) -> float:
        return fixed if math.isnan(measured) else max(fixed, NOISE_MULTIPLE * measured)


def noise_floor(golden: BackendResult, baseline: BackendResult, dtype: torch.dtype) -> NoiseFloor:
    pair = compare(baseline, golden, dtype)
    return NoiseFloor(pair.mean_token_logprob_diff, pair.decode_mean_logprob_diff,
                      f"{baseline.backend} vs {golden.backend}")


def nearest_floor(floors: list[NoiseFloor]) -> NoiseFloor | None:
    """Per measure, the smallest of several trusted backends' floors (NaN ones skipped): a correct
    implementation can come that close to the float64 reference, so a candidate gets twice that.
    A baseline that rounds more than the candidate (all-bf16 attention against fp32 accumulation)
    would otherwise hide a bug whose error is below its own rounding."""
    def pick(measure: str) -> tuple[float, str]:
        known = [(getattr(f, measure), f.pair) for f in floors if not math.isnan(getattr(f, measure))]
        return min(known) if known else (float("nan"), "none")

    if not floors:
        return None
    (prefill, prefill_pair), (decode, decode_pair) = pick("prefill"), pick("decode")
    pair = prefill_pair if prefill_pair == decode_pair else f"prefill {prefill_pair}; decode {decode_pair}"
    return NoiseFloor(prefill, decode, pair)


@dataclass
class Check:
    name: str
    value: float
    limit: float
    passed: bool
    note: str = ""


@dataclass
class PairParity:
    candidate: str
    trusted: str
    num_problems: int
    identical_generations: float
    identical_answers: dict[str, float]
    delta_em: dict[str, float]
    em_bound: dict[str, float]
    max_seq_loglik_diff: float
    max_token_logprob_diff: float
    mean_token_logprob_diff: float
    decode_tokens: int
    decode_max_logprob_diff: float
    decode_mean_logprob_diff: float
    confident_flips: int
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def _share(a: dict, b: dict) -> float:
    keys = sorted(set(a) & set(b))
    if not keys:
        return float("nan")
    return sum(a[k] == b[k] for k in keys) / len(keys)


def compare(candidate: BackendResult, trusted: BackendResult, dtype: torch.dtype,
            noise: NoiseFloor | None = None) -> PairParity:
    """The gate's numbers for one pair. With ``noise`` the per-token limits are the larger of
    8 eps_eff and ``NOISE_MULTIPLE`` x the floor, and the flip margin grows with the decode limit."""
    docs = sorted(set(candidate.generations) & set(trusted.generations))
    if not docs:
        raise ValueError(f"{candidate.backend} and {trusted.backend} share no problems")
    delta_em, bound, checks = {}, {}, []
    for f in FILTERS:
        (em_a, se_a), (em_b, se_b) = candidate.metrics[f], trusted.metrics[f]
        delta_em[f] = em_a - em_b
        # One problem has no stderr (lm-eval gives NaN): the scores must then agree exactly.
        bound[f] = 2.0 * math.sqrt(sum(0.0 if math.isnan(se) else se ** 2 for se in (se_a, se_b)))
        # A tiny epsilon so two identical zero-stderr scores (accuracy exactly 0 or 1) pass.
        checks.append(Check(f"|dEM| {f}", abs(delta_em[f]), bound[f], abs(delta_em[f]) <= bound[f] + 1e-12,
                            "2 x combined stderr"))

    seq_diffs, token_diffs = [], []
    for d in docs:
        a, b = candidate.token_logprobs.get(d), trusted.token_logprobs.get(d)
        if a is None or b is None:
            continue
        ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
        seq_diffs.append(abs(float(ta.sum() - tb.sum())))
        token_diffs.append((ta - tb).abs())
    if token_diffs:
        all_tokens = torch.cat(token_diffs)
        # NaN anywhere must fail the gate, not vanish in a max/mean.
        mean_tok = float(all_tokens.mean()) if not torch.isnan(all_tokens).any() else float("nan")
        max_tok = float(all_tokens.max()) if not torch.isnan(all_tokens).any() else float("nan")
        max_seq = max(seq_diffs)
    else:
        mean_tok = max_tok = max_seq = float("nan")
    tol = token_tolerance(dtype)
    rule = f"{TOKEN_TOL_ULPS:g} eps_eff({_name(dtype)})"
    tol_prefill = tol_decode = tol
    if noise is not None:
        tol_prefill, tol_decode = noise.allowance(tol, noise.prefill), noise.allowance(tol, noise.decode)
        rule += f" or {NOISE_MULTIPLE:g}x the noise floor"
    checks.append(Check("prefill: mean |dlogp|/token", mean_tok, tol_prefill, mean_tok <= tol_prefill,
                        f"teacher-forced gold; {rule}"))

    dec_diffs, flips, positions = [], 0, 0
    # A choice counts as confident at a margin FLIP_MARGIN_ULPS / TOKEN_TOL_ULPS times the decode limit.
    margin_needed = FLIP_MARGIN_ULPS / TOKEN_TOL_ULPS * tol_decode
    for d in docs:
        a, b = candidate.forced.get(d), trusted.forced.get(d)
        if a is None or b is None or not b.tokens:
            continue
        if a.tokens != b.tokens:
            raise ValueError(f"doc {d}: {candidate.backend} and {trusted.backend} replayed different tokens")
        dec_diffs.append((torch.tensor(a.logprobs, dtype=torch.float64) - torch.tensor(b.logprobs, dtype=torch.float64)).abs())
        for choice_a, choice_b, margin_b in zip(a.argmax, b.argmax, b.margins):
            positions += 1
            if choice_a != choice_b and margin_b > margin_needed:
                flips += 1
    if dec_diffs:
        dec = torch.cat(dec_diffs)
        dec_mean = float(dec.mean()) if not torch.isnan(dec).any() else float("nan")
        dec_max = float(dec.max()) if not torch.isnan(dec).any() else float("nan")
    else:
        dec_mean = dec_max = float("nan")
    checks.append(Check("decode: mean |dlogp|/token", dec_mean, tol_decode, dec_mean <= tol_decode,
                        f"replayed generation; {rule}"))
    flip_share = flips / positions if positions else float("nan")
    checks.append(Check("decode: confident flips", flip_share, FLIP_SHARE, flip_share <= FLIP_SHARE,
                        f"{flips}/{positions} steps; greedy choice differs at top-2 margin > {margin_needed:.3g}"))

    answers = {f: _share(candidate.answers[f], trusted.answers[f]) for f in FILTERS}
    return PairParity(
        candidate=candidate.backend, trusted=trusted.backend, num_problems=len(docs),
        identical_generations=_share(candidate.generations, trusted.generations), identical_answers=answers,
        delta_em=delta_em, em_bound=bound, max_seq_loglik_diff=max_seq, max_token_logprob_diff=max_tok,
        mean_token_logprob_diff=mean_tok, decode_tokens=positions, decode_max_logprob_diff=dec_max,
        decode_mean_logprob_diff=dec_mean, confident_flips=flips, checks=checks,
    )

