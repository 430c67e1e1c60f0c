"""The main job: verify an implementation against the reference over the case tables, no pytest needed.

    python -m attention_suite.verify [--impl MODULE:FUNC] [--tiers quick,numerics,...] [--full] [--device cpu|cuda]
    attn-verify ...                  (the same, as an installed command)

Prints one line per case as it finishes (with the time left), one per failing run, then a
per-tier table (runs, passed, skipped, worst error ratio, seconds) and the total time; exits 1
when anything fails. Without a GPU the kernels run through the Triton interpreter (set up here,
before triton is imported), so the default there is the quick tier: a cross-section of every
table that finishes in a few minutes; ``--full`` runs every table.
"""

from __future__ import annotations

import argparse
import sys
import time

from . import device as suite_device

# The case tables by name (``tables.TABLES``, which imports torch; a harness test keeps the two equal).
TIER_NAMES = ("quick", "cross_section", "numerics", "features", "edge", "poison", "layout")
FULL_TIERS = ("cross_section", "numerics", "features", "edge", "poison", "layout")
CPU_DEFAULT_TIERS = ("quick",)
CPU_DEFAULT_REASON = ("the Triton interpreter runs every tile in Python, so the full tables take ~25 minutes on "
                      "2 cores; quick is their cross-section (every feature, dtype, layout and size class)")


def _tier_list(text: str) -> tuple[str, ...]:
    tiers = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in tiers if t not in TIER_NAMES]
    if unknown or not tiers:
        raise argparse.ArgumentTypeError(f"unknown tier(s) {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {', '.join(TIER_NAMES)}")
    return tiers


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m attention_suite.verify", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--impl", default="paged_kernels:unified_attention",
                        help="implementation under test, MODULE:FUNC or path/to/file.py:FUNC")
    tiers = parser.add_mutually_exclusive_group()
    tiers.add_argument("--tiers", type=_tier_list, default=None,
                       help=f"comma-separated case tables: {', '.join(TIER_NAMES)} (features: every semantic "
                            f"feature on mixed and decode batches). Default: {','.join(CPU_DEFAULT_TIERS)} on CPU, "
                            f"{','.join(FULL_TIERS)} on a GPU")
    tiers.add_argument("--full", action="store_true", help=f"run every table ({','.join(FULL_TIERS)})")
    parser.add_argument("--device", default="auto", choices=suite_device.CHOICES,
                        help="cpu runs the kernels in the Triton interpreter; auto picks cuda when available")
    parser.add_argument("--seed", type=int, default=1234, help="seed of every case's inputs")
    return parser


def _skip_reason(impl, case, path) -> str | None:
    if not suite_device.dtype_usable(case.dtype) or not suite_device.dtype_usable(case.out_dtype):
        return "dtype not usable on the interpreter"
    return impl.missing_feature(case) or impl.path_unsupported(path, case)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """One line per case: position, tier, case, its outcome and the time left at the pace so far."""

    def __init__(self, total_runs: int, total_cases: int, stream=sys.stdout):
        self.total_runs, self.total_cases, self.stream = total_runs, total_cases, stream
        self.runs_done = self.cases_done = 0
        self.start = time.time()

    def case_done(self, tier: str, name: str, runs: int, failed: int) -> None:
        self.runs_done += runs
        self.cases_done += 1
        elapsed = time.time() - self.start
        left = elapsed / self.runs_done * (self.total_runs - self.runs_done) if self.runs_done else 0.0
        width = len(str(self.total_cases))
        outcome = "FAIL" if failed else ("ok" if runs else "skipped")
        print(f"[{self.cases_done:>{width}}/{self.total_cases}] {tier:<8} {name:<60} {outcome:<7} "
              f"{_duration(elapsed)} elapsed, ~{_duration(left)} left", file=self.stream, flush=True)


def run_tier(tier: str, impl, device: str, seed: int, printer=print, progress: Progress | None = None) -> tuple:
    """(runs, passed, skipped, worst ratio, failures) of one table through every path."""
    from . import tables
    from .check import Context, check_against_reference, check_poison_free

    runs = passed = skipped = 0
    worst, failures = 0.0, 0
    for case in tables.TABLES[tier]():
        case_runs = case_failures = 0
        for path in tables.PATHS:
            if _skip_reason(impl, case, path):
                skipped += 1
                continue
            ctx = Context(f"verify::{tier}::{case.name}::{path}", device, seed, impl)
            runs += 1
            case_runs += 1
            try:
                if tier == "poison":
                    check_poison_free(ctx, case, path)
                else:
                    check_against_reference(ctx, case, path)
                passed += 1
            except (AssertionError, NotImplementedError) as exc:
                failures += 1
                case_failures += 1
                printer(f"FAIL {tier} {case.name} {path}: {str(exc).splitlines()[0]}")
            worst = max([worst] + [r for _, _, r in ctx.records])
        if progress is not None:
            progress.case_done(tier, case.name, case_runs, case_failures)
    return runs, passed, skipped, worst, failures


def planned(tiers, impl) -> tuple[int, int]:
    """(runs, cases) the tiers will make: the denominator of the progress lines."""
    from . import tables

    runs = cases = 0
    for tier in tiers:
        for case in tables.TABLES[tier]():
            cases += 1
            runs += sum(_skip_reason(impl, case, path) is None for path in tables.PATHS)
    return runs, cases


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from .impl import Implementation, ImplSpecError, split_spec

    try:
        split_spec(args.impl)  # the form, the file, the module: before the device set-up's heavy imports
        device = suite_device.setup(args.device)
        impl = Implementation.load(args.impl)
    except ImplSpecError as exc:
        print(f"{parser.prog}: error: --impl {args.impl}: {exc}", file=sys.stderr)
        return 2
    if args.full:
        tiers, why = FULL_TIERS, "--full"
    elif args.tiers:
        tiers, why = args.tiers, "--tiers"
    elif device == "cpu":
        tiers, why = CPU_DEFAULT_TIERS, f"default on CPU: {CPU_DEFAULT_REASON}; --full runs every table"
    else:
        tiers, why = FULL_TIERS, "default on a GPU"
    start = time.time()
    total_runs, total_cases = planned(tiers, impl)
    print(f"verifying {impl.spec} on {device} ({suite_device.interpreter_status()})\n"
          f"tiers {', '.join(tiers)} ({why}): {total_cases} cases, {total_runs} runs", flush=True)
    progress = Progress(total_runs, total_cases)
    rows, failed = [], 0
    for tier in tiers:
        tier_start = time.time()
        runs, passed, skipped, worst, failures = run_tier(tier, impl, device, args.seed,
                                                          printer=lambda line: print(line, flush=True),
                                                          progress=progress)
        failed += failures
        rows.append((tier, runs, passed, skipped, worst, time.time() - tier_start))
    print(f"\n{'tier':<10}{'runs':>6}{'passed':>8}{'skipped':>9}{'worst ratio':>13}{'seconds':>9}")
    for tier, runs, passed, skipped, worst, secs in rows:
        print(f"{tier:<10}{runs:>6}{passed:>8}{skipped:>9}{worst:>13.3f}{secs:>9.1f}")
    print(f"total time {_duration(time.time() - start)}")
    print("PASS" if failed == 0 else f"FAIL: {failed} runs failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
