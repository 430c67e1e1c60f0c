"""``python -m triage`` / ``attn-triage``: one entry point for regression triage.

  replay FILE        rerun a reproducer and print the per-token/per-head error table
  minimize FILE      shrink a failing case while it still fails; prints and saves the smallest
  compare BASE CAND  regressions between two --error-report JSON files (exit 1 on any)
  report FILE        the worst cases of one --error-report JSON file
  mutants            run the quick tiers against every seeded kernel bug; print the kill matrix
  cover              the quick tier's cases chosen from the stored kill matrix (greedy set cover)

The device is chosen (and TRITON_INTERPRET set for CPU) before anything imports triton.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

EPILOG = """examples:
  pytest tests -m quick --repro-dir --error-report   # writes into artifacts/, which git ignores
  python -m triage replay artifacts/repro/quick-varlen-bf16-d64-g5-b48-bt-strided-2d-0123abcd.pt --device cpu
  python -m triage minimize artifacts/repro/quick-varlen-bf16-d64-g5-b48-bt-strided-2d-0123abcd.pt
  python -m triage compare baseline.json new.json --factor 2
  python -m triage mutants --list
  python -m triage mutants --workers 2           # the kill matrix (nightly: pytest -m mutation)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m triage", description=__doc__.split("\n\n")[0],
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def device_arg(p):
        p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                       help="cpu runs the kernels in the Triton interpreter (default: cuda when available)")

    def workspace_arg(p):
        p.add_argument("--no-poison-workspace", dest="poison_workspace", action="store_false",
                       help="let the implementation allocate the 3D workspace (default: a NaN-filled one, so a "
                            "read of an unwritten segment fails every time instead of at random)")

    def mutant_arg(p):
        p.add_argument("--mutant", default=None, metavar="NAME",
                       help="run against this catalog mutant (default: the one recorded in the file, if any; "
                            "'none' forces the current kernels)")

    p = sub.add_parser("replay", help="replay a reproducer file and print the error table",
                       description="Rebuild a reproducer's inputs (checked against the stored tensors), rerun the "
                                   "recorded path and print per-(token, head) errors, per-sequence and per-head "
                                   "summaries and a kernel-or-tolerance diagnosis. Exit 1 if it still fails.")
    p.add_argument("file")
    p.add_argument("--impl", default=None, help="implementation spec (default: the one recorded in the file)")
    device_arg(p)
    mutant_arg(p)
    p.add_argument("--path", choices=("2d", "3d", "auto"), default=None, help="override the recorded path")
    p.add_argument("--all-paths", action="store_true", help="also run the other paths")
    p.add_argument("--top", type=int, default=20, help="rows of the error table (default 20)")
    workspace_arg(p)

    p = sub.add_parser("minimize", help="shrink a failing case while it still fails",
                       description="Greedily drop sequences, shorten lengths, reduce heads and head size, reset "
                                   "features, reduce segments and prefer 2D while the case still fails; prints the "
                                   "smallest case and saves it as a new reproducer.")
    p.add_argument("file", nargs="?", help="reproducer file (or use --case)")
    p.add_argument("--case", dest="case_name", default=None, help="start from a case of attention_suite.tables, by name or label")
    p.add_argument("--path", choices=("2d", "3d", "auto"), default="auto", help="path for --case (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed for --case (default 0)")
    p.add_argument("--poison", action="store_true", help="build --case with poison")
    p.add_argument("--impl", default=None)
    device_arg(p)
    mutant_arg(p)
    p.add_argument("--max-trials", type=int, default=200, help="budget of candidate runs (default 200)")
    p.add_argument("--out-dir", default=None, help="where the minimized reproducer goes (default: beside FILE)")
    workspace_arg(p)

    p = sub.add_parser("compare", help="regressions between two error reports (exit 1 on any)",
                       description="List cases that newly fail or whose ratio (error / allowed) grew by more than "
                                   "--factor, most severe first. Exit 0: none; 1: regressions; 2: bad input.")
    p.add_argument("baseline")
    p.add_argument("candidate")
    p.add_argument("--factor", type=float, default=2.0, help="flag ratios that grew by more than this (default 2)")
    p.add_argument("--min-ratio", type=float, default=0.1,
                   help="ignore growth below this candidate ratio (default 0.1: noise far under the allowance)")
    p.add_argument("--limit", type=int, default=None, help="print at most this many findings")
    p.add_argument("--allow-missing", action="store_true", help="cases missing from the candidate do not fail")

    p = sub.add_parser("report", help="worst cases of one error report")
    p.add_argument("file")
    p.add_argument("--top", type=int, default=15)

    p = sub.add_parser("mutants", help="kill matrix: the quick tiers against every catalog mutant",
                       description="Copy the suite and paged_kernels/ into a temp folder per mutant, apply the mutant to "
                                   "the copy, run pytest there, and print which tests caught which mutant. An "
                                   "unmutated control must pass. Exit 0: every mutant detectable on this device "
                                   "killed; 1: a survivor; 2: invalid run (control failed, mutant not imported).")
    p.add_argument("--list", action="store_true", help="print the catalog and exit")
    p.add_argument("--check", action="store_true", help="only check that every mutant applies to the current source")
    p.add_argument("--only", default="", help="comma-separated mutant names (default: all)")
    p.add_argument("--tiers", default="quick", help="pytest -m expression (default 'quick')")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="default cpu")
    p.add_argument("--workers", type=int, default=None, help="mutants run at once (default: the CPU count on cpu, up to 4 on cuda)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per mutant run (default 900)")
    p.add_argument("--repro-dir", default=None, help="reproducers of each run go to DIR/<mutant>/")
    p.add_argument("--error-reports", default=None, help="error report of each run goes to DIR/<mutant>.json")
    p.add_argument("--json", dest="json_path", default=None, help="write the kill matrix as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temp copies")
    p.add_argument("--detail", type=int, default=3, help="catching tests listed per mutant (default 3)")
    p.add_argument("--pytest-args", default="", help="extra pytest arguments, one string")

    p = sub.add_parser("cover", help="the quick tier's cases: a greedy set cover over the stored kill matrix",
                       description="Pick the fewest cross-section cases that kill every catalog mutant the full CPU "
                                   "tiers kill (triage/kill_matrix.json), plus cases until every coverage class is "
                                   "covered; print them and why. Exit 1 when tables.QUICK_SELECTION differs.")
    p.add_argument("--matrix", default=None, help="stored kill matrix (default triage/kill_matrix.json)")
    p.add_argument("--from-run", default=None, metavar="RUN_JSON",
                   help='first store the rows of `triage mutants --tiers "quick or cross_section" --json RUN_JSON`')
    p.add_argument("--full-kills", default=None, metavar="JSON",
                   help="with --from-run: {mutant: true|false}, the full tiers' verdict on mutants quick missed")
    p.add_argument("--source", default="", help="with --from-run: the command and commit that made the run")
    return parser


def _recorded_mutant(file: str) -> str | None:
    import torch

    try:
        return torch.load(file, weights_only=True, map_location="cpu").get("mutant") or None
    except Exception:
        return None


def _setup(args, file: str | None) -> tuple[str, str | None]:
    """Apply the mutant (if any) and choose the device; must run before kernels are imported."""
    import os

    from attention_suite import device as suite_device

    from . import mutants

    name = args.mutant if args.mutant is not None else (_recorded_mutant(file) if file else None)
    if name == "none":
        name = None
    root = None
    if name:
        import atexit
        import shutil

        root = mutants.materialize(mutants.get(name)[0])
        atexit.register(shutil.rmtree, root, True)
        os.environ["ATTN_TRIAGE_MUTANT"] = name  # minimized reproducers record it too
    return suite_device.setup(args.device, root), name


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from attention_suite.impl import ImplSpecError  # light: imports no torch
    started = time.monotonic()
    try:
        if args.command == "compare":
            from .compare import run_compare

            return run_compare(args.baseline, args.candidate, args.factor, args.min_ratio, args.limit,
                               args.allow_missing)
        if args.command == "report":
            from .compare import run_summary

            return run_summary(args.file, args.top)
        if args.command == "cover":
            from . import cover

            return cover.run(args.matrix or str(cover.KILL_MATRIX), args.from_run, args.full_kills, args.source)
        if args.command == "mutants":
            from . import mutants

            if args.list or args.check:
                problems = mutants.check_catalog()
                if args.list:
                    for m in mutants.CATALOG:
                        files = ",".join(sorted({e.file for e in m.edits}))
                        print(f"{m.name:<28} {'[gpu-only] ' if m.gpu_only else ''}{m.description} ({files})")
                print("catalog applies cleanly" if not problems else "\n".join(problems))
                return 2 if problems else 0
            from .mutation_run import main_mutants

            import os

            cores = os.cpu_count() or 1
            workers = args.workers or (min(4, cores) if args.device == "cuda" else cores)
            return main_mutants(names=args.only, tiers=args.tiers, device=args.device, workers=workers,
                                timeout=args.timeout, extra_args=shlex.split(args.pytest_args),
                                repro_dir=args.repro_dir, report_dir=args.error_reports, keep=args.keep,
                                json_path=args.json_path, detail=args.detail)
        if args.command == "replay":
            device, mutant = _setup(args, args.file)
            from .replay import replay

            return replay(args.file, device=device, impl_spec=args.impl, path=args.path, top=args.top,
                          all_paths=args.all_paths, poison_workspace=args.poison_workspace, mutant=mutant)
        if args.command == "minimize":
            if not args.file and not args.case_name:
                print("minimize: give a reproducer FILE or --case NAME", file=sys.stderr)
                return 2
            device, mutant = _setup(args, args.file)
            from .minimize import minimize

            return minimize(device=device, impl_spec=args.impl, file=args.file, case_name=args.case_name,
                            path=args.path, seed=args.seed, poison=args.poison,
                            poison_workspace=args.poison_workspace, max_trials=args.max_trials,
                            out_dir=args.out_dir, mutant=mutant)
    except ImplSpecError as exc:
        print(f"{args.command}: --impl {args.impl}: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.command in ("replay", "minimize"):
            print(f"({args.command} took {time.monotonic() - started:.1f}s)")
    return 2


if __name__ == "__main__":
    sys.exit(main())
