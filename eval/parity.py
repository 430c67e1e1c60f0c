"""Backend parity: how far a candidate backend's answers are from a trusted backend's, and the gate.

Measured per pair (candidate vs trusted), over the same problems and prompts:

- identical generations: share of problems whose raw greedy generations are the same string;
- identical answers: share whose extracted answers agree, per filter (strict / flexible);
- teacher-forced log-likelihood: both backends score the gold solution given the same prompt;
  per token the log-prob difference, reported as its mean and max, and per problem the
  difference of the summed log-likelihood (the "largest log-likelihood difference");
- delta exact_match per filter against twice the combined stderr.

The gate (all must hold):

1. ``|delta EM| <= 2 * sqrt(se_a^2 + se_b^2)`` for both filters. This is the question the
   nightly job asks of a real model (FlashAttention 0.794/0.772 vs Triton 0.798/0.782 passes).
   It is vacuous for the tiny default model, whose accuracy is ~0 on every backend.
2. Mean per-token |delta log p| on the teacher-forced gold solutions
   ``<= TOKEN_TOL_ULPS * eps``, where ``eps`` is the machine epsilon of the precision the
   attention effectively computes in: the model dtype, but at least 2^-10 because fp32
   matmuls on a GPU run as TF32 (10-bit mantissa). Two correct implementations differ by
   rounding only; each layer's attention output then carries a relative error of a few eps,
   which the remaining layers and the softmax over the vocabulary turn into a log-prob error of
   the same order, so on average a handful of eps (measured: ~1e-5 nats for fp32 kernel vs
   sdpa on the tiny model; for two correct bf16 implementations on an 8B model we expect a
   few 1e-2 nats, which the H100 run is there to confirm). 8 eps (0.0078 fp16/fp32-as-TF32, 0.0625 bf16) sits above that noise and far
   below what a real attention bug does (measured on the tiny model, 1-shot, 8 problems: a
   1.25x softmax scale gives 0.38 nats mean, 2.7 max). The mean, not the max,
   is gated: over tens of thousands of tokens a few near-tied tokens legitimately move by far
   more than the average, and the max is reported for triage.
3. Identical flexible-extract answers on at least ``ANSWER_AGREEMENT`` of the problems. Greedy
   decoding amplifies a rounding difference into a different continuation only at near-ties,
   so correct backends agree on most extracted answers (the 16-bit threshold leaves room for
   the answer flips that bf16 rounding does cause on long generations of 8B models: the
   reference table's 0.4-1.0 point exact_match gap implies at least that many);
   a broken kernel changes most generations of the tiny model outright. This is the check that
   sees decode-only bugs, which teacher forcing (a prefill) cannot: dropping each sequence's
   newest KV block in decode steps left the teacher-forced log-probs untouched but changed
   every generation and 8/8 extracted answers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from .task import FILTERS

TOKEN_TOL_ULPS = 8.0
TF32_EPS = 2.0 ** -10
ANSWER_AGREEMENT = {torch.float32: 0.95, torch.float16: 0.85, torch.bfloat16: 0.85}


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
    runtime_s: float = 0.0
    attention_calls: dict[str, int] = field(default_factory=dict)


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


def compare(candidate: BackendResult, trusted: BackendResult, dtype: torch.dtype) -> PairParity:
    docs = sorted(set(candidate.generations) & set(trusted.generations))
    if not docs:
        raise ValueError(f"{candidate.backend} and {trusted.backend} share no problems")
    delta_em, bound, checks = {}, {}, []
    for f in FILTERS:
        (em_a, se_a), (em_b, se_b) = candidate.metrics[f], trusted.metrics[f]
        delta_em[f] = em_a - em_b
        bound[f] = 2.0 * math.sqrt(se_a ** 2 + se_b ** 2)
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
    checks.append(Check("mean |dlogp| per token", mean_tok, tol, mean_tok <= tol,
                        f"{TOKEN_TOL_ULPS:g} x eps_eff({str(dtype).removeprefix('torch.')})"))

    answers = {f: _share(candidate.answers[f], trusted.answers[f]) for f in FILTERS}
    need = ANSWER_AGREEMENT.get(dtype, 0.85)
    checks.append(Check("identical answers (flexible)", answers["flexible-extract"], need,
                        answers["flexible-extract"] >= need, "share of problems"))
    return PairParity(
        candidate=candidate.backend, trusted=trusted.backend, num_problems=len(docs),
        identical_generations=_share(candidate.generations, trusted.generations), identical_answers=answers,
        delta_em=delta_em, em_bound=bound, max_seq_loglik_diff=max_seq, max_token_logprob_diff=max_tok,
        mean_token_logprob_diff=mean_tok, checks=checks,
    )

