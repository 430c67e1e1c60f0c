"""Build a case, run the implementation, compare: the three lines every test body needs.

Failures carry everything needed to act on them: the case, the path, the seed, the errors and
allowances, how to rerun exactly that test, and (with ``--repro-dir``) a reproducer file that
``python -m triage replay FILE`` replays on any device.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

import reference

from . import repro
from .cases import Case, Inputs, build
from .tolerance import Verdict, as_values, judge


@dataclass
class Context:
    """Per-test context given by the ``ctx`` fixture."""

    nodeid: str
    device: str
    seed: int
    impl: object
    repro_dir: str | None = None
    records: list = field(default_factory=list)  # (case name, path, ratio) for the error report

    def rerun_hint(self) -> str:
        return f"rerun: pytest '{self.nodeid}' (seed {self.seed}, device {self.device}, impl {self.impl.spec})"


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN payloads included), whatever the strides."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def _reference_runs(inputs: Inputs):
    """(golden, baseline, golden log-sum-exp, baseline log-sum-exp): the reference in float64 and in
    the inputs' own dtype, as float64 values of the rows the call writes (fp8 output dequantized);
    the log-sum-exps are None unless the case asks for them."""
    rows = inputs.num_tokens_used
    outs, lses = [], []
    for precision in ("float64", "native"):
        dtype = torch.float64 if precision == "float64" else inputs.out.dtype
        out = torch.zeros(inputs.q.shape, dtype=dtype, device=inputs.q.device)
        kwargs = inputs.call_kwargs()
        if inputs.softmax_lse is not None:  # the reference writes its own; inputs.softmax_lse is the call's
            kwargs["softmax_lse"] = torch.full(inputs.softmax_lse.shape, float("nan"), device=out.device,
                                               dtype=torch.float64 if precision == "float64" else torch.float32)
            lses.append(kwargs["softmax_lse"])
        reference.unified_attention(*inputs.call_args(out), **kwargs, precision=precision)
        outs.append(as_values(out[:rows], inputs.output_scale if precision == "native" else None))
    golden, baseline = outs
    if inputs.output_scale is not None and inputs.out.element_size() == 1:
        # fp8 output saturates at the format's largest value by contract (as the baseline does):
        # judge the saturated entries as exact, and the rest by the rule.
        top = torch.finfo(inputs.out.dtype).max * float(inputs.output_scale.reshape(()))
        golden = golden.clamp(-top, top)
    lse_golden, lse_baseline = (lse[:rows].double() for lse in lses) if lses else (None, None)
    return golden, baseline, lse_golden, lse_baseline


def reference_outputs(inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(golden, baseline) of ``inputs`` (see ``_reference_runs``)."""
    return _reference_runs(inputs)[:2]


@functools.lru_cache(maxsize=64)
def _reference_of_case(case: Case, device: str, seed: int):
    # Every path shares it; poisoned builds have the same visible data, so the same results.
    return _reference_runs(build(case, device, seed))


def reference_pair(case: Case, device: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference_outputs`` of the clean build of a case (cached)."""
    return _reference_of_case(case, device, seed)[:2]


def reference_lse(case: Case, device: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(golden, baseline) log-sum-exp ``[rows, num_q_heads]`` of a case that asks for it, as float64 (cached)."""
    return _reference_of_case(case, device, seed)[2:]


def judge_lse(inputs: Inputs) -> Verdict:
    """The rule on the log-sum-exp the call wrote; a row that sees nothing must be exactly -inf."""
    golden, baseline = reference_lse(inputs.case, str(inputs.q.device), inputs.seed)
    actual = inputs.softmax_lse[:inputs.num_tokens_used].double()
    empty = torch.isneginf(golden)
    if not torch.equal(torch.isneginf(actual), empty):
        wrong = int((torch.isneginf(actual) != empty).sum())
        return Verdict(False, float("inf"), float("inf"), 0.0, 0.0, wrong)
    zero = torch.zeros_like(golden)
    return judge(torch.where(empty, zero, actual), torch.where(empty, zero, golden),
                 torch.where(empty, zero, baseline), torch.float32)


def compare(inputs: Inputs, out: torch.Tensor) -> Verdict:
    golden, baseline = reference_pair(inputs.case, str(inputs.q.device), inputs.seed)
    rows = inputs.num_tokens_used
    verdict = judge(as_values(out[:rows], inputs.output_scale), golden, baseline, out.dtype)
    if inputs.softmax_lse is not None and verdict.passed:
        lse_verdict = judge_lse(inputs)
        if not lse_verdict.passed:
            return lse_verdict.named("softmax_lse")
    return verdict


def skip_if_unsupported(impl, case: Case, path: str) -> None:
    """Skip (with the reason) what the implementation's signature cannot express."""
    import pytest

    reason = impl.missing_feature(case) or impl.path_unsupported(path, case)
    if reason:
        pytest.skip(reason)


def run_case(ctx: Context, case: Case, path: str = "auto", *, poison: bool = False, **run_kwargs):
    """Build and run; returns (inputs, out)."""
    inputs = build(case, ctx.device, ctx.seed, poison=poison)
    out = ctx.impl.run(inputs, path, **run_kwargs)
    return inputs, out


def assert_untouched_padding(inputs: Inputs, out: torch.Tensor) -> None:
    rows = inputs.num_tokens_used
    assert same_bits(out[rows:], inputs.out[rows:]), (
        f"rows past the last sequence ({rows}..{out.shape[0]}) were written; they must stay untouched")


def check_against_reference(ctx: Context, case: Case, path: str = "auto", *, poison: bool = False, **run_kwargs):
    """The numerics check: run ``case`` through ``path`` and apply the tolerance rule."""
    inputs, out = run_case(ctx, case, path, poison=poison, **run_kwargs)
    verdict = compare(inputs, out)
    ctx.records.append((case.name, path, verdict.ratio))
    if not verdict.passed:
        saved = repro.save(ctx, inputs, path, verdict, run_kwargs) if ctx.repro_dir else None
        where = f"\nreproducer: {saved} (replay: python -m triage replay {saved})" if saved else ""
        raise AssertionError(f"{case.name} via {path}: {verdict.message()}\n{ctx.rerun_hint()}{where}")
    assert_untouched_padding(inputs, out)
    return inputs, out


def split_workspace(inputs: Inputs, num_segments: int | None = None, fill: float | None = float("nan"),
                    max_num_tokens: int | None = None):
    """A ``paged_kernels.Workspace`` for the 3D path of ``inputs``: ``num_segments`` (default: the planner's
    choice for this call), at least ``max_num_tokens`` rows, filled with ``fill`` (NaN by default,
    so a read of a segment nobody wrote fails every time; None leaves it uninitialized, for the
    sanitizer's initcheck)."""
    import paged_kernels

    if num_segments is None:
        num_segments = paged_kernels.make_plan(inputs.q, inputs.k, inputs.cu_seqlens_q, inputs.max_seqlen_q,
                                         inputs.max_seqlen_k, split_kv=True).num_segments
    case = inputs.case
    tokens = max(max_num_tokens or 0, inputs.q.shape[0])
    workspace = paged_kernels.Workspace(tokens, case.num_q_heads, case.head_size, num_segments, inputs.q.device)
    return workspace if fill is None else workspace.fill_(fill)


def check_poison_free(ctx: Context, case: Case, path: str = "auto") -> None:
    """The poison check: the poisoned run passes the numerics rule and equals the clean run bit for bit.

    On our 3D path the workspace is NaN-filled too (vLLM-style buffers are poisoned by the adapter)."""
    extra = {}
    if path == "3d" and ctx.impl.style == "split_kv" and "workspace" in ctx.impl.params:
        segments = case.num_segments or 4
        extra = {"workspace": split_workspace(build(case, ctx.device, ctx.seed), segments), "num_segments": segments}
    _, poisoned = check_against_reference(ctx, case, path, poison=True, **extra)
    clean_kwargs = {"num_segments": extra["num_segments"]} if extra else {}
    clean_inputs, clean = run_case(ctx, case, path, **clean_kwargs)
    rows = clean_inputs.num_tokens_used
    assert same_bits(poisoned[:rows], clean[:rows]), f"{case.name} via {path}: output depends on poisoned memory"
