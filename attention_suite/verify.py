"""The main job: verify an implementation against the reference over every case table, no pytest needed.

    python -m attention_suite.verify [--impl MODULE:FUNC] [--tiers numerics,features,...] [--device cpu|cuda]
    attn-verify ...                  (the same, as an installed command)

Prints a line per tier as it finishes (and one per failing run), then a per-tier table (runs,
passed, skipped, worst error ratio, seconds); exits 1 when anything fails. Without a GPU the
kernels run through the Triton interpreter (set up here, before triton is imported).
"""

from __future__ import annotations

import argparse
import sys
import time

from . import device as suite_device

# The tables the main job runs by default, and what each checks.
DEFAULT_TIERS = ("numerics", "features", "edge", "poison", "layout")


def _tier_list(text: str) -> list[str]:
    from .tables import TABLES

    tiers = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tiers if t not in TABLES]
    if unknown or not tiers:
        raise argparse.ArgumentTypeError(f"unknown tier(s) {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {', '.join(TABLES)}")
    return tiers


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m attention_suite.verify", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--impl", default="paged_kernels:unified_attention",
                        help="implementation under test, MODULE:FUNC or path/to/file.py:FUNC")
    parser.add_argument("--tiers", type=_tier_list, default=",".join(DEFAULT_TIERS),
                        help="comma-separated case tables: quick, numerics, features (every semantic feature on "
                             "mixed and decode batches), edge, poison, layout")
    parser.add_argument("--device", default="auto", choices=suite_device.CHOICES,
                        help="cpu runs the kernels in the Triton interpreter; auto picks cuda when available")
    parser.add_argument("--seed", type=int, default=1234, help="seed of every case's inputs")
    return parser


def run_tier(tier: str, impl, device: str, seed: int, printer=print) -> tuple:
    """(runs, passed, skipped, worst ratio, failures) of one table through every path."""
    from . import tables
    from .check import Context, check_against_reference, check_poison_free

    runs = passed = skipped = 0
    worst, failures = 0.0, 0
    for case in tables.TABLES[tier]():
        for path in tables.PATHS:
            if impl.missing_feature(case) or impl.path_unsupported(path, case) or not suite_device.dtype_usable(
                    case.dtype) or not suite_device.dtype_usable(case.out_dtype):
                skipped += 1
                continue
            ctx = Context(f"verify::{tier}::{case.name}::{path}", device, seed, impl)
            runs += 1
            try:
                if tier == "poison":
                    check_poison_free(ctx, case, path)
                else:
                    check_against_reference(ctx, case, path)
                passed += 1
            except (AssertionError, NotImplementedError) as exc:
                failures += 1
                printer(f"FAIL {tier} {case.name} {path}: {str(exc).splitlines()[0]}")
            worst = max([worst] + [r for _, _, r in ctx.records])
    return runs, passed, skipped, worst, failures


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    tiers = args.tiers  # argparse applies _tier_list to the default too
    device = suite_device.setup(args.device)

    from .impl import Implementation

    impl = Implementation.load(args.impl)
    print(f"verifying {impl.spec} on {device} ({suite_device.interpreter_status()}); tiers {', '.join(tiers)}",
          flush=True)
    rows, failed = [], 0
    for tier in tiers:
        start = time.time()
        runs, passed, skipped, worst, failures = run_tier(tier, impl, device, args.seed,
                                                          printer=lambda line: print(line, flush=True))
        seconds = time.time() - start
        failed += failures
        rows.append((tier, runs, passed, skipped, worst, seconds))
        print(f"  {tier}: {passed}/{runs} passed, {skipped} skipped, worst ratio {worst:.3f}, {seconds:.0f} s",
              flush=True)
    print(f"\n{'tier':<10}{'runs':>6}{'passed':>8}{'skipped':>9}{'worst ratio':>13}{'seconds':>9}")
    for tier, runs, passed, skipped, worst, secs in rows:
        print(f"{tier:<10}{runs:>6}{passed:>8}{skipped:>9}{worst:>13.3f}{secs:>9.1f}")
    print("PASS" if failed == 0 else f"FAIL: {failed} runs failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
