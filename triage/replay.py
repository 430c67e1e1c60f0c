"""Replay a reproducer file: rebuild the inputs, rerun the call, print where the error is.

The inputs are rebuilt from the stored case + seed (so the memory layout is the original's)
and checked bit for bit against the tensors stored in the file; when neither the clean nor
the poisoned rebuild matches (the case builder changed since the file was written), the
stored tensors are used as they are. Call ``attention_suite.device.setup`` before anything here runs.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, fields

import torch

from attention_suite import (DTYPES, Case, Inputs, Verdict, as_values, build, case_from_dict, judge,
                             reference_outputs, reference_pair, same_bits, split_workspace)
from attention_suite import device as suite_device
from attention_suite import repro


def case_literal(case: Case) -> str:
    """``Case(...)`` source with only the fields that differ from the defaults."""
    defaults = {f.name: f.default for f in fields(Case) if f.default is not f.default_factory}
    parts = [f"label={case.label!r}", f"seq_lens={case.seq_lens!r}", f"query_lens={case.query_lens!r}"]
    for f in fields(Case):
        if f.name in ("label", "seq_lens", "query_lens"):
            continue
        value = getattr(case, f.name)
        if f.name in defaults and value == defaults[f.name]:
            continue
        parts.append(f"{f.name}={value!r}")
    return "Case(" + ", ".join(parts) + ")"


# ---------------------------------------------------------------------------------------------
# Inputs


def _matches(inputs: Inputs, stored: dict) -> bool:
    for name in repro.TENSOR_FIELDS:
        mine, theirs = getattr(inputs, name), stored.get(name)
        if (mine is None) != (theirs is None):
            return False
        if mine is not None and not same_bits(mine.detach().cpu().contiguous(), theirs):
            return False
    return True


def _from_stored(case: Case, payload: dict, device: str) -> Inputs:
    # Files written before a tensor field existed lack it: None (the feature was off).
    t = {k: (None if v is None else v.to(device)) for k, v in payload["tensors"].items()}
    t.update({k: None for k in repro.TENSOR_FIELDS if k not in t})
    out_dtype = DTYPES[case.out_dtype or case.dtype]
    out = torch.full(t["q"].shape, float("nan") if out_dtype.is_floating_point else 0, dtype=out_dtype, device=device)
    return Inputs(case=case, q=t["q"], k=t["k"], v=t["v"], out=out, cu_seqlens_q=t["cu_seqlens_q"],
                  seqused_k=t["seqused_k"], block_table=t["block_table"], softmax_scale=payload["softmax_scale"],
                  k_descale=t["k_descale"], v_descale=t["v_descale"], alibi_slopes=t["alibi_slopes"],
                  sinks=t["sinks"], output_scale=t["output_scale"], seed=payload["seed"],
                  mm_prefix_range=t["mm_prefix_range"], k_scale_cache=t["k_scale_cache"],
                  v_scale_cache=t["v_scale_cache"], q_descale=t["q_descale"])


@dataclass
class Rebuilt:
    inputs: Inputs
    poison: bool | None  # None: stored tensors used as they are
    how: str


def rebuild(payload: dict, device: str) -> Rebuilt:
    case = case_from_dict(payload["case"])
    seed = payload["seed"]
    for poison in (False, True):
        try:
            inputs = build(case, device, seed, poison=poison)
        except Exception as exc:  # the builder changed incompatibly: fall back to the stored tensors
            return Rebuilt(_from_stored(case, payload, device), None, f"stored tensors (rebuild raised {exc!r})")
        if _matches(inputs, payload["tensors"]):
            return Rebuilt(inputs, poison, f"rebuilt from case + seed {seed}{' with poison' if poison else ''}, "
                                           "identical to the stored tensors")
    return Rebuilt(_from_stored(case, payload, device), None,
                   "stored tensors (rebuilding from case + seed gave different tensors: the builder changed)")


def golden_pair(inputs: Inputs, rebuilt_poison: bool | None):
    """(golden float64, baseline native) of the rows the call writes."""
    if rebuilt_poison is not None:  # the clean twin of these inputs is buildable: reuse the suite's cache
        return reference_pair(inputs.case, str(inputs.q.device), inputs.seed)
    return reference_outputs(inputs)


# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class Outcome:
    verdict: Verdict | None
    out: torch.Tensor | None
    golden: torch.Tensor | None
    baseline: torch.Tensor | None
    error: str | None = None  # the implementation raised

    @property
    def failed(self) -> bool:
        return self.error is not None or not self.verdict.passed

    def summary(self) -> str:
        if self.error is not None:
            return f"raised {self.error.strip().splitlines()[-1]}"
        return self.verdict.message()


def run_kwargs_for(impl, inputs: Inputs, path: str, run_kwargs: dict, workspace: dict | None,
                   poison_workspace: bool) -> dict:
    """Keyword arguments for ``impl.run``. With ``poison_workspace`` (the default of replay and minimize)
    the 3D path gets a NaN-filled workspace: a correct kernel never reads an entry it did not write,
    and NaN makes a bug that does fail every time, where uninitialized memory fails at random."""
    kwargs = {k: v for k, v in (run_kwargs or {}).items() if v is not None}
    if path == "3d" and (workspace or poison_workspace) and impl.style == "split_kv" and "workspace" in impl.params:
        segments = kwargs.get("num_segments") or (workspace or {}).get("num_segments") or inputs.case.num_segments
        kwargs["workspace"] = split_workspace(inputs, segments, max_num_tokens=(workspace or {}).get("max_num_tokens"))
    return kwargs


def run_once(impl, inputs: Inputs, path: str, kwargs: dict, golden_pair) -> Outcome:
    golden, baseline = golden_pair
    try:
        out = impl.run(inputs, path, **kwargs)
    except Exception:
        return Outcome(None, None, golden, baseline, error=traceback.format_exc())
    if out.is_cuda:
        torch.cuda.synchronize()
    rows = inputs.num_tokens_used
    actual = as_values(out[:rows], inputs.output_scale)
    return Outcome(judge(actual, golden, baseline, out.dtype), actual, golden, baseline)


# ---------------------------------------------------------------------------------------------
# Report


def _seq_of_token(case: Case):
    """token -> (sequence, position in the sequence's keys) for every row the call writes."""
    mapping = []
    for seq, (seq_len, q_len) in enumerate(zip(case.seq_lens, case.query_lens)):
        for i in range(q_len):
            mapping.append((seq, seq_len - q_len + i))
    return mapping


def error_table(inputs: Inputs, outcome: Outcome, top: int = 20) -> str:
    """Per-(token, head) max abs error, worst first, plus per-sequence and per-head summaries."""
    case = inputs.case
    err = (outcome.out - outcome.golden).abs().nan_to_num(nan=math.inf, posinf=math.inf)  # [rows, heads, dim]
    nonfinite = (~torch.isfinite(outcome.out) & torch.isfinite(outcome.golden)).sum(-1)
    base = (outcome.baseline - outcome.golden).abs().amax(-1)
    per = err.amax(-1).cpu()
    allowed = outcome.verdict.allowed_max
    group = case.num_q_heads // case.num_kv_heads
    where = _seq_of_token(case)
    lines = []
    if per.numel() == 0:
        return "no rows to compare (the call writes nothing)"
    order = torch.argsort(per.flatten(), descending=True, stable=True)
    over = int((per > allowed).sum())
    lines.append(f"{over} of {per.numel()} (token, head) rows exceed the allowed max error {allowed:.3e}; "
                 f"worst {min(top, per.numel())}:")
    lines.append(f"{'token':>6} {'seq':>4} {'pos':>6} {'head':>5} {'kv':>3} {'max_err':>11} {'baseline':>10} "
                 f"{'ratio':>10} {'nonfin':>6}")
    for flat in order[:top].tolist():
        tok, head = divmod(flat, per.shape[1])
        value = float(per[tok, head])
        if value == 0.0:
            break
        seq, pos = where[tok]
        ratio = value / allowed if allowed > 0 else math.inf
        lines.append(f"{tok:>6} {seq:>4} {pos:>6} {head:>5} {head // group:>3} {value:>11.3e} "
                     f"{float(base[tok, head]):>10.3e} {ratio:>10.3g} {int(nonfinite[tok, head]):>6}")
    lines.append("")
    lines.append("per sequence (rows over the allowance / rows, worst error):")
    for seq, (seq_len, q_len) in enumerate(zip(case.seq_lens, case.query_lens)):
        toks = [t for t, (s, _) in enumerate(where) if s == seq]
        if not toks:
            lines.append(f"  seq {seq}: seq_len {seq_len}, q_len 0 (no rows)")
            continue
        block = per[toks]
        lines.append(f"  seq {seq}: seq_len {seq_len:>5}, q_len {q_len:>4}: {int((block > allowed).sum()):>5}/"
                     f"{block.numel():<5} worst {float(block.max()):.3e}")
    lines.append("per query head (rows over the allowance / rows, worst error):")
    heads = per.amax(0)
    counts = (per > allowed).sum(0)
    lines.append("  " + "  ".join(f"h{h}(kv{h // group}): {int(counts[h])}/{per.shape[0]} {float(heads[h]):.2e}"
                                  for h in range(per.shape[1])))
    return "\n".join(lines)


def diagnosis(outcome: Outcome) -> str:
    if outcome.error is not None:
        return "the implementation raised: a kernel or launch bug, not a tolerance question"
    v = outcome.verdict
    if v.passed:
        return "passes now: the failure does not reproduce with this implementation on this device"
    if v.nonfinite:
        return f"{v.nonfinite} non-finite values where the golden is finite: a kernel bug (NaN/Inf leaked), not tolerance"
    if v.ratio < 4:
        return (f"ratio {v.ratio:.3g} is within 4x of the allowance: look at the tolerance rule and the baseline "
                "error before blaming the kernel")
    return f"ratio {v.ratio:.3g}: far beyond rounding, a kernel bug"


def _versions_line(payload: dict) -> str:
    then = payload.get("versions", {})
    now = repro.versions()
    parts = []
    for key in ("torch", "triton", "device"):
        a, b = then.get(key), now.get(key)
        parts.append(f"{key} {a}" + ("" if a == b else f" (now {b})"))
    return ", ".join(parts)


def replay(file: str, *, device: str, impl_spec: str | None = None, path: str | None = None, top: int = 20,
           all_paths: bool = False, poison_workspace: bool = False, mutant: str | None = None,
           printer=print) -> int:
    """Replay ``file``; prints the report and returns 1 when the failure reproduces, 0 when it passes,
    2 when the recorded path cannot run with this implementation."""
    from attention_suite import Implementation

    payload = repro.load(file)
    impl = Implementation.load(impl_spec or payload["impl"])
    rebuilt = rebuild(payload, device)
    inputs = rebuilt.inputs
    case = inputs.case
    recorded = payload.get("error", {})
    printer(f"reproducer: {file}")
    printer(f"  test:      {payload.get('nodeid')}")
    printer(f"  case:      {case_literal(case)}")
    printer(f"  seed {payload['seed']}, path {payload['path']}, run kwargs {payload.get('run_kwargs') or {}}"
            + (f", workspace {payload['workspace']}" if payload.get("workspace") else ""))
    printer(f"  recorded:  impl {payload.get('impl')}, mutant {payload.get('mutant')}, {_versions_line(payload)}")
    printer(f"  recorded error: max {recorded.get('max', float('nan')):.3e} (allowed {recorded.get('allowed_max', 0):.3e}), "
            f"mean {recorded.get('mean', float('nan')):.3e} (allowed {recorded.get('allowed_mean', 0):.3e}), "
            f"non-finite {recorded.get('nonfinite')}")
    printer(f"  replaying: impl {impl.spec} (kernels from {suite_device.kernels_file()}), mutant {mutant}, device {device}"
            + (f" [{suite_device.interpreter_status()}]" if device == "cpu" else ""))
    printer(f"  inputs:    {rebuilt.how}; 3D workspace: "
            + ("NaN-filled" if poison_workspace or payload.get("workspace") else "allocated by the implementation"))
    pair = golden_pair(inputs, rebuilt.poison)
    paths = [path or payload["path"]]
    if all_paths:
        paths += [p for p in ("2d", "3d", "auto") if p not in paths]
    status = 0
    for index, p in enumerate(paths):
        reason = impl.missing_feature(case) or impl.path_unsupported(p, case)
        if reason:
            printer(f"\npath {p}: skipped ({reason})")
            if index == 0:
                status = 2
            continue
        kwargs = run_kwargs_for(impl, inputs, p, payload.get("run_kwargs"), payload.get("workspace"), poison_workspace)
        outcome = run_once(impl, inputs, p, kwargs, pair)
        printer(f"\npath {p}: {'FAIL' if outcome.failed else 'pass'}: {outcome.summary()}")
        if outcome.error is not None:
            printer(outcome.error.rstrip())
        elif index == 0:
            printer(error_table(inputs, outcome, top))
        if index == 0:
            printer(f"diagnosis: {diagnosis(outcome)}")
            status = 1 if outcome.failed else 0
    return status
