"""The main job: verify an implementation against the reference over every case table, no pytest needed.

    python -m tests.harness.verify [--impl MODULE:FUNC] [--tiers numerics,edge,...] [--device cpu|cuda]

Prints one line per case that fails and a per-tier table (cases, paths, passed, worst error
ratio); exits non-zero when anything fails. Without a GPU the kernels run through the Triton
interpreter (set up here, before triton is imported).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings


def _setup_device(requested: str) -> str:
    import torch

    device = "cuda" if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()) else "cpu"
    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    return device


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", default="kernels:unified_attention")
    parser.add_argument("--tiers", default="numerics,features,edge,poison,layout")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    device = _setup_device(args.device)
    # The stable tanh overflows exp2 to inf on purpose (it then yields exactly 1).
    warnings.filterwarnings("ignore", "overflow encountered in exp2", RuntimeWarning)

    from . import tables
    from .check import Context, check_against_reference, check_poison_free
    from .impl import Implementation

    status = "not interpreting"
    if device == "cpu":
        from . import interpreter_fix

        status = interpreter_fix.install()
    impl = Implementation.load(args.impl)
    producers = {"numerics": tables.numerics_cases, "features": tables.feature_cases, "edge": tables.edge_cases,
                 "poison": tables.poison_cases, "layout": tables.layout_cases}
    print(f"verifying {impl.spec} on {device} ({status})", flush=True)
    rows, failed = [], 0
    for tier in args.tiers.split(","):
        start, runs, passed, worst, skipped = time.time(), 0, 0, 0.0, 0
        for case in producers[tier]():
            if device == "cpu" and case.gpu_only:
                skipped += 1
                continue
            for path in tables.PATHS:
                if impl.missing_feature(case) or impl.path_unsupported(path, case):
                    skipped += 1
                    continue
                ctx = Context(f"verify::{tier}::{case.name}::{path}", device, args.seed, impl)
                runs += 1
                try:
                    if tier == "poison":
                        check_poison_free(ctx, case, path)
                    else:
                        check_against_reference(ctx, case, path)
                    passed += 1
                except (AssertionError, NotImplementedError) as exc:
                    failed += 1
                    print(f"FAIL {tier} {case.name} {path}: {str(exc).splitlines()[0]}", flush=True)
                worst = max([worst] + [r for _, _, r in ctx.records])
        rows.append((tier, runs, passed, skipped, worst, time.time() - start))
    print(f"\n{'tier':<10}{'runs':>6}{'passed':>8}{'skipped':>9}{'worst ratio':>13}{'seconds':>9}")
    for tier, runs, passed, skipped, worst, secs in rows:
        print(f"{tier:<10}{runs:>6}{passed:>8}{skipped:>9}{worst:>13.3f}{secs:>9.1f}")
    print("PASS" if failed == 0 else f"FAIL: {failed} runs failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
