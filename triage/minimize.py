"""Shrink a failing case while it still fails: fewer sequences, shorter lengths, fewer and smaller
heads, fewer features, fewer segments, 2D instead of 3D.

Greedy delta debugging over a ``Trial`` (case + path). Every candidate strictly simplifies one
knob, so the search ends; the first candidate that still fails is kept and the search restarts
from it. ``shrink`` is pure (it takes the predicate), so it is unit-tested on synthetic
predicates; ``minimize_file`` wires it to the real implementation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Callable, Iterator

HEAD_SIZES = (16, 32, 40, 64, 80, 128, 256)
FEATURE_DEFAULTS = (  # field, simpler value
    ("sinks", False), ("alibi", False), ("softcap", 0.0), ("window_size", (-1, -1)), ("causal", True),
    ("layout", "contiguous"), ("pad_tokens", 0), ("logit_scale", 1.0), ("alibi_scale", 1.0), ("sink_scale", 1.0),
    ("softmax_scale_factor", 1.0),
    ("out_dtype", None), ("kv_dtype", None), ("block_size", 16),
)


@dataclass(frozen=True)
class Trial:
    case: object  # attention_suite.Case
    path: str  # "2d", "3d" or "auto"

    def describe(self) -> str:
        c = self.case
        feats = [f"{name}={getattr(c, name)!r}" for name, default in FEATURE_DEFAULTS if getattr(c, name) != default]
        return (f"path={self.path} seqs={len(c.seq_lens)} seq_lens={c.seq_lens} query_lens={c.query_lens} "
                f"heads={c.num_q_heads}/{c.num_kv_heads} d={c.head_size} segments={c.num_segments} "
                + " ".join(feats))


def _valid(case) -> bool:
    return (len(case.seq_lens) >= 1 and sum(case.query_lens) >= 1
            and all(0 <= q <= k for q, k in zip(case.query_lens, case.seq_lens)) and min(case.seq_lens) >= 1)


def _shorter(n: int, floor: int) -> list[int]:
    """Candidate lengths below ``n`` (big cuts first), none below ``floor``."""
    options = [n // 2, (3 * n) // 4, n - max(1, n // 8), n - 1]
    return sorted({m for m in options if floor <= m < n}, key=lambda m: m)


def candidates(trial: Trial) -> Iterator[tuple[str, Trial]]:
    """Simplifications of ``trial``, most aggressive first. Each strictly simplifies one knob."""
    c, path = trial.case, trial.path
    n = len(c.seq_lens)

    def with_case(text, **changes):
        try:
            return text, Trial(c.with_(**changes), path)
        except AssertionError:  # Case.__post_init__ rejects it
            return None

    out: list = []
    # Fewer sequences.
    for i in range(n):
        if n > 1:
            out.append(with_case(f"drop sequence {i} (seq_len {c.seq_lens[i]}, q_len {c.query_lens[i]})", seq_lens=c.seq_lens[:i] + c.seq_lens[i + 1:],
                                 query_lens=c.query_lens[:i] + c.query_lens[i + 1:]))
    # The simpler path.
    if path == "auto":
        out += [("path auto -> 2d", Trial(c, "2d")), ("path auto -> 3d", Trial(c, "3d"))]
    elif path == "3d":
        out.append(("path 3d -> 2d", Trial(c.with_(num_segments=None), "2d")))
    # Features back to their defaults.
    for name, default in FEATURE_DEFAULTS:
        if getattr(c, name) != default:
            out.append(with_case(f"{name} -> {default!r}", **{name: default}))
    if c.dtype != "float16" and c.kv_dtype is None and c.out_dtype is None:
        out.append(with_case("dtype -> float16", dtype="float16"))
    # Fewer heads: fewer KV heads at the same GQA ratio, then a smaller ratio.
    ratio = c.num_q_heads // c.num_kv_heads
    for kv in sorted({1, c.num_kv_heads // 2}):
        if 1 <= kv < c.num_kv_heads:
            out.append(with_case(f"kv heads {c.num_kv_heads} -> {kv}", num_kv_heads=kv, num_q_heads=kv * ratio))
    for r in sorted({1, ratio // 2, ratio - 1}):
        if 1 <= r < ratio:
            out.append(with_case(f"GQA ratio {ratio} -> {r}", num_q_heads=c.num_kv_heads * r))
    # Smaller head size.
    for d in HEAD_SIZES:
        if d < c.head_size:
            out.append(with_case(f"head size {c.head_size} -> {d}", head_size=d))
    # Fewer segments (3D).
    if path != "2d" and c.num_segments is not None:
        for s in sorted({1, 2, c.num_segments // 2, c.num_segments - 1}):
            if 1 <= s < c.num_segments:
                out.append(with_case(f"segments {c.num_segments} -> {s}", num_segments=s))
    # Shorter sequences and fewer query tokens.
    if any(q > 1 for q in c.query_lens):
        out.append(with_case("every query length -> 1 (decode)", query_lens=tuple(min(q, 1) for q in c.query_lens)))
    for i in range(n):
        for m in _shorter(c.seq_lens[i], 1):
            q = min(c.query_lens[i], m)
            out.append(with_case(f"seq {i} length {c.seq_lens[i]} -> {m}",
                                 seq_lens=c.seq_lens[:i] + (m,) + c.seq_lens[i + 1:],
                                 query_lens=c.query_lens[:i] + (q,) + c.query_lens[i + 1:]))
        for m in _shorter(c.query_lens[i], 0):
            out.append(with_case(f"seq {i} query length {c.query_lens[i]} -> {m}",
                                 query_lens=c.query_lens[:i] + (m,) + c.query_lens[i + 1:]))
    for item in out:
        if item is not None and _valid(item[1].case):
            yield item


@dataclass
class ShrinkResult:
    trial: Trial
    steps: list  # descriptions of the accepted simplifications
    trials: int  # predicate evaluations
    exhausted: bool  # stopped by the budget rather than at a local minimum


def shrink(start: Trial, still_fails: Callable[[Trial], bool], max_trials: int = 200,
           log: Callable[[str], None] = lambda s: None) -> ShrinkResult:
    """Greedy shrink: accept the first simplification that still fails, repeat until none does."""
    current, steps, count = start, [], 0
    seen = {start}
    improved = True
    while improved:
        improved = False
        for text, candidate in candidates(current):
            if candidate in seen:
                continue
            if count >= max_trials:
                return ShrinkResult(current, steps, count, True)
            seen.add(candidate)
            count += 1
            if still_fails(candidate):
                log(f"  [{count:>3}] still fails: {text}")
                steps.append(text)
                current = candidate
                improved = True
                break
    return ShrinkResult(current, steps, count, False)


# ---------------------------------------------------------------------------------------------
# Wiring to the real implementation (needs attention_suite.device.setup first).


def start_from_file(file: str):
    from attention_suite import case_from_dict, repro

    payload = repro.load(file)
    case = case_from_dict(payload["case"])
    segments = (payload.get("run_kwargs") or {}).get("num_segments")
    if segments is not None:
        case = case.with_(num_segments=segments)
    return payload, Trial(case, payload["path"])


def make_predicate(impl, device: str, seed: int, poison: bool, workspace: dict | None, poison_workspace: bool,
                   batch_invariant: bool, expect_error: str | None):
    """``Trial -> still fails``; the trial's outcome is kept in ``predicate.last``."""
    from attention_suite import build, reference_pair
    from attention_suite import device as suite_device

    from .replay import run_kwargs_for, run_once

    def predicate(trial: Trial) -> bool:
        case = trial.case
        if impl.missing_feature(case) or impl.path_unsupported(trial.path, case):
            return False
        if not all(suite_device.dtype_usable(d) for d in (case.dtype, case.kv_dtype, case.out_dtype)):
            return False
        inputs = build(case, device, seed, poison=poison)
        golden = reference_pair(case, device, seed)
        kwargs = run_kwargs_for(impl, inputs, trial.path, {"batch_invariant": batch_invariant or None},
                                workspace, poison_workspace)
        outcome = run_once(impl, inputs, trial.path, kwargs, golden)
        predicate.last = (trial, inputs, outcome)
        if outcome.error is not None:
            # An exception only reproduces an exception of the same kind (a rejected argument is not the bug).
            return expect_error is not None and outcome.error.strip().splitlines()[-1].split(":")[0] == expect_error
        return not outcome.verdict.passed

    predicate.last = None
    return predicate


def minimize(*, device: str, impl_spec: str | None, file: str | None = None, case_name: str | None = None,
             path: str = "auto", seed: int = 0, poison: bool = False, poison_workspace: bool = False,
             max_trials: int = 200, out_dir: str | None = None, mutant: str | None = None, printer=print) -> int:
    """Minimize a reproducer file (or a named table case); returns 0 when a failing minimum was found."""
    from types import SimpleNamespace

    from attention_suite import Implementation, repro, tables

    from .replay import case_literal, error_table, rebuild

    workspace = None
    batch_invariant = False
    if file:
        payload, start = start_from_file(file)
        seed = payload["seed"]
        rebuilt = rebuild(payload, device)
        poison = bool(rebuilt.poison)
        workspace = payload.get("workspace")
        batch_invariant = bool((payload.get("run_kwargs") or {}).get("batch_invariant"))
        impl = Implementation.load(impl_spec or payload["impl"])
        nodeid = payload.get("nodeid") or file
    else:
        start = Trial(tables.find(case_name), path)
        impl = Implementation.load(impl_spec or "paged_kernels:unified_attention")
        nodeid = f"table case {case_name}"
    probe = make_predicate(impl, device, seed, poison, workspace, poison_workspace, batch_invariant, None)
    if not probe(start):
        last = probe.last
        why = last[2].summary() if last else "skipped on this device/implementation"
        printer(f"the starting case does not fail here ({why}); nothing to minimize")
        return 2
    first_error = probe.last[2].error
    expect_error = first_error.strip().splitlines()[-1].split(":")[0] if first_error else None
    predicate = make_predicate(impl, device, seed, poison, workspace, poison_workspace, batch_invariant, expect_error)
    printer(f"minimizing {nodeid} on {device} with {impl.spec}" + (f" (mutant {mutant})" if mutant else ""))
    printer(f"  start: {start.describe()}")
    printer(f"         {probe.last[2].summary()}")
    result = shrink(start, predicate, max_trials=max_trials, log=printer)
    final = result.trial
    predicate(final)  # leave the final outcome in predicate.last
    _, inputs, outcome = predicate.last
    printer(f"\nsmallest failing case after {result.trials} trials ({len(result.steps)} simplifications"
            + (", budget exhausted" if result.exhausted else ", no single simplification still fails") + "):")
    printer(f"  {final.describe()}")
    named = final.case.with_(label=f"{start.case.label}-min")
    printer(f"  {case_literal(named)}")
    printer(f"  {outcome.summary()}")
    others = []
    for other in ("2d", "3d"):
        if other != final.path:
            fails = predicate(Trial(final.case, other))
            others.append(f"{other}: {'fails' if fails else 'passes'}")
    printer(f"  via {final.path}: fails; " + "; ".join(others))
    if outcome.error is None:
        printer(error_table(inputs, outcome, top=10))
    target_dir = out_dir or (os.path.dirname(os.path.abspath(file)) if file else ".")
    ctx = SimpleNamespace(impl=impl, nodeid=f"minimized from {nodeid}", repro_dir=target_dir)
    inputs = replace(inputs, case=named)
    if outcome.error is None:
        saved = repro.save(ctx, inputs, final.path, outcome.verdict, {"num_segments": named.num_segments,
                                                                      "batch_invariant": batch_invariant or None})
        printer(f"\nminimized reproducer: {saved}")
        printer(f"rerun: python -m triage replay {saved} --device {device}")
    return 0
