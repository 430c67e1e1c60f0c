"""Memory-safety tier: run a curated set of calls under compute-sanitizer (memcheck, initcheck).

Numerical checks cannot see a read that lands out of bounds, or on memory nothing wrote, when
its value is masked away later. Under the sanitizer, with PyTorch's caching allocator off
(``PYTORCH_NO_CUDA_MEMORY_CACHING=1``) and every tensor sized exactly (``build(exact=True)``,
workspaces exactly as large as the call needs and never initialized), such a read leaves its
allocation or touches never-written bytes and is reported.

    python -m attention_suite.memsafety [--tool memcheck|initcheck|all] [--kernels DIR] [--list]
    attn-memsafety ...               (the same, as an installed command)

runs every case in one sanitizer process per tool and prints the first report with the case
that triggered it. ``--shard I/N`` runs every N-th case from the I-th: the tier's tests run shards
side by side, as one process over every case is the tier's longest. ``--kernels DIR`` puts DIR
first on PYTHONPATH, so a deliberately broken copy of the kernels can be checked (the tier's own
tests do that).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "MEMSAFETY-CASE"
# Tails, segments, windows, GQA, strides: every code path the edge, layout, quick and poison tables build.
CURATED_TABLES = ("edge", "layout", "cross_section", "poison")


def curated_cases():
    from . import tables  # imports torch: after argument parsing

    # head_padded views read inside their padding by design: that is slack, not an out-of-bounds read.
    return [c for c in tables.all_cases(CURATED_TABLES) if c.layout != "head_padded"]


def in_shard(items: list, shard: tuple[int, int] | None) -> list:
    """Shard ``(i, n)`` of ``items``: every n-th from the i-th (None: all). The n shards partition them."""
    if shard is None:
        return list(items)
    index, count = shard
    return list(items)[index::count]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise ValueError(f"--shard: expected I/N with 0 <= I < N, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def run_cases(selected: list[str] | None = None, with_faults: bool = False,
              shard: tuple[int, int] | None = None) -> None:
    """Driver, run inside the sanitizer: launches every case (of ``shard``) through both paths."""
    import torch

    import paged_kernels

    from .cases import build
    from .check import split_workspace

    for case in in_shard(curated_cases(), shard):
        if selected and case.name not in selected and case.label not in selected:
            continue
        for path in ("2d", "3d"):
            print(f"{MARKER} {case.name} {path}", flush=True)
            inputs = build(case, "cuda", 0, exact=True)
            kwargs = dict(inputs.call_kwargs())
            if path == "3d":
                # Exactly sized and never initialized: initcheck reports a read of a segment nobody wrote.
                workspace = split_workspace(inputs, case.num_segments, fill=None)
                kwargs.update(workspace=workspace, num_segments=workspace.num_segments)
            paged_kernels.unified_attention(*inputs.call_args(inputs.out), **kwargs, split_kv=path == "3d")
            torch.cuda.synchronize()
    if with_faults:
        run_metadata_faults(selected, shard)
    print(f"{MARKER} done", flush=True)


def run_metadata_faults(selected: list[str] | None = None, shard: tuple[int, int] | None = None) -> None:
    """Every invalid-metadata fault, unchecked, through both paths: the output is unspecified, but
    no access may leave the (exactly sized) tensors. memcheck only: with invalid lengths the 3D
    reduction may legitimately combine segments the kernel skipped, which initcheck would flag."""
    import torch

    import paged_kernels

    from .cases import build
    from .check import split_workspace
    from .metadata_faults import FAULT_CASE, FAULTS, break_metadata

    for fault in in_shard(FAULTS, shard):
        if selected and f"fault:{fault.name}" not in selected:
            continue
        for path in ("2d", "3d"):
            print(f"{MARKER} fault:{fault.name} {path}", flush=True)
            inputs = build(FAULT_CASE, "cuda", 0, exact=True)
            args, kwargs = break_metadata(inputs, fault)
            if path == "3d":
                workspace = split_workspace(inputs, 4, fill=None)
                kwargs.update(workspace=workspace, num_segments=4)
            paged_kernels.unified_attention(*args, **kwargs, split_kv=path == "3d")
            torch.cuda.synchronize()


def sanitize(tool: str, kernels_dir: str | None = None, selected: list[str] | None = None, timeout: int = 540,
             shard: tuple[int, int] | None = None):
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
    cmd += [sys.executable, "-m", "attention_suite.memsafety", "--driver"] + (["--faults"] if tool == "memcheck" else [])
    if selected:
        cmd += ["--cases", ",".join(selected)]
    if shard is not None:
        cmd += ["--shard", f"{shard[0]}/{shard[1]}"]
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
    parser = argparse.ArgumentParser(prog="python -m attention_suite.memsafety", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", default="all", choices=("memcheck", "initcheck", "all"))
    parser.add_argument("--kernels", default=None, help="folder holding a 'paged_kernels' package to check instead")
    parser.add_argument("--cases", default=None, help="comma-separated case names or labels (default: all)")
    parser.add_argument("--shard", default=None, help="I/N: every N-th case from the I-th (default: all)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--faults", action="store_true", help=argparse.SUPPRESS)  # driver: bad-metadata calls too
    args = parser.parse_args(argv)
    selected = args.cases.split(",") if args.cases else None
    try:
        shard = parse_shard(args.shard)
    except ValueError as exc:
        parser.error(str(exc))
    if args.list:
        print("\n".join(c.name for c in in_shard(curated_cases(), shard)))
        return 0
    if args.driver:
        from . import device

        device.setup("cuda", os.environ.get("MEMSAFETY_KERNELS_DIR") or None)
        import paged_kernels

        print(f"{MARKER} kernels from {paged_kernels.__file__}", flush=True)
        run_cases(selected, with_faults=args.faults, shard=shard)
        return 0
    failed = 0
    for tool in (("memcheck", "initcheck") if args.tool == "all" else (args.tool,)):
        start = time.time()
        ok, report, _ = sanitize(tool, args.kernels, selected, shard=shard)
        cases = len(in_shard(curated_cases(), shard))
        print(f"{tool}: {'clean' if ok else 'REPORTED'} ({time.time() - start:.0f} s, {cases} cases x 2 paths)")
        if not ok:
            failed += 1
            print(report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
