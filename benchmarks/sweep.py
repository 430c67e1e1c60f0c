"""The benchmark sweep: kernels against the HBM floor and torch SDPA, one process, one JSON.

    python -m benchmarks.sweep                    # the whole sweep (about 2-4 min on an H100)
    python -m benchmarks.sweep --quick            # the subset with every target point
    python -m benchmarks.sweep --points decode-bs1-L13300,prefill-*
    python -m benchmarks.sweep --tune-segments    # decode points: forced 3D at 2..128 segments vs 2D
    python -m benchmarks.sweep --dry-run [--interpret]   # CPU: build every point small, plan, render

Each point is caught on its own: a failure is recorded and the sweep goes on. The JSON is
rewritten after every point, so a run cut short still leaves its results; the table prints last.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from . import report, shapes
from .shapes import TUNE_SEGMENTS, Point

# Runs land outside the committed benchmarks/results/ (copy a run there on purpose), so a GPU
# run never overwrites the recorded results.
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "artifacts" / "benchmarks"
WORKSPACE_BUDGET_BYTES = 4 << 30  # forced 3D on prefill would otherwise want tens of GB of partials
CHECK_TOLERANCE = 0.05  # max |difference| between bf16 outputs of two correct implementations
H100_SMS = 132


@dataclasses.dataclass
class Context:
    device: torch.device
    dtype: torch.dtype
    seed: int
    replayer: Callable  # timing.Replayer (warm up + capture) or a stand-in for dry runs
    measure: Callable  # timing.time_interleaved or a stand-in for dry runs
    floor_gbps: float
    l2_bytes: int
    target_s: float
    baselines: tuple[str, ...]
    run_ours: bool = True  # False on CPU without the interpreter: kernels cannot launch there
    max_copies: int = 128


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:600]


def _ws_bytes(num_tokens: int, num_q_heads: int, head_size: int, segments: int) -> int:
    head_pad = 1 << max(head_size - 1, 0).bit_length()
    return num_tokens * num_q_heads * segments * (head_pad + 2) * 4


def _ours(inputs, ws, **kw) -> list[Callable[[], object]]:
    import kernels

    def make(c: int):
        def call():
            return kernels.unified_attention(
                inputs.q[c], inputs.k_cache, inputs.v_cache, inputs.out[c], inputs.cu_seqlens_q,
                inputs.max_seqlen_q, inputs.seqused_k, inputs.max_seqlen_k, inputs.softmax_scale, True, (-1, -1),
                inputs.block_tables[c], 0.0, None, None, None, workspace=ws, **kw)
        return call

    return [make(c) for c in range(inputs.copies)]


def _plan_dict(plan) -> dict:
    d = dataclasses.asdict(plan)
    d["grid"] = list(d["grid"])
    d["reduce_grid"] = None if d["reduce_grid"] is None else list(d["reduce_grid"])
    return d


def _prepare(ctx: Context, runners: dict, results: dict, name: str, calls) -> bool:
    """Warm up and capture ``calls`` as ``runners[name]``; on failure record the reason instead."""
    try:
        runners[name] = ctx.replayer(calls)
        return True
    except Exception as exc:  # noqa: BLE001 - one implementation failing must not stop the point
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        results[name] = {"us": None, "error": _reason(exc)}
        return False


def _measure_all(ctx: Context, runners: dict, results: dict) -> None:
    """Interleaved timing of every captured runner; results[name] gets us, timing and any note."""
    try:
        timings = ctx.measure(runners, target_s=ctx.target_s)
        for name, t in timings.items():
            r = results.setdefault(name, {})
            r.update({"us": t.median_us, "timing": t.to_dict()})
            if t.note:
                r["note"] = (r["note"] + "; " if r.get("note") else "") + t.note
    except Exception as exc:  # noqa: BLE001
        for name in runners:
            results.setdefault(name, {}).update({"us": None, "error": f"interleaved timing failed: {_reason(exc)}"})
    finally:
        for r in runners.values():
            r.close()
        runners.clear()


def _point_header(point: Point, ctx: Context, copies: int) -> dict:
    return {
        "name": point.name, "kind": point.kind, "series": point.series, "describe": point.describe(),
        "note": point.note, "x": point.x_value, "num_seqs": point.num_seqs, "num_tokens": point.num_tokens,
        "max_seqlen_q": point.max_seqlen_q, "max_seqlen_k": point.max_seqlen_k,
        "num_q_heads": point.num_q_heads, "num_kv_heads": point.num_kv_heads, "head_size": point.head_size,
        "block_size": point.block_size, "kv_bytes": point.kv_bytes(), "floor_bytes": point.floor_bytes(),
        "cache_copy_bytes": point.cache_bytes(), "copies": copies, "visible_pairs": point.visible_pairs(),
        "flops": point.flops(), "floor_us": point.floor_bytes() / (ctx.floor_gbps * 1e9) * 1e6,
        "target": dataclasses.asdict(point.target) if point.target else None,
        "results": {},
    }


def _free_memory(ctx: Context) -> int | None:
    if ctx.device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(ctx.device)
    return free


def _cleanup(ctx: Context) -> None:
    import gc

    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def run_point(point: Point, ctx: Context, log=print) -> dict:
    """Time heuristic, forced 2D, forced 3D and the SDPA baselines on one point; check outputs agree."""
    import kernels
    from .baselines import BaselineUnavailable, build_sdpa
    from .inputs import build_inputs
    from .timing import rotation_copies

    copies = rotation_copies(point.cache_bytes(), ctx.l2_bytes, max_copies=ctx.max_copies)
    rec = _point_header(point, ctx, copies)
    t_start = time.time()
    inputs = None
    outputs: dict[str, torch.Tensor] = {}
    try:
        free = _free_memory(ctx)
        need = copies * (point.cache_bytes() + point.qo_bytes()) * 2  # ours + the baselines' dense copies
        if free is not None and need > 0.9 * free:
            copies = max(1, int(copies * 0.9 * free / need))
            rec["copies"] = copies
        inputs = build_inputs(point, copies, ctx.device, ctx.dtype, ctx.seed)
        q0, k0, cu = inputs.q[0], inputs.k_cache, inputs.cu_seqlens_q
        mq, mk = inputs.max_seqlen_q, inputs.max_seqlen_k
        heur = kernels.make_plan(q0, k0, cu, mq, mk)
        forced3 = kernels.make_plan(q0, k0, cu, mq, mk, split_kv=True)
        ws_segments = forced3.num_segments
        while ws_segments > 2 and _ws_bytes(point.num_tokens, point.num_q_heads, point.head_size, ws_segments) > WORKSPACE_BUDGET_BYTES:
            ws_segments //= 2
        if heur.path == "3d":
            ws_segments = max(ws_segments, heur.num_segments)
        ws = kernels.Workspace(point.num_tokens, point.num_q_heads, point.head_size, ws_segments, ctx.device)
        plans = {
            "heuristic": kernels.make_plan(q0, k0, cu, mq, mk, workspace=ws),
            "2d": kernels.make_plan(q0, k0, cu, mq, mk, split_kv=False, workspace=ws),
            "3d": kernels.make_plan(q0, k0, cu, mq, mk, split_kv=True, workspace=ws),
        }
        rec["plans"] = {k: _plan_dict(v) for k, v in plans.items()}
        rec["heuristic_path"], rec["heuristic_segments"] = heur.path, heur.num_segments
        rec["heuristic_reason"] = heur.reason
        rec["forced3d_segments"] = plans["3d"].num_segments
        if plans["3d"].num_segments < forced3.num_segments:
            rec["forced3d_note"] = (f"planner wants {forced3.num_segments} segments for a forced split; capped at "
                                    f"{plans['3d'].num_segments} by the {WORKSPACE_BUDGET_BYTES >> 30} GiB workspace budget")
        results: dict[str, dict] = {}
        runners: dict = {}
        bases = []
        for impl, kw in (("heuristic", {}), ("2d", {"split_kv": False}), ("3d", {"split_kv": True})):
            if not ctx.run_ours:
                results[impl] = {"us": None, "error": "not run (no GPU and no interpreter)"}
                continue
            if _prepare(ctx, runners, results, impl, _ours(inputs, ws, **kw)):
                outputs[impl] = inputs.out[0].float().clone()  # the warm-up computed copy 0
        if rec.get("forced3d_note"):
            results.setdefault("3d", {})["note"] = rec["forced3d_note"]
        for name in ctx.baselines:
            try:
                base = build_sdpa(name, inputs)
            except BaselineUnavailable as exc:
                results[name] = {"us": None, "error": str(exc)}
                continue
            except Exception as exc:  # noqa: BLE001
                results[name] = {"us": None, "error": _reason(exc)}
                _cleanup(ctx)
                continue
            bases.append(base)
            results[name] = {"config": base.note, **({"note": base.note} if base.expanded else {})}
            if _prepare(ctx, runners, results, name, base.calls()) and "reference" not in outputs:
                outputs["reference"] = base.output(0).float()
                rec.setdefault("check", {})["reference"] = name
        _measure_all(ctx, runners, results)
        del bases
        order = ("heuristic", "2d", "3d", *ctx.baselines)
        rec["results"] = {k: results[k] for k in order if k in results}
        for name, r in rec["results"].items():
            log(f"  {point.name:28s} {name:11s} {_fmt(r)}")

        ref_name = "reference" if "reference" in outputs else ("2d" if "2d" in outputs else None)
        if ref_name:
            chk = rec.setdefault("check", {})
            chk.setdefault("reference", ref_name)
            chk["tolerance"] = CHECK_TOLERANCE
            chk["max_abs_diff"] = {impl: float((o - outputs[ref_name]).abs().max())
                                   for impl, o in outputs.items() if impl != ref_name}
    except Exception as exc:  # noqa: BLE001 - the point fails, the sweep goes on
        rec["error"] = _reason(exc)
        rec["traceback"] = traceback.format_exc()[-2000:]
        log(f"  {point.name}: FAILED {rec['error']}")
    finally:
        del inputs, outputs
        _cleanup(ctx)
    rec["elapsed_s"] = round(time.time() - t_start, 2)
    return rec


def run_tune(point: Point, ctx: Context, log=print) -> dict:
    """Forced 2D and forced 3D at each segment count in TUNE_SEGMENTS (plus the heuristic)."""
    import kernels
    from .inputs import build_inputs
    from .timing import rotation_copies

    copies = rotation_copies(point.cache_bytes(), ctx.l2_bytes, max_copies=ctx.max_copies)
    rec = {"name": point.name, "describe": point.describe(), "series": point.series, "x": point.x_value,
           "copies": copies, "3d": {}}
    inputs = None
    t_start = time.time()
    try:
        inputs = build_inputs(point, copies, ctx.device, ctx.dtype, ctx.seed)
        ws = kernels.Workspace(point.num_tokens, point.num_q_heads, point.head_size, max(TUNE_SEGMENTS), ctx.device)
        q0, k0, cu = inputs.q[0], inputs.k_cache, inputs.cu_seqlens_q
        heur = kernels.make_plan(q0, k0, cu, inputs.max_seqlen_q, inputs.max_seqlen_k, workspace=ws)
        rec["heuristic_plan"] = _plan_dict(heur)
        tiles = math.ceil(point.max_seqlen_k / heur.tile_size)
        runners: dict = {}
        results: dict[str, dict] = {}
        if ctx.run_ours:
            _prepare(ctx, runners, results, "heuristic", _ours(inputs, ws))
            _prepare(ctx, runners, results, "2d", _ours(inputs, ws, split_kv=False))
            for s in TUNE_SEGMENTS:
                if s <= tiles:
                    _prepare(ctx, runners, results, f"3d/{s}", _ours(inputs, ws, split_kv=True, num_segments=s))
            _measure_all(ctx, runners, results)
        rec["heuristic"] = results.get("heuristic")
        rec["2d"] = results.get("2d")
        for s in TUNE_SEGMENTS:
            if s > tiles:
                rec["3d"][str(s)] = {"us": None, "skipped": f"{s} segments > {tiles} KV tiles"}
            elif f"3d/{s}" in results:
                rec["3d"][str(s)] = results[f"3d/{s}"]
        candidates = {k: v for k, v in results.items() if k != "heuristic"}
        timed = {k: v["us"] for k, v in candidates.items() if v.get("us") is not None}
        if timed:
            best = min(timed, key=timed.get)
            rec["best"] = {"config": best, "us": timed[best]}
        line = "  ".join(f"{k}={v:.1f}" for k, v in timed.items())
        log(f"  {point.name:28s} heuristic={_fmt(rec.get('heuristic') or {})} {line}")
    except Exception as exc:  # noqa: BLE001
        rec["error"] = _reason(exc)
        rec["traceback"] = traceback.format_exc()[-2000:]
        log(f"  {point.name}: FAILED {rec['error']}")
    finally:
        del inputs
        _cleanup(ctx)
    rec["elapsed_s"] = round(time.time() - t_start, 2)
    return rec


def _fmt(r: dict) -> str:
    if r.get("us") is None:
        return f"n/a ({r.get('error', r.get('skipped', '?'))[:150]})"
    t = r.get("timing") or {}
    extra = f" [{t.get('mode')}, {t.get('copies')} copies, {t.get('replays')} replays]" if t else ""
    return f"{r['us']:9.2f} us{extra}"


# -- dry run ---------------------------------------------------------------------------------
class _FakeReplayer:
    """Dry-run stand-in for timing.Replayer: runs each call once when the kernels can run."""

    mode, note = "fake", ""

    def __init__(self, calls, execute: bool):
        if execute:
            for fn in calls:
                fn()
        self.copies = self.calls_per_replay = len(calls)

    def close(self) -> None:
        pass


def _fake_measure(runners: dict, target_s: float = 0.0) -> dict:
    from .timing import summarize

    return {n: summarize([1.0, 1.01, 0.99], calls_per_replay=r.calls_per_replay, copies=r.copies, mode="fake")
            for n, r in runners.items()}


def _fake_results(data: dict) -> dict:
    """Plausible numbers in place of the dry run's placeholder timings, so the report has content."""
    rng = __import__("random").Random(0)
    for rec in data["points"]:
        floor = rec["floor_us"] or 1.0
        base = max(floor, rec["flops"] / 400e12 * 1e6) + 4.0
        for impl, factor in (("heuristic", 1.2), ("2d", 2.5 if rec["kind"] == "decode" else 1.2), ("3d", 1.3),
                             ("sdpa-flash", 1.6), ("sdpa-cudnn", 1.5)):
            r = rec["results"].setdefault(impl, {})
            r["us"] = base * factor * (1 + 0.05 * rng.random())
            r.pop("error", None)
    for rec in data.get("tune", []):
        rec["heuristic"] = {"us": 10.0}
        rec["2d"] = {"us": 20.0}
        for s in TUNE_SEGMENTS:
            rec["3d"].setdefault(str(s), {})["us"] = 10.0 + abs(math.log2(s) - 4)
        rec["best"] = {"config": "3d/16", "us": 10.0}
    return data


def dry_run(args) -> int:
    """Build every point small on CPU, plan it (CPU and an H100 preview), render a fake report."""
    import kernels
    from .timing import environment

    interpret = args.interpret
    ctx = Context(device=torch.device("cpu"), dtype=torch.float32, seed=args.seed,
                  replayer=lambda calls: _FakeReplayer(calls, interpret), measure=_fake_measure, floor_gbps=3000.0, l2_bytes=256 << 10,
                  target_s=0.0, baselines=() if args.no_baselines else ("sdpa-flash",),
                  run_ours=interpret, max_copies=2)
    points = shapes.select(args.points, args.quick)
    print(f"dry run: {len(points)} points, CPU, float32, interpreter={'on' if interpret else 'off'}")
    data = {"mode": "dry-run", "seed": args.seed, "env": environment(None), "floor_gbps": ctx.floor_gbps,
            "copy_bandwidth": None, "points": [], "tune": []}
    failures = 0
    for point in points:
        h100 = kernels.plan_launch(
            num_tokens=point.num_tokens, num_seqs=point.num_seqs, max_seqlen_q=point.max_seqlen_q,
            max_seqlen_k=point.max_seqlen_k, num_q_heads=point.num_q_heads, num_kv_heads=point.num_kv_heads,
            head_size=point.head_size, num_sms=H100_SMS)
        h100_split = kernels.plan_launch(
            num_tokens=point.num_tokens, num_seqs=point.num_seqs, max_seqlen_q=point.max_seqlen_q,
            max_seqlen_k=point.max_seqlen_k, num_q_heads=point.num_q_heads, num_kv_heads=point.num_kv_heads,
            head_size=point.head_size, num_sms=H100_SMS, split_kv=True)
        factor = max(1, math.ceil(point.max_seqlen_k / (64 if interpret else 256)))
        small = point.scaled(factor)
        if interpret and small.num_seqs > 16:  # the interpreter pays per program: keep the grid small
            small = dataclasses.replace(small, seqs=small.seqs[-16:])
        rec = run_point(small, ctx, log=lambda *_: None)
        full = _point_header(point, ctx, rec["copies"])  # plot and floors at full scale
        rec.update({k: v for k, v in full.items() if k != "results"})
        rec["h100_preview"] = {"path": h100.path, "num_segments": h100.num_segments,
                               "forced3d_segments": h100_split.num_segments, "reason": h100.reason}
        rec["dry_run_scale"] = {"divided_by": factor, "seqs": small.describe()}
        status = "ok"
        if rec.get("error"):
            status, failures = f"FAILED: {rec['error']}", failures + 1
        chk = (rec.get("check") or {}).get("max_abs_diff") or {}
        bad = {k: v for k, v in chk.items() if v > 1e-3}
        if bad:
            status, failures = f"MISMATCH vs {rec['check']['reference']}: {bad}", failures + 1
        for impl, r in rec["results"].items():
            if interpret and r.get("us") is None:
                status, failures = f"{impl} failed: {r.get('error')}", failures + 1
        print(f"  {point.name:28s} H100 plan {h100.path}/{h100.num_segments:<3d} (forced 3D {h100_split.num_segments:3d}) "
              f"small {small.describe()[:60]:60s} diffs {({k: f'{v:.1e}' for k, v in chk.items()})} {status}")
        data["points"].append(rec)
    if args.tune_segments:
        for point in [p for p in points if p.kind == "decode"][:2]:
            data["tune"].append(run_tune(point.scaled(max(1, point.max_seqlen_k // 256)), ctx, log=lambda *_: None))
    out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-dry-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "dry-run.json"
    path.write_text(json.dumps(_fake_results(data), indent=1, default=str))
    written = report.write_all(path)
    print(report.render_markdown(json.loads(path.read_text())))
    print(f"\ndry run wrote {path} and {written}; {failures} failure(s)")
    return 1 if failures else 0


# -- main ------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the quick subset (every target point; about 1 min)")
    ap.add_argument("--out", default=None, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--points", default=None, help="comma-separated point names; 'prefix*' selects by prefix")
    ap.add_argument("--tune-segments", action="store_true",
                    help="time forced 3D at each of 2..128 segments and forced 2D on the decode points (only that)")
    ap.add_argument("--dry-run", action="store_true", help="CPU check: build, plan and report without timing")
    ap.add_argument("--interpret", action="store_true", help="with --dry-run: run the kernels under the Triton interpreter")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-s", type=float, default=None, help="device seconds per measurement (default 0.2, quick 0.1)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="skip remaining points after this many seconds (default 540, quick 110)")
    ap.add_argument("--floor-bandwidth", choices=("max", "copy", "read"), default="max",
                    help="bandwidth for the HBM floor: D2D copy (read+write counted), read-only stream, "
                         "or the higher of the two (default)")
    ap.add_argument("--no-baselines", action="store_true", help="skip the SDPA baselines")
    ap.add_argument("--tag", default=None, help="file-name suffix (default: quick/tune/points)")
    ap.add_argument("--list", action="store_true", help="list the points and exit")
    args = ap.parse_args(argv)
    if args.points:
        try:
            shapes.select(args.points)
        except ValueError as exc:
            ap.error(f"--points: {exc}")  # exit 2, like every other bad argument
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        for p in shapes.POINTS:
            flags = ("quick " if p.quick else "") + (f"target {p.target.describe()}" if p.target else "")
            print(f"{p.name:28s} {p.describe():60s} {flags}")
        return 0
    if args.interpret and not args.dry_run:
        raise SystemExit("--interpret only makes sense with --dry-run")
    if args.dry_run:
        if args.interpret:
            from attention_suite import device as suite_device

            suite_device.setup("cpu")
        return dry_run(args)

    from .timing import card_slug, copy_bandwidth, environment, l2_bytes, read_bandwidth, require_cuda, Replayer, \
        time_interleaved

    device = require_cuda()
    env = environment(device)
    target_s = args.target_s if args.target_s is not None else (0.1 if args.quick else 0.2)
    budget = args.budget_s if args.budget_s is not None else (110.0 if args.quick else 540.0)
    t0 = time.time()
    print(f"{env['device_name']}: torch {env['torch']}, triton {env['triton']}, {env['date_utc']}", flush=True)
    bw = copy_bandwidth(device)
    rbw = read_bandwidth(device)
    floor_gbps = {"copy": bw["gbps"], "read": rbw["gbps"], "max": max(bw["gbps"], rbw["gbps"])}[args.floor_bandwidth]
    print(f"copy bandwidth (read+write): {bw['gbps']:.0f} GB/s median; read-only: {rbw['gbps']:.0f} GB/s; "
          f"floor uses {floor_gbps:.0f} GB/s ({args.floor_bandwidth})", flush=True)
    ctx = Context(device=device, dtype=torch.bfloat16, seed=args.seed, replayer=Replayer, measure=time_interleaved,
                  floor_gbps=floor_gbps,
                  l2_bytes=l2_bytes(device), target_s=target_s,
                  baselines=() if args.no_baselines else ("sdpa-flash", "sdpa-cudnn"))
    tag = args.tag or "-".join(t for t in ("quick" if args.quick else "", "tune" if args.tune_segments else "",
                                           "points" if args.points else "") if t)
    out_dir = Path(args.out) if args.out else DEFAULT_OUT
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / (card_slug(env["device_name"]) + (f"-{tag}" if tag else "") + ".json")
    data = {"mode": "tune-segments" if args.tune_segments else ("quick" if args.quick else "sweep"),
            "seed": args.seed, "env": env, "copy_bandwidth": bw, "read_bandwidth": rbw,
            "floor_gbps": floor_gbps, "floor_bandwidth": args.floor_bandwidth,
            "target_s": target_s, "points": [], "tune": [], "skipped": []}

    def save():
        data["elapsed_s"] = time.time() - t0
        path.write_text(json.dumps(data, indent=1, default=str))

    kinds, key, runner, label = (("decode",), "tune", run_tune, "tune ") if args.tune_segments \
        else (None, "points", run_point, "")
    points = shapes.select(args.points, args.quick, kinds=kinds) if kinds else shapes.select(args.points, args.quick)
    for point in points:
        if time.time() - t0 > budget:
            data["skipped"].append(point.name)
            continue
        print(f"[{time.time() - t0:6.1f}s] {label}{point.name}: {point.describe()}", flush=True)
        data[key].append(runner(point, ctx, log=lambda s: print(s, flush=True)))
        save()
    bw_end = copy_bandwidth(device)
    data["copy_bandwidth_end"] = bw_end
    data["read_bandwidth_end"] = rbw_end = read_bandwidth(device)
    save()
    written = report.write_all(path)
    print()
    print(report.render_markdown(data))
    if data["skipped"]:
        print(f"\nSKIPPED (time budget {budget:.0f}s): {', '.join(data['skipped'])}")
    print(f"\nbandwidth at the end: copy {bw_end['gbps']:.0f} GB/s (start {bw['gbps']:.0f}), "
          f"read {rbw_end['gbps']:.0f} GB/s (start {rbw['gbps']:.0f})")
    print(f"wrote {path}; {written}; total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
