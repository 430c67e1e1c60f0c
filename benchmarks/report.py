"""Report: table (markdown), target checks and plot, all derived from the results JSON.

Everything here reads only the JSON the sweep wrote, so it re-renders on any machine:

    python -m benchmarks.report benchmarks/results/h100-80gb-hbm3.json

writes ``<stem>.md`` and ``<stem>.png`` beside the JSON (the PNG needs matplotlib) and prints
the table.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from . import records
from .records import PointRecord, Result, Run

IMPLS = ("heuristic", "2d", "3d", "sdpa-flash", "sdpa-cudnn")
LABELS = {
    "heuristic": "ours (heuristic)",
    "2d": "ours, forced 2D",
    "3d": "ours, forced 3D",
    "sdpa-flash": "SDPA flash (contiguous)",
    "sdpa-cudnn": "SDPA cuDNN (contiguous)",
}
# Slack for "heuristic never slower than the better forced path": replay-to-replay noise.
HEURISTIC_TOLERANCE = 0.03
FLEX_LABEL = "FlexAttention (paged, torch)"
ABOVE_FLOOR_MARK = "*"  # a time under the floor (above 100% of it): the floor's bandwidth is not the card's limit
MISMATCH_MARK = "!"  # the output failed the check: the time is shown but not compared


# -- derived numbers -------------------------------------------------------------------------
def peer_names(run: Run) -> list[str]:
    """Columns beyond ours and SDPA, in run order: every --impl peer, then flex if it was on."""
    flex_on = run.flex or any("flex" in r.results for r in run.points)
    return [p.name for p in run.peers] + (["flex"] if flex_on else [])


def label(impl: str) -> str:
    return LABELS.get(impl) or (FLEX_LABEL if impl == "flex" else f"peer {impl}")


def fastest_peer(rec: PointRecord, peers: list[str]) -> tuple[str | None, float | None]:
    """The fastest peer whose output passed the check (a wrong answer's speed is not a comparison)."""
    timed = {p: rec.us(p) for p in peers if rec.us(p) is not None and not rec.mismatched(p)}
    if not timed:
        return None, None
    best = min(timed, key=timed.get)
    return best, timed[best]


def target_status(rec: PointRecord, run: Run | None = None) -> tuple[str, bool | None]:
    """The point's target, judged: "us" at most, "tflops" / "pct_floor" at least ``value``; a
    ``relative_to`` target is ``value`` times that point's heuristic TFLOP/s in ``run``."""
    tgt = rec.point.target
    if not tgt:
        return "", None
    goal = tgt.value
    measured = {"us": rec.us, "tflops": rec.tflops, "pct_floor": rec.pct_of_floor}[tgt.metric](tgt.impl)
    if tgt.relative_to:
        ref = run.point(tgt.relative_to) if run else None
        ref_value = None if ref is None else ref.tflops("heuristic")
        if ref_value is None:
            return f"{tgt.describe()}: not measured ({tgt.relative_to} not measured in this run)", None
        goal *= ref_value
    if measured is None:
        return f"{tgt.describe()}: not measured", None
    lower_is_better = tgt.metric == "us"
    met = measured <= goal if lower_is_better else measured >= goal
    unit = {"us": " us", "tflops": " TFLOP/s", "pct_floor": "% of floor"}[tgt.metric]
    got = f"{measured:.1f}{unit}" + (f" vs goal {goal:.1f}" if tgt.relative_to else "")
    if met:
        return f"{tgt.describe()}: met ({got})", True
    gap = measured / goal if lower_is_better else goal / measured
    return f"{tgt.describe()}: MISSED ({got}, {gap:.2f}x off)", False


def heuristic_vs_forced(rec: PointRecord) -> tuple[float | None, bool | None]:
    """Heuristic time over the better forced path's (<= 1 + tolerance passes)."""
    h = rec.us("heuristic")
    forced = [t for t in (rec.us("2d"), rec.us("3d")) if t is not None]
    if h is None or not forced:
        return None, None
    ratio = h / min(forced)
    return ratio, ratio <= 1.0 + HEURISTIC_TOLERANCE


# -- text ------------------------------------------------------------------------------------
def _f(v, fmt="{:.1f}", missing="n/a") -> str:
    return missing if v is None else fmt.format(v)


def _plan_text(plan: dict) -> str:
    if plan.get("path") is None:
        return "?"
    return "2D" if plan["path"] == "2d" else f"3D/{plan.get('num_segments')}"


def _time_cell(rec: PointRecord, impl: str, suffix: str = "") -> str:
    t = rec.us(impl)
    if t is None:
        return "n/a"
    floor = rec.point.floor_us
    mark = ABOVE_FLOOR_MARK if floor and t < floor else ""
    mark += MISMATCH_MARK if rec.mismatched(impl) else ""
    return f"{t:.1f}{mark}{suffix}"


def sweep_table(run: Run) -> str:
    peers = peer_names(run)
    peer_heads = "".join(f" {'flex' if p == 'flex' else p} us |" for p in peers)
    vs_peer = " heuristic vs fastest peer |" if peers else ""
    head = ("| point | heuristic plan | heuristic us | 2D us | 3D us (segs) | SDPA flash us | SDPA cuDNN us |"
            f"{peer_heads} floor us | heuristic % of floor | heuristic vs 2D | 3D vs 2D |{vs_peer} "
            "TFLOP/s (heuristic) | target |")
    cols = head.count("|") - 1
    lines = [head, "|" + "|".join(["---"] * cols) + "|"]
    for rec in run.points:
        name = rec.point.name
        if rec.error and not rec.results:
            lines.append(f"| {name} | error: {rec.error[:120]} |" + " |" * (cols - 2))
            continue
        seg3 = (rec.plans.get("3d") or {}).get("num_segments")
        tf = _f(rec.tflops("heuristic")) if rec.point.kind != "decode" else ""
        tgt_text, _ = target_status(rec, run)
        cells = [name, _plan_text(rec.heuristic_plan), _time_cell(rec, "heuristic"), _time_cell(rec, "2d"),
                 _time_cell(rec, "3d", f" ({seg3})"), _time_cell(rec, "sdpa-flash"), _time_cell(rec, "sdpa-cudnn")]
        cells += [_time_cell(rec, p) for p in peers]
        cells += [_f(rec.point.floor_us), _f(rec.pct_of_floor("heuristic"), "{:.0f}%"),
                  _f(rec.speedup_vs_2d("heuristic"), "{:.2f}x"), _f(rec.speedup_vs_2d("3d"), "{:.2f}x")]
        if peers:
            best, t_best = fastest_peer(rec, peers)
            h = rec.us("heuristic")
            cells.append("n/a" if best is None or h is None else f"{t_best / h:.2f}x ({best})")
        cells += [tf, tgt_text]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _notes(rec: PointRecord) -> list[str]:
    """Unavailable implementations, fallbacks, failed checks and the point's own failure."""
    name, out = rec.point.name, []
    for impl, r in rec.results.items():
        if r.us is None and r.error:
            out.append(f"- {name} / {impl}: n/a: {r.error[:300]}")
        elif r.note:
            out.append(f"- {name} / {impl}: {r.note[:300]}")
    for impl, r in rec.checked().items():
        if r.mismatch is not None:
            out.append(f"- {name} / {impl}: OUTPUT MISMATCH vs {rec.reference}: {r.mismatch}")
        elif r.max_abs_diff is not None and r.max_abs_diff > r.tolerance:
            out.append(f"- {name} / {impl}: output differs from {rec.reference} by {r.max_abs_diff:.3g} "
                       f"(tolerance {r.tolerance:g})")
    if rec.error:
        out.append(f"- {name}: {rec.error[:300]}")
    return out


def checks_text(run: Run) -> str:
    out = ["Targets:"]
    any_target = False
    for rec in run.points:
        text, _ = target_status(rec, run)
        if text:
            any_target = True
            out.append(f"- {rec.point.name}: heuristic {text}")
    if not any_target:
        out.append("- (no target point in this run)")
    bs1 = [r for r in run.points if r.point.series == "bs1"]
    if bs1:
        out.append(f"Heuristic vs the better forced path on the batch-1 sweep (passes at <= {1 + HEURISTIC_TOLERANCE:.2f}x):")
        for rec in bs1:
            ratio, ok = heuristic_vs_forced(rec)
            if ratio is None:
                out.append(f"- {rec.point.name}: not measured")
            else:
                best = "2D" if (rec.us("2d") or math.inf) <= (rec.us("3d") or math.inf) else "3D"
                out.append(f"- {rec.point.name}: {ratio:.3f}x the better forced path ({best}) -> {'ok' if ok else 'SLOWER'}")
    peers = peer_names(run)
    if peers:
        out.append("Heuristic vs every peer (" + ", ".join(peers) + "; ratio = fastest peer's time / ours, "
                   "above 1x = ours faster):")
        for rec in run.points:
            best, t_best = fastest_peer(rec, peers)
            h = rec.us("heuristic")
            if best is None or h is None:
                out.append(f"- {rec.point.name}: not measured")
            else:
                verdict = "ours faster" if h < t_best else f"SLOWER than {best}"
                out.append(f"- {rec.point.name}: {t_best / h:.2f}x vs {best} ({t_best:.1f} us) -> {verdict}")
    above = [(rec.point.name, impl) for rec in run.points for impl in rec.above_floor]
    if above:
        out.append(f"Faster than the floor (marked {ABOVE_FLOOR_MARK}; the floor's measured bandwidth is below what "
                   "these reads achieved): " + ", ".join(f"{n} / {i}" for n, i in above))
    problems = [line for rec in run.points for line in _notes(rec)]
    if problems:
        out.append("Notes (unavailable implementations, fallbacks, failed checks):")
        out.extend(problems)
    return "\n".join(out)


def tune_table(run: Run) -> str:
    if not run.tune:
        return ""
    segs = sorted({s for r in run.tune for s in r.segments})
    head = "| point | heuristic plan | heuristic us | 2D us | " + " | ".join(f"S={s}" for s in segs) + " | best | heuristic / best |"
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in run.tune:
        if r.error and r.forced_2d is None:
            lines.append(f"| {r.name} | error: {r.error[:120]} |" + " |" * (head.count("|") - 3))
            continue
        cells = ["skip" if x.skipped else _f(x.us) for x in (r.segments.get(s) or Result() for s in segs)]
        best, best_us = r.best()
        h = (r.heuristic or Result()).us
        ratio = None if h is None or not best_us else h / best_us
        lines.append("| " + " | ".join([
            r.name, _plan_text(r.heuristic_plan), _f(h), _f((r.forced_2d or Result()).us), *cells,
            f"{best or '?'} ({_f(best_us)})", _f(ratio, "{:.2f}x"),
        ]) + " |")
    return "\n".join(lines)


def _bandwidth_line(run: Run) -> str | None:
    bws = run.bandwidths
    if not bws:
        return None
    if run.floor_source is None:  # a run from before the floor named its source: a copy and torch.sum only
        copy, read = bws.get("copy"), bws.get("torch_sum")
        return (f"Bandwidth (medians): D2D copy {(copy.gbps if copy else None) or 0:.0f} GB/s (read+write counted), "
                f"read-only {(read.gbps if read else None) or 0:.0f} GB/s; floors use {run.floor_gbps or 0:.0f} GB/s "
                f"({run.floor_bandwidth})")
    parts = [f"{n} {b.gbps:.0f}" if b.gbps else f"{n} failed ({str(b.error)[:80]})" for n, b in bws.items()]
    return (f"Bandwidth (medians, GB/s): {', '.join(parts)} (copy counts read+write); floors use "
            f"{run.floor_gbps or 0:.0f} GB/s, the best of {run.floor_bandwidth} ({run.floor_source})")


def header_text(run: Run) -> str:
    env = run.env
    lines = [
        f"Device: {env.device_name} ({env.num_sms} SMs, L2 {_mib(env.l2_bytes)}); "
        f"torch {env.torch}, triton {env.triton}, CUDA {env.cuda_runtime}, cuDNN {env.cudnn}",
        f"Date (UTC): {env.date_utc}; command: `{env.command}`; seed {run.seed}; "
        f"commit {env.git_commit or 'n/a'}; kernels sha256 {env.kernels_sha256_16}",
    ]
    bandwidth = _bandwidth_line(run)
    if bandwidth:
        lines.append(bandwidth)
    for p in run.peers:
        lines.append(f"Peer `{p.name}`: `{p.spec}`" + (f" from {p.import_dir}" if p.import_dir else ""))
    if run.elapsed_s is not None:
        lines.append(f"Sweep wall time: {run.elapsed_s:.0f} s")
    return "\n".join(lines)


def _mib(b) -> str:
    return "?" if not b else f"{b / 2**20:.0f} MiB"


def render_markdown(run: Run) -> str:
    parts = [f"# Paged-attention benchmark ({run.mode})", "", header_text(run), ""]
    if run.points:
        parts += [sweep_table(run), "", checks_text(run), ""]
    if run.tune:
        parts += ["## Segment-count tuning (median us per call)", "", tune_table(run), "",
                  "S=N: forced 3D with N KV segments per sequence; skip: more segments than KV tiles. "
                  "best: the fastest of 2D and every S.", ""]
    parts += [LEGEND]
    return "\n".join(parts)


LEGEND = """Columns: times are medians per call in microseconds, CUDA-graph replay, inputs rotated over
several times the L2. "heuristic" is unified_attention with the planner's choice (plan column:
2D, or 3D/number of KV segments); "2D"/"3D" force the path (3D with the planner's segment count
for a forced split). SDPA columns run torch scaled_dot_product_attention on contiguous (not paged)
KV: an upper-bound reference. Peer columns (--impl NAME=...) run another implementation on the
same paged inputs (vllm: vLLM's Triton unified attention with its backend's 2D/3D settings);
"flex" is torch FlexAttention reading the same paged cache through a PagedAttention page table.
"floor" is the HBM floor: bytes that must move (K and V once, q and out once) over the bandwidth
measured in the same run: the best of a 1 GiB device-to-device copy (read+write bytes counted),
torch.sum and a streaming Triton read kernel, unless --floor-bandwidth says otherwise. A time
marked * ran faster than that floor (above 100%); one marked ! produced a wrong output (see the
notes) and is left out of "vs fastest peer". "% of floor" is
floor / time (100% = at the roofline). "vs 2D" is forced-2D time / time (above 1x = faster than
2D). TFLOP/s counts the causal mask's visible (query, key) pairs exactly: 4 x head_size x
query heads per pair."""


# -- plot ------------------------------------------------------------------------------------
def render_png(run: Run, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [("bs1", "batch 1, Llama-3.1-8B heads (32/8x128)", "KV length (keys)"),
              ("bs@4k", "KV length 4,096, Llama-3.1-8B heads", "batch size (sequences)")]
    panels = [p for p in panels if any(r.point.series == p[0] for r in run.points)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 5.5), squeeze=False)
    styles = {"heuristic": ("C0", "o", "-"), "2d": ("C1", "s", "--"), "3d": ("C2", "^", "--"),
              "sdpa-flash": ("C3", "v", ":"), "sdpa-cudnn": ("C4", "D", ":")}
    peers = peer_names(run)
    for i, p in enumerate(peers):
        styles[p] = (f"C{5 + i % 5}", "PXhd*"[i % 5], "-.")
    for ax, (series, title, xlabel) in zip(axes[0], panels):
        rs = sorted((r for r in run.points if r.point.series == series), key=lambda r: r.point.x)
        for impl in (*IMPLS, *peers):
            pts = [(r.point.x, r.us(impl)) for r in rs if r.us(impl) is not None]
            if pts:
                color, marker, ls = styles[impl]
                ax.plot(*zip(*pts), color=color, marker=marker, linestyle=ls, label=label(impl), markersize=4)
        floor = [(r.point.x, r.point.floor_us) for r in rs if r.point.floor_us]
        if floor:
            ax.plot(*zip(*floor), color="black", linewidth=2, label="HBM floor (measured bandwidth)")
        targets = [r.point for r in rs if r.point.target and r.point.target.metric == "us"]
        if targets:
            ax.scatter([p.x for p in targets], [p.target.value for p in targets], color="red", marker="x", s=60,
                       zorder=5, label="target")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("latency per call (us)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    env = run.env
    fig.suptitle(f"Paged-attention decode, bf16, block 16 - {env.device_name}, torch {env.torch}, "
                 f"triton {env.triton}, {str(env.date_utc or '')[:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_all(json_path: Path, png: bool = True) -> dict:
    """Re-render the markdown table (and PNG) next to ``json_path``; returns what was written."""
    json_path = Path(json_path)
    run = records.load(json_path)
    md = json_path.with_suffix(".md")
    md.write_text(render_markdown(run) + "\n")
    written = {"markdown": str(md)}
    if png and run.points:
        out = render_png(run, json_path.with_suffix(".png"))
        written["png"] = str(out) if out else "skipped: matplotlib not importable (re-render with python -m benchmarks.report)"
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Re-render a benchmark results JSON as a table and a PNG plot.")
    ap.add_argument("json", nargs="+", type=Path)
    ap.add_argument("--no-png", action="store_true")
    args = ap.parse_args(argv)
    for path in args.json:
        written = write_all(path, png=not args.no_png)
        print(render_markdown(records.load(path)))
        print(f"\nwrote {', '.join(f'{k}: {v}' for k, v in written.items())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
