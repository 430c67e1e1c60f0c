"""Memory-safety tier: run a curated set of calls under compute-sanitizer (memcheck, initcheck).

Numerical checks cannot see a read that lands out of bounds, or on memory nothing wrote, when
its value is masked away later. Under the sanitizer, with PyTorch's caching allocator off
(``PYTORCH_NO_CUDA_MEMORY_CACHING=1``) and every tensor sized exactly (``build(exact=True)``,
workspaces exactly as large as the call needs and never initialized), such a read leaves its
allocation or touches never-written bytes and is reported.

    python -m tests.harness.memsafety [--tool memcheck|initcheck|all] [--kernels DIR] [--list]

runs every case in one sanitizer process per tool and prints the first report with the case
that triggered it. ``--kernels DIR`` puts DIR first on PYTHONPATH, so a deliberately broken copy
of the kernels can be checked (the tier's own tests do that).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from . import tables

ROOT = Path(__file__).resolve().parents[2]
MARKER = "MEMSAFETY-CASE"


def curated_cases():
    """Every code path the edge and layout tiers build: tails, segments, windows, GQA, strides."""
    picked = tables.edge_cases() + tables.layout_cases() + tables.quick_cases() + tables.poison_cases()
    seen, cases = set(), []
    for case in picked:
        if case.name not in seen and case.layout != "head_padded":  # padding is slack by design
            seen.add(case.name)
            cases.append(case)
    return cases


def run_cases(selected: list[str] | None = None) -> None:
    """Driver, run inside the sanitizer: launches every case through both paths."""
    import torch

    import kernels

    from .cases import build

    for case in curated_cases():
        if selected and case.name not in selected:
            continue
        for path in ("2d", "3d"):
            print(f"{MARKER} {case.name} {path}", flush=True)
            inputs = build(case, "cuda", 0, exact=True)
            kwargs = dict(inputs.call_kwargs())
            if path == "3d":
                plan = kernels.make_plan(inputs.q, inputs.k, inputs.cu_seqlens_q, inputs.max_seqlen_q,
                                         inputs.max_seqlen_k, split_kv=True, num_segments=case.num_segments)
                kwargs["workspace"] = kernels.Workspace(inputs.q.shape[0], case.num_q_heads, case.head_size,
                                                        plan.num_segments, "cuda")
                kwargs["num_segments"] = plan.num_segments
            kernels.unified_attention(*inputs.call_args(inputs.out), **kwargs, split_kv=path == "3d")
            torch.cuda.synchronize()
    print(f"{MARKER} done", flush=True)


def sanitize(tool: str, kernels_dir: str | None = None, selected: list[str] | None = None, timeout: int = 540):
    """Run the driver under ``compute-sanitizer --tool TOOL``; returns (ok, first report, log)."""
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + env.get("PYTHONPATH", "").split(os.pathsep))
    if kernels_dir:
        # `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH, so the
        # driver inserts the override itself before anything imports kernels.
        env["MEMSAFETY_KERNELS_DIR"] = str(kernels_dir)
    cmd = ["compute-sanitizer", f"--tool={tool}", "--print-limit=20", "--error-exitcode=86"]
    if tool == "memcheck":
        cmd.append("--leak-check=no")
    cmd += [sys.executable, "-m", "tests.harness.memsafety", "--driver"]
    if selected:
        cmd += ["--cases", ",".join(selected)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    return proc.returncode == 0 and f"{MARKER} done" in log, first_report(log), log


def first_report(log: str) -> str:
    """The first sanitizer error block and the case that was running when it appeared."""
    case = "before any case"
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(MARKER) and " kernels from " not in line:
            case = line[len(MARKER):].strip()
        elif re.match(r"=+ (Invalid|Uninitialized|Program hit|Error|.*error)", line):
            return f"case: {case}\n" + "\n".join(lines[i:i + 12])
    summary = [l for l in lines if "ERROR SUMMARY" in l]
    return summary[-1] if summary else "\n".join(lines[-15:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.memsafety", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", default="all", choices=("memcheck", "initcheck", "all"))
    parser.add_argument("--kernels", default=None, help="folder holding a 'kernels' package to check instead")
    parser.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    selected = args.cases.split(",") if args.cases else None
    if args.list:
        print("\n".join(c.name for c in curated_cases()))
        return 0
    if args.driver:
        override = os.environ.get("MEMSAFETY_KERNELS_DIR")
        if override:
            sys.path.insert(0, override)
        import kernels

        print(f"{MARKER} kernels from {kernels.__file__}", flush=True)
        run_cases(selected)
        return 0
    failed = 0
    for tool in (("memcheck", "initcheck") if args.tool == "all" else (args.tool,)):
        start = time.time()
        ok, report, _ = sanitize(tool, args.kernels, selected)
        print(f"{tool}: {'clean' if ok else 'REPORTED'} ({time.time() - start:.0f} s, {len(curated_cases())} cases x 2 paths)")
        if not ok:
            failed += 1
            print(report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
