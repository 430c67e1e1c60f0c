"""What the compiler makes of each sweep point, without the GPU: for every kernel a call launches,
its registers, local (spill) bytes, shared memory, programs per SM and what bounds them, waves
over the card, and the main loop's instruction mix.

    python -m benchmarks.disasm --points decode-bs1-L510,decode-fp8kv-bs16-L4096
    python -m benchmarks.disasm --quick --impl vllm          # ours and vLLM's kernel side by side
    python -m benchmarks.disasm --points prefill-4x2048 --dump artifacts/disasm   # SASS, PTX, TTGIR files

How: each column's call runs on CPU tensors with the point's shapes (nothing is computed) while
Triton is given a stand-in driver for the target (default sm_90 with 132 SMs: the H200). Every
``@triton.jit`` launch then compiles for that target and is recorded instead of launched; our
kernels' device queries (SM count, shared memory per program, programmatic launch, CPU-tensor
refusal) are answered for the target. The
code is what the GPU runs only when the Triton here is the GPU's version: the report names it
(the H200 machine has 3.6.0: ``pip install --no-deps --target DIR triton==3.6.0``, then put DIR
first on PYTHONPATH). Needs Triton's NVIDIA backend (ptxas, cuobjdump: in the standard wheel)
and ``TRITON_INTERPRET`` unset (the interpreter replaces compilation).

Reading it: "main loop" is the static body of the loop with the most matrix instructions (one
iteration; a pipelined loop holds the loads of a later tile; "loops" lists every loop's size: our
kernel walks masked and unmasked KV tiles in separate loops, and decode spends its time in the
unmasked one, usually the smallest); "cvt" counts conversions, byte
permutes and packed half arithmetic (a one-byte cache pays them per element); "CTAs/SM" is the
CUDA occupancy rule for the registers, warps and shared bytes the compiler reported; "wait N"
after a loop's mix is how many asynchronous-copy groups it leaves in flight where it waits for
its copies (``DEPBAR.LE SB0, N``): "wait 0" drains every copy each iteration, so the next tile's
loads overlap none of this tile's work (our prefill loop at three stages did).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

from . import sass, shapes

DEFAULT_ARCH = 90
PROG = "python -m benchmarks.disasm"
OUR_COLUMNS = {"heuristic": {}, "2d": {"split_kv": False}, "3d": {"split_kv": True}}
LOOP_CATEGORIES = ("mma", "gload", "shared", "convert", "fp32", "mufu", "int", "sync")


class DisasmError(RuntimeError):
    pass


def _tool(name: str) -> str:
    """A CUDA binary from Triton's NVIDIA backend (the one its compiler uses), else from PATH."""
    import triton.backends.nvidia as nvidia

    path = Path(nvidia.__file__).parent / "bin" / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        raise DisasmError(f"{name} not found in {path.parent} or on PATH: Triton's NVIDIA backend is needed")
    return found


class _CompileOnlyDriver:
    """Just enough of a Triton driver for the JIT to pick a target and compile for it."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")


@contextlib.contextmanager
def compile_only(arch: int, num_sms: int, module=None):
    """Inside: every @triton.jit launch compiles for ``sm_<arch>`` and is appended to the yielded list
    as (kernel name, grid, CompiledKernel) instead of running. ``module``: an implementation's module
    whose ``_num_sms`` / ``_shared_memory_per_block`` / ``_programmatic_launch`` / ``_check_backend``
    (our kernels' device queries) answer for the target."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise DisasmError("TRITON_INTERPRET=1 replaces compilation with the interpreter: unset it")
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    launches: list = []
    original_run = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        kernel = original_run(self, *args, grid=grid, warmup=True, **kwargs)
        if callable(grid):
            grid = grid(dict(zip(self.arg_names, args), **kwargs))
        launches.append((self.fn.__name__, tuple(grid), kernel))
        return kernel

    previous = getattr(driver, "_active", None)  # not driver.active: that would start the real driver
    patches = [mock.patch.object(JITFunction, "run", record)]
    if module is not None and hasattr(module, "_num_sms"):
        patches.append(mock.patch.object(module, "_num_sms", lambda device: num_sms))
    if module is not None and hasattr(module, "_shared_memory_per_block"):
        limits = sass.ARCH_LIMITS[arch]
        patches.append(mock.patch.object(module, "_shared_memory_per_block",
                                         lambda device: limits.shared_bytes - limits.shared_reserved_per_cta))
    if module is not None and hasattr(module, "_programmatic_launch"):
        patches.append(mock.patch.object(module, "_programmatic_launch", lambda device: arch >= 90))
    if module is not None and hasattr(module, "_check_backend"):
        patches.append(mock.patch.object(module, "_check_backend", lambda *a, **k: None))
    driver.set_active(_CompileOnlyDriver(arch))
    try:
        with contextlib.ExitStack() as stack:
            for p in patches:
                stack.enter_context(p)
            yield launches
    finally:
        driver._active = previous


def analyze(name: str, grid: tuple, kernel, limits: sass.SmLimits, num_sms: int, dump: Path | None = None,
            label: str = "") -> dict:
    """One compiled launch -> resources, occupancy, waves and instruction mix (and files under ``dump``)."""
    cubin = kernel.asm["cubin"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        usage_text = subprocess.run([_tool("cuobjdump"), "-res-usage", str(path)], capture_output=True,
                                    text=True, check=True).stdout
        sass_text = subprocess.run([_tool("cuobjdump"), "-sass", str(path)], capture_output=True,
                                   text=True, check=True).stdout
    functions = sass.parse_sass(sass_text)
    instructions = functions.get(name) or next(iter(functions.values()), [])
    usage = sass.resource_usage(usage_text).get(name, {})
    warps = kernel.metadata.num_warps
    shared = int(kernel.metadata.shared) + usage.get("SHARED", 0)
    fit, bound = sass.ctas_per_sm(limits, usage.get("REG", 0), warps, shared)
    programs = 1
    for g in grid:
        programs *= int(g)
    loop = sass.main_loop(instructions)
    if dump is not None:
        dump.mkdir(parents=True, exist_ok=True)
        stem = f"{label}-{name}" if label else name
        (dump / f"{stem}.sass").write_text(sass_text)
        for key in ("ptx", "ttgir"):
            if key in kernel.asm:
                (dump / f"{stem}.{key}").write_text(kernel.asm[key])
    return {
        "kernel": name, "grid": list(grid), "programs": programs, "num_warps": warps,
        "num_stages": kernel.metadata.num_stages, "registers": usage.get("REG"), "local_bytes": usage.get("LOCAL"),
        "stack_bytes": usage.get("STACK"), "shared_bytes": shared, "ctas_per_sm": fit, "bound_by": bound,
        "waves": programs / max(fit * num_sms, 1), "sass_instructions": len(instructions),
        "mix": dict(sass.mix(instructions)),
        "loop": None if loop is None else {"size": loop.size, "mix": dict(loop.mix()),
                                           "copies_in_flight": loop.copy_groups_in_flight()},
        "loops": [{"size": lp.size, "start": lp.start, "mix": dict(lp.mix()),
                   "copies_in_flight": lp.copy_groups_in_flight()} for lp in sass.find_loops(instructions)],
    }


def point_columns(point, peers, columns) -> list[tuple[str, object, object]]:
    """(column, maker of its zero-argument call, module of its implementation) for our columns and each
    peer. A peer's call is made inside ``compile_only`` too: building it may plan (a workspace sized by
    the peer's planner), and the plan must see the target's SM count, not the CPU's."""
    import paged_kernels
    from .inputs import build_inputs
    from .sweep import _ours

    inputs = build_inputs(point, 1, "cpu", fill=False)
    ours_module = sys.modules[paged_kernels.unified_attention.__module__]
    out = [(c, lambda kw=OUR_COLUMNS[c]: _ours(inputs, None, **kw)[0], ours_module) for c in columns]
    for peer in peers:
        out.append((peer.spec.name, lambda peer=peer: peer.build(inputs).calls[0],
                    sys.modules.get(peer.impl.func.__module__)))
    return out


def disasm_point(point, peers=(), columns=tuple(OUR_COLUMNS), arch=DEFAULT_ARCH, num_sms=shapes.H100_SMS,
                 dump: Path | None = None) -> dict:
    limits = sass.ARCH_LIMITS[arch]
    record = {"point": point.name, "describe": point.describe(), "columns": {}}
    for column, make_call, module in point_columns(point, peers, columns):
        try:
            with compile_only(arch, num_sms, module) as launches:
                make_call()()
        except DisasmError:
            raise
        except Exception as exc:  # noqa: BLE001 - one column that cannot compile is recorded, not fatal
            record["columns"][column] = {"error": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
            continue
        label = f"{point.name}-{column}"
        names = [n for n, _, _ in launches]
        # A kernel launched twice in one call (the wide and the narrow prefill launch) gets its
        # launch index in the dump's file names, so the second does not overwrite the first.
        record["columns"][column] = {"launches": [
            analyze(n, g, k, limits, num_sms, dump, label if names.count(n) == 1 else f"{label}-{i}")
            for i, (n, g, k) in enumerate(launches)]}
    return record


def _mix_text(loop) -> str:
    m = loop["mix"]
    text = f"{loop['size']:4d}: " + " ".join(f"{c} {m.get(c, 0)}" for c in LOOP_CATEGORIES)
    if loop.get("copies_in_flight") is not None:
        # "wait 0": every iteration drains its copies, so the next tile's loads overlap nothing.
        text += f" wait {loop['copies_in_flight']}"
    return text


def _loop_text(launch) -> str:
    loop = launch["loop"]
    if loop is None:
        return "no loop"
    # Every loop's size too: the kernel's masked and unmasked KV walks are separate loops.
    sizes = "/".join(str(lp["size"]) for lp in launch["loops"])
    return _mix_text(loop) + f"  (loops {sizes})"


def render(records: list[dict], all_loops: bool = False) -> str:
    """The table; ``all_loops`` adds one line per loop of each launch (the main loop is the largest of
    those with the most matrix work, which for our kernel is a masked walk; the unmasked one is hotter)."""
    header = (f"{'column':<10} {'kernel':<26} {'grid':<14} {'warps':>5} {'regs':>4} {'local':>5} {'smem KiB':>8} "
              f"{'CTAs/SM':>11} {'waves':>6} {'sass':>5}  main loop (static body)")
    lines = []
    for rec in records:
        lines += ["", f"{rec['point']}: {rec['describe']}", header, "-" * len(header)]
        for column, res in rec["columns"].items():
            if "error" in res:
                lines.append(f"{column:<10} {res['error']}")
                continue
            for ln in res["launches"]:
                grid = "x".join(str(g) for g in ln["grid"])
                fit = f"{ln['ctas_per_sm']} ({ln['bound_by'][:4]})"
                lines.append(f"{column:<10} {ln['kernel'][:26]:<26} {grid:<14} {ln['num_warps']:>5} "
                             f"{ln['registers'] or 0:>4} {ln['local_bytes'] or 0:>5} {ln['shared_bytes'] / 1024:>8.1f} "
                             f"{fit:>11} {ln['waves']:>6.2f} {ln['sass_instructions']:>5}  {_loop_text(ln)}")
                if all_loops:
                    for i, lp in enumerate(ln["loops"], 1):
                        lines.append(f"{'':<10} {'':<26} loop {i}/{len(ln['loops'])} at 0x{lp['start']:04x}: "
                                     + _mix_text(lp))
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", default=None, help="comma-separated point names; 'prefix*' selects by prefix "
                                                   "(default: the quick subset)")
    ap.add_argument("--quick", action="store_true", help="the quick subset (the default without --points)")
    ap.add_argument("--columns", default=",".join(OUR_COLUMNS),
                    help=f"our columns to compile, comma-separated from {', '.join(OUR_COLUMNS)} (default: all)")
    ap.add_argument("--impl", action="append", default=[], metavar="NAME=MODULE:FUNC",
                    help="a peer implementation as the sweep takes it ('vllm': vLLM's kernel with its backend's settings)")
    ap.add_argument("--arch", type=int, default=DEFAULT_ARCH, choices=sorted(sass.ARCH_LIMITS),
                    help="compute capability to compile for (default 90: H100/H200)")
    ap.add_argument("--sms", type=int, default=shapes.H100_SMS,
                    help=f"SMs of the card the planner plans for (default {shapes.H100_SMS})")
    ap.add_argument("--dump", default=None, help="folder for each launch's SASS, PTX and TTGIR")
    ap.add_argument("--json", default=None, help="write the records as JSON here")
    ap.add_argument("--all-loops", action="store_true",
                    help="one line per loop of each launch with its instruction mix (default: the main loop only)")
    args = ap.parse_args(argv)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    unknown = [c for c in columns if c not in OUR_COLUMNS]
    if unknown:
        ap.error(f"--columns: unknown {', '.join(unknown)}; choose from {', '.join(OUR_COLUMNS)}")
    args.column_list = columns
    if args.sms < 1:
        ap.error(f"--sms: expected a positive count, got {args.sms}")
    try:
        args.point_list = shapes.select(args.points, args.quick or not args.points)
    except ValueError as exc:
        ap.error(f"--points: {exc}")
    from .peers import specs_or_exit

    args.impl_specs = specs_or_exit(ap, args.impl)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import triton

    from .peers import load_or_exit

    peers = load_or_exit(PROG, args.impl_specs)
    print(f"triton {triton.__version__} ({Path(triton.__file__).parent}), sm_{args.arch}, {args.sms} SMs", flush=True)
    records = []
    try:
        for point in args.point_list:
            records.append(disasm_point(point, peers, args.column_list, args.arch, args.sms,
                                        Path(args.dump) if args.dump else None))
    except DisasmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"triton": triton.__version__, "arch": args.arch, "sms": args.sms,
                                               "points": records}, indent=1))
    print(render(records, all_loops=args.all_loops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
