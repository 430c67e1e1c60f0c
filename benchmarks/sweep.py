"""The benchmark sweep: kernels against the HBM floor and torch SDPA, one process, one JSON.

    python -m benchmarks.sweep                    # the whole sweep (about 2-4 min on an H100)
    python -m benchmarks.sweep --quick            # the subset with every target point
    python -m benchmarks.sweep --points decode-bs1-L13300,prefill-*
    python -m benchmarks.sweep --tune-segments    # decode and verify points: forced 3D at 2..128 segments vs 2D
    python -m benchmarks.sweep --dry-run [--interpret]   # CPU: build every point small, plan, render

Each point is caught on its own: a failure is recorded and the sweep goes on. The JSON is
rewritten after every point, so a run cut short still leaves its results; the table prints last.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Callable

# Light imports only up to argument parsing (torch, triton and the kernels load inside the
# functions that run), so --help and usage errors answer at once.
from . import records, report, shapes
from .records import DryRun, PointInfo, PointRecord, Result, Run, TuneRecord
from .shapes import H100_SMS, TUNE_SEGMENTS, Point

if TYPE_CHECKING:
    import torch

# Runs land outside the committed benchmarks/results/ (copy a run there on purpose), so a GPU
# run never overwrites the recorded results.
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "artifacts" / "benchmarks"
WORKSPACE_BUDGET_BYTES = 4 << 30  # forced 3D on prefill would otherwise want tens of GB of partials
CHECK_TOLERANCE = 0.05  # max |difference| between bf16 outputs of two correct implementations
FLOAT32_TOLERANCE = 1e-3  # the same in float32 (dry runs under the interpreter)
# Extra for fp8 queries: a peer may round P to e4m3 before P @ V (relative error <= 2^-4 per weight),
# so a row's error is at most 2^-4 * sum(p |v|) / sum(p); it peaks on rows that see few keys (early
# prefill positions, |v| up to ~5 here): 0.075 measured at the dry run's 64 keys. vLLM does (H200,
# prefill-fp8q-fp8kv-4x2048: 0.055 off). Ours rounded P to bf16 (unit roundoff 2^-9, times the
# largest |v|, ~5 for these N(0,1) draws: 0.0098; measured 0.0082 at the dry run's 64 keys, where
# e4m3 P gives 0.075; 0.016 on the H200, inside the bf16 base there); since ded9ec9 it rounds P to
# f16 (unit roundoff 2^-11, times the same ~5: 0.0024).
FP8_P_TOLERANCE = 0.1
OURS_P_TOLERANCE = 2.0 ** -11 * 5.0  # f16 P (the kernel's PV_F16 path)
OURS = ("heuristic", "2d", "3d")  # our columns (and "3d/<segments>" in tuning)
NOT_RUN = "not run (no GPU and no interpreter)"
PROG = "python -m benchmarks.sweep"


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
    peers: tuple = ()  # peers.Peer, loaded once per run
    flex: bool = False  # time the paged FlexAttention baseline
    flex_compile: bool = True  # torch.compile it (False: eager, the CPU dry run's wiring check)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:600]


def _workspace_bytes(num_tokens: int, num_q_heads: int, head_size: int, segments: int) -> int:
    """What ``paged_kernels.Workspace`` allocates for these sizes (built on the meta device: no memory)."""
    import paged_kernels

    ws = paged_kernels.Workspace(num_tokens, num_q_heads, head_size, segments, "meta")
    return sum(t.nbytes for t in (ws.acc, ws.max, ws.expsum, ws.merge_counters))


def _ours(inputs, ws, **kw) -> list[Callable[[], object]]:
    import paged_kernels

    def make(c: int):
        def call():
            return paged_kernels.unified_attention(
                inputs.q[c], inputs.k_cache, inputs.v_cache, inputs.out[c], inputs.cu_seqlens_q,
                inputs.max_seqlen_q, inputs.seqused_k, inputs.max_seqlen_k, inputs.softmax_scale, True, (-1, -1),
                inputs.block_tables[c], 0.0, **inputs.quant_kwargs(), **inputs.feature_kwargs(), workspace=ws, **kw)
        return call

    return [make(c) for c in range(inputs.copies)]


def _poison(inputs) -> None:
    """NaN in every output copy, so an implementation that leaves rows unwritten fails the check
    instead of passing on what the previous implementation wrote there."""
    for o in inputs.out:
        o.fill_(float("nan"))


def _compare(out: torch.Tensor, ref: torch.Tensor, tolerance: float) -> tuple[float | None, str | None]:
    """Max |out - ref| (None if not finite) and the mismatch, if any, in words."""
    import torch

    finite = torch.isfinite(out)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        return None, f"{bad} of {out.numel()} outputs are NaN/inf"
    diff = float((out - ref).abs().max())
    return diff, (f"max |diff| {diff:.3g} > tolerance {tolerance:g}" if diff > tolerance else None)


def _time_peers(ctx: Context, inputs, runners: dict, results: dict[str, Result], outputs: dict) -> None:
    """Build and capture every --impl peer on this point; a peer that fails is recorded with its reason."""
    from .peers import PeerUnsupported

    for peer in ctx.peers:
        name = peer.spec.name
        try:
            built = peer.build(inputs)
        except PeerUnsupported as exc:
            results[name] = Result(error=str(exc), unavailable=True)
            continue
        except Exception as exc:  # noqa: BLE001
            results[name] = Result(error=_reason(exc))
            _cleanup(ctx)
            continue
        results[name] = Result(config=built.config)
        if not ctx.run_ours:
            results[name].error = NOT_RUN
            continue
        _poison(inputs)
        if _prepare(ctx, runners, results, name, built.calls):  # the calls hold their buffers
            outputs[name] = inputs.out[0].float().clone()


def _time_flex(ctx: Context, inputs, runners: dict, results: dict[str, Result], outputs: dict) -> None:
    """The paged FlexAttention baseline, or the reason it cannot run here."""
    from .flex import FlexUnavailable, build_flex, reset_compile_cache

    try:
        if ctx.flex_compile:
            reset_compile_cache()
        base = build_flex(inputs, compile=ctx.flex_compile)
    except FlexUnavailable as exc:
        results["flex"] = Result(error=str(exc), unavailable=True)
        return
    except Exception as exc:  # noqa: BLE001
        results["flex"] = Result(error=f"building the flex call failed: {_reason(exc)}")
        _cleanup(ctx)
        return
    results["flex"] = Result(config=base.config)
    if _prepare(ctx, runners, results, "flex", base.calls()):
        try:
            outputs["flex"] = base.output(0).float()
        except Exception as exc:  # noqa: BLE001
            results["flex"].add_note(f"output check skipped: {_reason(exc)}")


def _plan_dict(plan) -> dict:
    d = dataclasses.asdict(plan)
    d["grid"] = list(d["grid"])
    d["reduce_grid"] = None if d["reduce_grid"] is None else list(d["reduce_grid"])
    return d


def _prepare(ctx: Context, runners: dict, results: dict[str, Result], name: str, calls) -> bool:
    """Warm up and capture ``calls`` as ``runners[name]``; on failure record the reason instead."""
    try:
        runners[name] = ctx.replayer(calls)
        return True
    except Exception as exc:  # noqa: BLE001 - one implementation failing must not stop the point
        if ctx.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        results[name] = Result(error=_reason(exc))
        return False


def _measure_all(ctx: Context, runners: dict, results: dict[str, Result]) -> None:
    """Interleaved timing of every captured runner; results[name] gets us, timing and any note."""
    try:
        timings = ctx.measure(runners, target_s=ctx.target_s)
        for name, t in timings.items():
            r = results.setdefault(name, Result())
            r.us, r.timing = t.median_us, t
            if t.note:
                r.add_note(t.note)
    except Exception as exc:  # noqa: BLE001
        for name in runners:
            r = results.setdefault(name, Result())
            r.us, r.error = None, f"interleaved timing failed: {_reason(exc)}"
    finally:
        for r in runners.values():
            r.close()
        runners.clear()


def _free_memory(ctx: Context) -> int | None:
    if ctx.device.type != "cuda":
        return None
    import torch

    free, _ = torch.cuda.mem_get_info(ctx.device)
    return free


def _cleanup(ctx: Context) -> None:
    import gc

    gc.collect()
    if ctx.device.type == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def check_tolerance(point: Point, impl: str, float32: bool = False) -> float:
    """Max |out - reference| a correct output of ``impl`` may show: bf16 rounding (float32 dry runs:
    1e-3), plus, with fp8 queries, the rounding of the probabilities before P @ V (the reference,
    SDPA on the dequantized q/K/V, keeps them exact): to f16 in our kernels, possibly to e4m3 in a
    peer's. KV quantization adds nothing: the reference reads the same dequantized values."""
    base = FLOAT32_TOLERANCE if float32 else CHECK_TOLERANCE
    if point.q_format != "fp8":
        return base
    ours = impl in OURS or impl.startswith("3d/")
    return base + (OURS_P_TOLERANCE if ours else FP8_P_TOLERANCE)


def _quantized_reference(name: str, inputs, results: dict[str, Result], outputs: dict, rec: PointRecord) -> None:
    """SDPA cannot take a quantized point: record it n/a, and (the first backend that runs) compute
    the check's reference output on the dequantized values, untimed."""
    from .baselines import build_sdpa

    point = inputs.point
    r = results[name] = Result(unavailable=True, error=f"SDPA takes no {point.formats} inputs; not timed")
    if "reference" in outputs:
        return
    try:
        outputs["reference"] = build_sdpa(name, inputs, copies=1).output(0).float()
        rec.reference = f"{name} on the dequantized inputs (untimed)"
        r.error += "; its output on the dequantized inputs is the check's reference"
    except Exception as exc:  # noqa: BLE001 - no reference: the check falls back to forced 2D
        r.error += f"; reference failed: {_reason(exc)}"


def run_point(point: Point, ctx: Context, log=print) -> PointRecord:
    """Time heuristic, forced 2D, forced 3D and the SDPA baselines on one point; check outputs agree."""
    import paged_kernels
    from .baselines import BaselineUnavailable, build_sdpa
    from .inputs import build_inputs
    from .timing import rotation_copies

    copies = rotation_copies(point.cache_bytes(), ctx.l2_bytes, max_copies=ctx.max_copies)
    rec = PointRecord(point=PointInfo.of(point, ctx.floor_gbps), copies=copies)
    t_start = time.time()
    inputs = None
    outputs: dict[str, torch.Tensor] = {}
    try:
        free = _free_memory(ctx)
        need = copies * (point.cache_bytes() + point.qo_bytes()) * 2  # ours + the baselines' dense copies
        if free is not None and need > 0.9 * free:
            rec.copies = copies = max(1, int(copies * 0.9 * free / need))
        inputs = build_inputs(point, copies, ctx.device, ctx.dtype, ctx.seed)
        q0, k0, cu = inputs.q[0], inputs.k_cache, inputs.cu_seqlens_q
        mq, mk = inputs.max_seqlen_q, inputs.max_seqlen_k
        quant = {"kv_quant_mode": inputs.quant_kwargs().get("kv_quant_mode")}  # per-token-head plans differ
        heur = paged_kernels.make_plan(q0, k0, cu, mq, mk, **quant)
        forced3 = paged_kernels.make_plan(q0, k0, cu, mq, mk, split_kv=True, **quant)
        ws_segments = forced3.num_segments
        while ws_segments > 2 and _workspace_bytes(point.num_tokens, point.num_q_heads, point.head_size, ws_segments) > WORKSPACE_BUDGET_BYTES:
            ws_segments //= 2
        if heur.path == "3d":
            ws_segments = max(ws_segments, heur.num_segments)
        ws = paged_kernels.Workspace(point.num_tokens, point.num_q_heads, point.head_size, ws_segments, ctx.device)
        plans = {
            "heuristic": paged_kernels.make_plan(q0, k0, cu, mq, mk, workspace=ws, **quant),
            "2d": paged_kernels.make_plan(q0, k0, cu, mq, mk, split_kv=False, workspace=ws, **quant),
            "3d": paged_kernels.make_plan(q0, k0, cu, mq, mk, split_kv=True, workspace=ws, **quant),
        }
        rec.plans = {k: _plan_dict(v) for k, v in plans.items()}
        results: dict[str, Result] = {}
        runners: dict = {}
        bases = []
        for impl, kw in (("heuristic", {}), ("2d", {"split_kv": False}), ("3d", {"split_kv": True})):
            if not ctx.run_ours:
                results[impl] = Result(error=NOT_RUN)
                continue
            _poison(inputs)
            if _prepare(ctx, runners, results, impl, _ours(inputs, ws, **kw)):
                outputs[impl] = inputs.out[0].float().clone()  # the warm-up computed copy 0
        if plans["3d"].num_segments < forced3.num_segments:
            results.setdefault("3d", Result()).add_note(
                f"planner wants {forced3.num_segments} segments for a forced split; capped at "
                f"{plans['3d'].num_segments} by the {WORKSPACE_BUDGET_BYTES >> 30} GiB workspace budget")
        for name in ctx.baselines:
            if point.quantized:
                _quantized_reference(name, inputs, results, outputs, rec)
                continue
            try:
                base = build_sdpa(name, inputs)
            except BaselineUnavailable as exc:
                results[name] = Result(error=str(exc))
                continue
            except Exception as exc:  # noqa: BLE001
                results[name] = Result(error=_reason(exc))
                _cleanup(ctx)
                continue
            bases.append(base)
            results[name] = Result(config=base.note, note=base.note if base.expanded else None)
            if _prepare(ctx, runners, results, name, base.calls()) and "reference" not in outputs:
                outputs["reference"] = base.output(0).float()
                rec.reference = name
        _time_peers(ctx, inputs, runners, results, outputs)
        if ctx.flex:
            _time_flex(ctx, inputs, runners, results, outputs)
        _measure_all(ctx, runners, results)
        del bases
        order = ("heuristic", "2d", "3d", *ctx.baselines, *(p.spec.name for p in ctx.peers), "flex")
        rec.results = {k: results[k] for k in order if k in results}
        rec.mark_above_floor()
        for name, r in rec.results.items():
            log(f"  {point.name:28s} {name:11s} {_fmt(r)}")

        ref_name = "reference" if "reference" in outputs else ("2d" if "2d" in outputs else None)
        if ref_name:
            if rec.reference is None:
                rec.reference = ref_name
            for impl, o in outputs.items():
                if impl == ref_name:
                    continue
                r = rec.results.setdefault(impl, Result())
                r.tolerance = check_tolerance(point, impl)
                r.max_abs_diff, r.mismatch = _compare(o, outputs[ref_name], r.tolerance)
    except Exception as exc:  # noqa: BLE001 - the point fails, the sweep goes on
        rec.error = _reason(exc)
        rec.traceback = traceback.format_exc()[-2000:]
        log(f"  {point.name}: FAILED {rec.error}")
    finally:
        del inputs, outputs
        _cleanup(ctx)
    rec.elapsed_s = round(time.time() - t_start, 2)
    return rec


def run_tune(point: Point, ctx: Context, log=print) -> TuneRecord:
    """Forced 2D and forced 3D at each segment count in TUNE_SEGMENTS (plus the heuristic)."""
    import paged_kernels
    from .inputs import build_inputs
    from .timing import rotation_copies

    copies = rotation_copies(point.cache_bytes(), ctx.l2_bytes, max_copies=ctx.max_copies)
    rec = TuneRecord(name=point.name, description=point.describe(), series=point.series, x=point.x_value, copies=copies)
    inputs = None
    t_start = time.time()
    try:
        inputs = build_inputs(point, copies, ctx.device, ctx.dtype, ctx.seed)
        ws = paged_kernels.Workspace(point.num_tokens, point.num_q_heads, point.head_size, max(TUNE_SEGMENTS), ctx.device)
        q0, k0, cu = inputs.q[0], inputs.k_cache, inputs.cu_seqlens_q
        heur = paged_kernels.make_plan(q0, k0, cu, inputs.max_seqlen_q, inputs.max_seqlen_k, workspace=ws,
                                 kv_quant_mode=inputs.quant_kwargs().get("kv_quant_mode"))
        rec.heuristic_plan = _plan_dict(heur)
        tiles = math.ceil(point.max_seqlen_k / heur.tile_size)
        runners: dict = {}
        results: dict[str, Result] = {}
        if ctx.run_ours:
            _prepare(ctx, runners, results, "heuristic", _ours(inputs, ws))
            _prepare(ctx, runners, results, "2d", _ours(inputs, ws, split_kv=False))
            for s in TUNE_SEGMENTS:
                if s <= tiles:
                    _prepare(ctx, runners, results, f"3d/{s}", _ours(inputs, ws, split_kv=True, num_segments=s))
            _measure_all(ctx, runners, results)
        rec.heuristic, rec.forced_2d = results.get("heuristic"), results.get("2d")
        for s in TUNE_SEGMENTS:
            if s > tiles:
                rec.segments[s] = Result(skipped=f"{s} segments > {tiles} KV tiles")
            elif f"3d/{s}" in results:
                rec.segments[s] = results[f"3d/{s}"]
        line = "  ".join(f"{k}={v.us:.1f}" for k, v in results.items() if k != "heuristic" and v.us is not None)
        log(f"  {point.name:28s} heuristic={_fmt(rec.heuristic or Result())} {line}")
    except Exception as exc:  # noqa: BLE001
        rec.error = _reason(exc)
        rec.traceback = traceback.format_exc()[-2000:]
        log(f"  {point.name}: FAILED {rec.error}")
    finally:
        del inputs
        _cleanup(ctx)
    rec.elapsed_s = round(time.time() - t_start, 2)
    return rec


def _gbps(b) -> str:
    return f"{b.gbps:.0f} GB/s" if b.gbps else "failed"


def _fmt(r: Result) -> str:
    if r.us is None:
        return f"n/a ({(r.error or r.skipped or '?')[:150]})"
    t = r.timing
    extra = f" [{t.mode}, {t.copies} copies, {t.replays} replays]" if t else ""
    return f"{r.us:9.2f} us{extra}"


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


def _fake_results(run: Run) -> Run:
    """Plausible numbers in place of the dry run's placeholder timings, so the report has content."""
    rng = __import__("random").Random(0)
    for rec in run.points:
        info = rec.point
        base = max(info.floor_us or 1.0, info.flops / 400e12 * 1e6) + 4.0
        for impl, factor in (("heuristic", 1.2), ("2d", 2.5 if info.kind == "decode" else 1.2), ("3d", 1.3),
                             ("sdpa-flash", 1.6), ("sdpa-cudnn", 1.5)):
            r = rec.results.setdefault(impl, Result())
            if r.unavailable or (info.quantized and impl.startswith("sdpa")):
                continue  # SDPA cannot run a quantized point: its n/a (and reason) show
            r.us, r.error = base * factor * (1 + 0.05 * rng.random()), None
        # Peers and flex get a placeholder time unless they really failed (then the reason shows).
        for impl in [p.name for p in run.peers] + ["flex"]:
            r = rec.results.get(impl)
            if r is not None and (r.us is not None or r.error == NOT_RUN):
                r.us, r.error = base * (0.9 + rng.random()), None
        rec.mark_above_floor()
    for rec in run.tune:
        rec.heuristic, rec.forced_2d = Result(us=10.0), Result(us=20.0)
        for s in TUNE_SEGMENTS:
            rec.segments.setdefault(s, Result()).us = 10.0 + abs(math.log2(s) - 4)
    return run


def _dry_run_failures(rec: PointRecord, point: Point, peers: tuple, interpret: bool) -> list[str]:
    """What went wrong at a dry-run point."""
    failures = [f"FAILED: {rec.error}"] if rec.error else []
    # float32 on both sides: a correct implementation agrees far below the bf16 tolerance
    bad = {k: (r.mismatch if r.max_abs_diff is None else r.max_abs_diff) for k, r in rec.checked().items()
           if r.max_abs_diff is None or r.max_abs_diff > check_tolerance(point, k, float32=True)}
    if bad:
        failures.append(f"MISMATCH vs {rec.reference}: {bad}")
    failures += [f"{impl} failed: {r.error}" for impl, r in rec.results.items()
                 if r.us is None and not r.unavailable and (interpret or impl == "flex")]
    for peer in peers:
        r = rec.results.get(peer.spec.name) or Result()
        if not interpret and not r.unavailable and r.error != NOT_RUN:
            failures.append(f"{peer.spec.name} adapter failed: {r.error}")
    return failures


def dry_run(args) -> int:
    """Build every point small on CPU, plan it (CPU and an H100 preview), render a fake report."""
    import torch

    import paged_kernels
    from .timing import environment

    interpret = args.interpret
    ctx = Context(device=torch.device("cpu"), dtype=torch.float32, seed=args.seed,
                  replayer=lambda calls: _FakeReplayer(calls, interpret), measure=_fake_measure, floor_gbps=3000.0, l2_bytes=256 << 10,
                  target_s=0.0, baselines=() if args.no_baselines else ("sdpa-flash",),
                  run_ours=interpret, max_copies=2, peers=_load_peers(args), flex=args.flex, flex_compile=False)
    points = shapes.select(args.points, args.quick)
    print(f"dry run: {len(points)} points, CPU, float32, interpreter={'on' if interpret else 'off'}, "
          f"peers {[p.spec.name for p in ctx.peers] or 'none'}, flex {'on (eager)' if ctx.flex else 'off'}")
    run = Run(mode="dry-run", seed=args.seed, env=environment(None), floor_gbps=ctx.floor_gbps,
              peers=[p.describe() for p in ctx.peers], flex=ctx.flex)
    failures = 0
    for point in points:
        h100 = paged_kernels.plan_launch(
            num_tokens=point.num_tokens, num_seqs=point.num_seqs, max_seqlen_q=point.max_seqlen_q,
            max_seqlen_k=point.max_seqlen_k, num_q_heads=point.num_q_heads, num_kv_heads=point.num_kv_heads,
            head_size=point.head_size, num_sms=H100_SMS)
        h100_split = paged_kernels.plan_launch(
            num_tokens=point.num_tokens, num_seqs=point.num_seqs, max_seqlen_q=point.max_seqlen_q,
            max_seqlen_k=point.max_seqlen_k, num_q_heads=point.num_q_heads, num_kv_heads=point.num_kv_heads,
            head_size=point.head_size, num_sms=H100_SMS, split_kv=True)
        factor = max(1, math.ceil(point.max_seqlen_k / (64 if interpret else 256)))
        small = point.scaled(factor)
        if interpret and small.num_seqs > 16:  # the interpreter pays per program: keep the grid small
            small = dataclasses.replace(small, seqs=small.seqs[-16:])
        rec = run_point(small, ctx, log=lambda *_: None)
        rec.point = PointInfo.of(point, ctx.floor_gbps)  # plot and floors at full scale
        rec.dry_run = DryRun(h100_path=h100.path, h100_segments=h100.num_segments,
                             h100_forced3d_segments=h100_split.num_segments, h100_reason=h100.reason,
                             divided_by=factor, small=small.describe())
        problems = _dry_run_failures(rec, point, ctx.peers, interpret)
        failures += len(problems)
        diffs = {k: ("nan" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}") for k, r in rec.checked().items()}
        print(f"  {point.name:28s} H100 plan {h100.path}/{h100.num_segments:<3d} (forced 3D {h100_split.num_segments:3d}) "
              f"small {small.describe()[:60]:60s} diffs {diffs} {problems[-1] if problems else 'ok'}")
        for name in [p.spec.name for p in ctx.peers] + (["flex"] if ctx.flex else []):
            r = rec.results.get(name) or Result()
            print(f"  {'':28s} {name}: {r.config or ''} {('[' + r.error + ']') if r.error else ''}")
        run.points.append(rec)
    if args.tune_segments:
        for point in [p for p in points if p.kind == "decode"][:2]:
            run.tune.append(run_tune(point.scaled(max(1, point.max_seqlen_k // 256)), ctx, log=lambda *_: None))
    out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-dry-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "dry-run.json"
    _fake_results(run).save(path)
    written = report.write_all(path)
    print(report.render_markdown(records.load(path)))
    print(f"\ndry run wrote {path} and {written}; {failures} failure(s)")
    return 1 if failures else 0


def _load_peers(args) -> tuple:
    """Load every --impl peer once (importing its module); one that cannot load is a usage error."""
    from .peers import load_or_exit

    peers = load_or_exit(PROG, args.impl_specs)
    for p in peers:
        print(f"peer {p.spec.name}: {p.spec.target}" + (f" (from {p.spec.import_dir})" if p.spec.import_dir else "")
              + f", style {p.style}", flush=True)
    return peers


# -- main ------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the quick subset (every target point; about 1 min)")
    ap.add_argument("--out", default=None, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--points", default=None, help="comma-separated point names; 'prefix*' selects by prefix")
    ap.add_argument("--tune-segments", action="store_true",
                    help="time forced 3D at each of 2..128 segments and forced 2D on the decode and verify points (only that)")
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
    ap.add_argument("--impl", action="append", default=[], metavar="NAME=MODULE:FUNC",
                    help="time a peer implementation beside ours (repeatable): NAME=MODULE:FUNC or "
                         "NAME=path/to/file.py:FUNC taking the suite's --attn-impl positional arguments; "
                         "'vllm' loads vLLM's Triton unified attention from ../shared/peers/vllm "
                         "(or $VLLM_PEER_DIR) with its backend's settings")
    ap.add_argument("--flex", action=argparse.BooleanOptionalAction, default=None,
                    help="time torch FlexAttention on the paged cache (PagedAttention page table); default on "
                         "for GPU runs (it compiles once per point), off for --dry-run (eager flex is slow on CPU)")
    ap.add_argument("--tag", default=None, help="file-name suffix (default: quick/tune/points)")
    ap.add_argument("--list", action="store_true", help="list the points and exit")
    args = ap.parse_args(argv)
    if args.flex is None:
        args.flex = not args.dry_run
    from .peers import specs_or_exit

    args.impl_specs = specs_or_exit(ap, args.impl)
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

    import torch

    from .timing import card_slug, environment, floor_gbps as pick_floor, l2_bytes, measure_bandwidths, \
        require_cuda, Replayer, time_interleaved

    peers = () if args.tune_segments else _load_peers(args)  # a bad --impl fails before any GPU work
    device = require_cuda()
    env = environment(device)
    target_s = args.target_s if args.target_s is not None else (0.1 if args.quick else 0.2)
    flex = args.flex and not args.tune_segments
    # flex compiles once per point (tens of seconds): give a run with it (or peers) more time.
    budget = args.budget_s if args.budget_s is not None else \
        (110.0 if args.quick else 540.0) * (3 if flex or peers else 1)
    t0 = time.time()
    print(f"{env.device_name}: torch {env.torch}, triton {env.triton}, {env.date_utc}", flush=True)
    bws = measure_bandwidths(device)
    floor_gbps, floor_source = pick_floor(bws, args.floor_bandwidth)
    print("bandwidths (medians): " + "; ".join(
        f"{n} {b.gbps:.0f} GB/s" if b.gbps else f"{n} failed ({b.error})" for n, b in bws.items())
          + f"; floor uses {floor_gbps:.0f} GB/s ({floor_source}, --floor-bandwidth {args.floor_bandwidth})", flush=True)
    ctx = Context(device=device, dtype=torch.bfloat16, seed=args.seed, replayer=Replayer, measure=time_interleaved,
                  floor_gbps=floor_gbps,
                  l2_bytes=l2_bytes(device), target_s=target_s,
                  baselines=() if args.no_baselines else ("sdpa-flash", "sdpa-cudnn"),
                  peers=peers, flex=flex, flex_compile=True)
    tag = args.tag or "-".join(t for t in ("quick" if args.quick else "", "tune" if args.tune_segments else "",
                                           "points" if args.points else "") if t)
    out_dir = Path(args.out) if args.out else DEFAULT_OUT
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / (card_slug(env.device_name) + (f"-{tag}" if tag else "") + ".json")
    run = Run(mode="tune-segments" if args.tune_segments else ("quick" if args.quick else "sweep"),
              seed=args.seed, env=env, floor_gbps=floor_gbps, floor_bandwidth=args.floor_bandwidth,
              floor_source=floor_source, bandwidths=bws, peers=[p.describe() for p in peers], flex=flex,
              flex_compiled=True, target_s=target_s)

    def save():
        run.elapsed_s = time.time() - t0
        run.save(path)

    kinds, collected, runner, label = (("decode", "verify"), run.tune, run_tune, "tune ") if args.tune_segments \
        else (None, run.points, run_point, "")
    points = shapes.select(args.points, args.quick, kinds=kinds) if kinds else shapes.select(args.points, args.quick)
    for point in points:
        if time.time() - t0 > budget:
            run.skipped.append(point.name)
            continue
        print(f"[{time.time() - t0:6.1f}s] {label}{point.name}: {point.describe()}", flush=True)
        collected.append(runner(point, ctx, log=lambda s: print(s, flush=True)))
        save()
    run.bandwidths_end = bws_end = measure_bandwidths(device)
    save()
    written = report.write_all(path)
    print()
    print(report.render_markdown(run))
    if run.skipped:
        print(f"\nSKIPPED (time budget {budget:.0f}s): {', '.join(run.skipped)}")
    print("\nbandwidth at the end (start): " + "; ".join(
        f"{n} {_gbps(bws_end[n])} ({_gbps(bws[n])})" for n in bws))
    print(f"wrote {path}; {written}; total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
