"""Report: table (markdown), target checks and plot, all derived from the results JSON.

Everything here reads only the JSON the sweep wrote, so it re-renders on any machine:

    python -m benchmarks.report benchmarks/results/h100-80gb-hbm3.json

writes ``<stem>.md`` and ``<stem>.png`` beside the JSON (the PNG needs matplotlib) and prints
the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .shapes import Target

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
def peer_names(data: dict) -> list[str]:
    """Columns beyond ours and SDPA, in run order: every --impl peer, then flex if it was on."""
    names = [p["name"] for p in data.get("peers") or []]
    flex_on = (data.get("flex") or {}).get("enabled") or any("flex" in (r.get("results") or {})
                                                             for r in data.get("points", []))
    return names + (["flex"] if flex_on else [])


def label(impl: str) -> str:
    return LABELS.get(impl) or (FLEX_LABEL if impl == "flex" else f"peer {impl}")


def us(rec: dict, impl: str) -> float | None:
    r = rec.get("results", {}).get(impl) or {}
    v = r.get("us")
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def pct_of_floor(rec: dict, impl: str) -> float | None:
    """Floor time over measured time, in percent: 100% means the call ran at the HBM roofline."""
    t, floor = us(rec, impl), rec.get("floor_us")
    return None if t is None or not floor else 100.0 * floor / t


def mark_above_floor(rec: dict) -> list[str]:
    """Flag (in rec's results) and list the implementations that ran faster than the floor allows."""
    floor, above = rec.get("floor_us"), []
    for impl, r in (rec.get("results") or {}).items():
        t = us(rec, impl)
        if floor and t is not None and t < floor:
            r["above_floor"] = True
            above.append(impl)
        else:
            r.pop("above_floor", None)
    return above


def mismatched(rec: dict, impl: str) -> bool:
    return impl in ((rec.get("check") or {}).get("mismatch") or {})


def fastest_peer(rec: dict, peers: list[str]) -> tuple[str | None, float | None]:
    """The fastest peer whose output passed the check (a wrong answer's speed is not a comparison)."""
    timed = {p: us(rec, p) for p in peers if us(rec, p) is not None and not mismatched(rec, p)}
    if not timed:
        return None, None
    best = min(timed, key=timed.get)
    return best, timed[best]


def speedup_vs_2d(rec: dict, impl: str) -> float | None:
    t, t2 = us(rec, impl), us(rec, "2d")
    return None if t is None or t2 is None else t2 / t


def tflops(rec: dict, impl: str) -> float | None:
    t = us(rec, impl)
    return None if t is None or not rec.get("flops") else rec["flops"] / (t * 1e-6) / 1e12


def target_status(rec: dict, data: dict | None = None) -> tuple[str, bool | None]:
    """The point's target, judged: "us" at most, "tflops" / "pct_floor" at least ``value``; a
    ``relative_to`` target is ``value`` times that point's heuristic TFLOP/s in ``data``."""
    tgt = rec.get("target")
    if not tgt:
        return "", None
    impl, metric, goal = tgt.get("impl", "heuristic"), tgt["metric"], tgt["value"]
    measured = {"us": us, "tflops": tflops, "pct_floor": pct_of_floor}[metric](rec, impl)
    ref_name = tgt.get("relative_to")
    if ref_name:
        ref = next((r for r in (data or {}).get("points", []) if r.get("name") == ref_name), None)
        ref_value = None if ref is None else tflops(ref, "heuristic")
        if ref_value is None:
            return f"{_target_text(tgt)}: not measured ({ref_name} not measured in this run)", None
        goal *= ref_value
    if measured is None:
        return f"{_target_text(tgt)}: not measured", None
    lower_is_better = metric == "us"
    met = measured <= goal if lower_is_better else measured >= goal
    unit = {"us": " us", "tflops": " TFLOP/s", "pct_floor": "% of floor"}[metric]
    got = f"{measured:.1f}{unit}" + (f" vs goal {goal:.1f}" if ref_name else "")
    if met:
        return f"{_target_text(tgt)}: met ({got})", True
    gap = measured / goal if lower_is_better else goal / measured
    return f"{_target_text(tgt)}: MISSED ({got}, {gap:.2f}x off)", False


def _target_text(tgt: dict) -> str:
    return Target(**tgt).describe()


def heuristic_vs_forced(rec: dict) -> tuple[float | None, bool | None]:
    """Heuristic time over the better forced path's (<= 1 + tolerance passes)."""
    h = us(rec, "heuristic")
    forced = [t for t in (us(rec, "2d"), us(rec, "3d")) if t is not None]
    if h is None or not forced:
        return None, None
    ratio = h / min(forced)
    return ratio, ratio <= 1.0 + HEURISTIC_TOLERANCE


# -- text ------------------------------------------------------------------------------------
def _f(v, fmt="{:.1f}", missing="n/a") -> str:
    return missing if v is None else fmt.format(v)


def _plan_text(rec: dict) -> str:
    path, segs = rec.get("heuristic_path"), rec.get("heuristic_segments")
    if path is None:
        return "?"
    return f"3D/{segs}" if path == "3d" else "2D"


def _time_cell(rec: dict, impl: str, suffix: str = "") -> str:
    t = us(rec, impl)
    if t is None:
        return "n/a"
    mark = ABOVE_FLOOR_MARK if rec.get("floor_us") and t < rec["floor_us"] else ""
    mark += MISMATCH_MARK if mismatched(rec, impl) else ""
    return f"{t:.1f}{mark}{suffix}"


def sweep_table(data: dict) -> str:
    peers = peer_names(data)
    peer_heads = "".join(f" {'flex' if p == 'flex' else p} us |" for p in peers)
    vs_peer = " heuristic vs fastest peer |" if peers else ""
    head = ("| point | heuristic plan | heuristic us | 2D us | 3D us (segs) | SDPA flash us | SDPA cuDNN us |"
            f"{peer_heads} floor us | heuristic % of floor | heuristic vs 2D | 3D vs 2D |{vs_peer} "
            "TFLOP/s (heuristic) | target |")
    cols = head.count("|") - 1
    lines = [head, "|" + "|".join(["---"] * cols) + "|"]
    for rec in data.get("points", []):
        if rec.get("error") and not rec.get("results"):
            lines.append(f"| {rec['name']} | error: {rec['error'][:120]} |" + " |" * (cols - 2))
            continue
        seg3 = rec.get("forced3d_segments")
        tf = _f(tflops(rec, "heuristic")) if rec.get("kind") != "decode" else ""
        tgt_text, _ = target_status(rec, data)
        cells = [rec["name"], _plan_text(rec), _time_cell(rec, "heuristic"), _time_cell(rec, "2d"),
                 _time_cell(rec, "3d", f" ({seg3})"), _time_cell(rec, "sdpa-flash"), _time_cell(rec, "sdpa-cudnn")]
        cells += [_time_cell(rec, p) for p in peers]
        cells += [_f(rec.get("floor_us")), _f(pct_of_floor(rec, "heuristic"), "{:.0f}%"),
                  _f(speedup_vs_2d(rec, "heuristic"), "{:.2f}x"), _f(speedup_vs_2d(rec, "3d"), "{:.2f}x")]
        if peers:
            best, t_best = fastest_peer(rec, peers)
            h = us(rec, "heuristic")
            cells.append("n/a" if best is None or h is None else f"{t_best / h:.2f}x ({best})")
        cells += [tf, tgt_text]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _tolerance(chk: dict, impl: str) -> float:
    """The check's tolerance for ``impl``: per implementation, or one number in older results."""
    tol = chk.get("tolerance", 0.05)
    return tol.get(impl, 0.05) if isinstance(tol, dict) else tol


def checks_text(data: dict) -> str:
    out = ["Targets:"]
    any_target = False
    for rec in data.get("points", []):
        text, _ = target_status(rec, data)
        if text:
            any_target = True
            out.append(f"- {rec['name']}: heuristic {text}")
    if not any_target:
        out.append("- (no target point in this run)")
    bs1 = [r for r in data.get("points", []) if r.get("series") == "bs1"]
    if bs1:
        out.append(f"Heuristic vs the better forced path on the batch-1 sweep (passes at <= {1 + HEURISTIC_TOLERANCE:.2f}x):")
        for rec in bs1:
            ratio, ok = heuristic_vs_forced(rec)
            if ratio is None:
                out.append(f"- {rec['name']}: not measured")
            else:
                best = "2D" if (us(rec, "2d") or math.inf) <= (us(rec, "3d") or math.inf) else "3D"
                out.append(f"- {rec['name']}: {ratio:.3f}x the better forced path ({best}) -> {'ok' if ok else 'SLOWER'}")
    peers = peer_names(data)
    if peers:
        out.append("Heuristic vs every peer (" + ", ".join(peers) + "; ratio = fastest peer's time / ours, "
                   "above 1x = ours faster):")
        for rec in data.get("points", []):
            best, t_best = fastest_peer(rec, peers)
            h = us(rec, "heuristic")
            if best is None or h is None:
                out.append(f"- {rec['name']}: not measured")
            else:
                verdict = "ours faster" if h < t_best else f"SLOWER than {best}"
                out.append(f"- {rec['name']}: {t_best / h:.2f}x vs {best} ({t_best:.1f} us) -> {verdict}")
    above = [(rec["name"], impl) for rec in data.get("points", []) for impl in (rec.get("above_floor") or [])]
    if above:
        out.append(f"Faster than the floor (marked {ABOVE_FLOOR_MARK}; the floor's measured bandwidth is below what "
                   "these reads achieved): " + ", ".join(f"{n} / {i}" for n, i in above))
    problems = []
    for rec in data.get("points", []):
        for impl, r in (rec.get("results") or {}).items():
            if r.get("us") is None and r.get("error"):
                problems.append(f"- {rec['name']} / {impl}: n/a: {r['error'][:300]}")
            elif r.get("note"):
                problems.append(f"- {rec['name']} / {impl}: {r['note'][:300]}")
        chk = rec.get("check") or {}
        mismatch = chk.get("mismatch") or {}
        for impl, d in (chk.get("max_abs_diff") or {}).items():
            if impl in mismatch:
                problems.append(f"- {rec['name']} / {impl}: OUTPUT MISMATCH vs {chk.get('reference')}: {mismatch[impl]}")
            elif d is not None and d > (tol := _tolerance(chk, impl)):
                problems.append(f"- {rec['name']} / {impl}: output differs from {chk.get('reference')} by {d:.3g} (tolerance {tol:g})")
        if rec.get("error"):
            problems.append(f"- {rec['name']}: {rec['error'][:300]}")
    if problems:
        out.append("Notes (unavailable implementations, fallbacks, failed checks):")
        out.extend(problems)
    return "\n".join(out)


def tune_table(data: dict) -> str:
    rows = data.get("tune") or []
    if not rows:
        return ""
    segs = sorted({int(s) for r in rows for s in (r.get("3d") or {})})
    head = "| point | heuristic plan | heuristic us | 2D us | " + " | ".join(f"S={s}" for s in segs) + " | best | heuristic / best |"
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        if r.get("error") and not r.get("2d"):
            lines.append(f"| {r['name']} | error: {r['error'][:120]} |" + " |" * (head.count("|") - 3))
            continue
        threed = r.get("3d") or {}
        cells = [("skip" if (threed.get(str(s)) or {}).get("skipped") else _f((threed.get(str(s)) or {}).get("us")))
                 for s in segs]
        best = r.get("best") or {}
        h = (r.get("heuristic") or {}).get("us")
        ratio = None if h is None or not best.get("us") else h / best["us"]
        plan = r.get("heuristic_plan") or {}
        plan_txt = "2D" if plan.get("path") == "2d" else f"3D/{plan.get('num_segments')}"
        lines.append("| " + " | ".join([
            r["name"], plan_txt, _f(h), _f((r.get("2d") or {}).get("us")), *cells,
            f"{best.get('config', '?')} ({_f(best.get('us'))})", _f(ratio, "{:.2f}x"),
        ]) + " |")
    return "\n".join(lines)


def header_text(data: dict) -> str:
    env = data.get("env", {})
    bw = data.get("copy_bandwidth") or {}
    lines = [
        f"Device: {env.get('device_name')} ({env.get('num_sms')} SMs, L2 {_mib(env.get('l2_bytes'))}); "
        f"torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda_runtime')}, cuDNN {env.get('cudnn')}",
        f"Date (UTC): {env.get('date_utc')}; command: `{env.get('command')}`; seed {data.get('seed')}; "
        f"commit {env.get('git_commit') or 'n/a'}; kernels sha256 {env.get('kernels_sha256_16')}",
    ]
    rbw = data.get("read_bandwidth") or {}
    bws = data.get("bandwidths")
    if bws:
        parts = [f"{n} {b['gbps']:.0f}" if b.get("gbps") else f"{n} failed ({str(b.get('error'))[:80]})"
                 for n, b in bws.items()]
        lines.append(f"Bandwidth (medians, GB/s): {', '.join(parts)} (copy counts read+write); floors use "
                     f"{data.get('floor_gbps', 0):.0f} GB/s, the best of {data.get('floor_bandwidth', 'max')} "
                     f"({data.get('floor_source')})")
    elif bw:
        lines.append(f"Bandwidth (medians): D2D copy {bw.get('gbps', 0):.0f} GB/s (read+write counted), "
                     f"read-only {rbw.get('gbps', 0):.0f} GB/s; floors use {data.get('floor_gbps', 0):.0f} GB/s "
                     f"({data.get('floor_bandwidth', 'copy')})")
    for p in data.get("peers") or []:
        lines.append(f"Peer `{p['name']}`: `{p.get('spec')}`" + (f" from {p['import_dir']}" if p.get("import_dir") else "")
                     + (f" - {p['error']}" if p.get("error") else ""))
    if data.get("elapsed_s") is not None:
        lines.append(f"Sweep wall time: {data['elapsed_s']:.0f} s")
    return "\n".join(lines)


def _mib(b) -> str:
    return "?" if not b else f"{b / 2**20:.0f} MiB"


def render_markdown(data: dict) -> str:
    parts = [f"# Paged-attention benchmark ({data.get('mode', 'sweep')})", "", header_text(data), ""]
    if data.get("points"):
        parts += [sweep_table(data), "", checks_text(data), ""]
    if data.get("tune"):
        parts += ["## Segment-count tuning (median us per call)", "", tune_table(data), "",
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
def render_png(data: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    recs = data.get("points") or []
    panels = [("bs1", "batch 1, Llama-3.1-8B heads (32/8x128)", "KV length (keys)"),
              ("bs@4k", "KV length 4,096, Llama-3.1-8B heads", "batch size (sequences)")]
    panels = [p for p in panels if any(r.get("series") == p[0] for r in recs)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 5.5), squeeze=False)
    styles = {"heuristic": ("C0", "o", "-"), "2d": ("C1", "s", "--"), "3d": ("C2", "^", "--"),
              "sdpa-flash": ("C3", "v", ":"), "sdpa-cudnn": ("C4", "D", ":")}
    peers = peer_names(data)
    for i, p in enumerate(peers):
        styles[p] = (f"C{5 + i % 5}", "PXhd*"[i % 5], "-.")
    for ax, (series, title, xlabel) in zip(axes[0], panels):
        rs = sorted((r for r in recs if r.get("series") == series), key=lambda r: r["x"])
        for impl in (*IMPLS, *peers):
            pts = [(r["x"], us(r, impl)) for r in rs if us(r, impl) is not None]
            if pts:
                color, marker, ls = styles[impl]
                ax.plot(*zip(*pts), color=color, marker=marker, linestyle=ls, label=label(impl), markersize=4)
        floor = [(r["x"], r["floor_us"]) for r in rs if r.get("floor_us")]
        if floor:
            ax.plot(*zip(*floor), color="black", linewidth=2, label="HBM floor (measured bandwidth)")
        tg = [(r["x"], r["target"]["value"]) for r in rs if r.get("target") and r["target"]["metric"] == "us"]
        if tg:
            ax.scatter(*zip(*tg), color="red", marker="x", s=60, zorder=5, label="target")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("latency per call (us)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    env = data.get("env", {})
    fig.suptitle(f"Paged-attention decode, bf16, block 16 - {env.get('device_name')}, torch {env.get('torch')}, "
                 f"triton {env.get('triton')}, {str(env.get('date_utc', ''))[:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_all(json_path: Path, png: bool = True) -> dict:
    """Re-render the markdown table (and PNG) next to ``json_path``; returns what was written."""
    json_path = Path(json_path)
    data = json.loads(json_path.read_text())
    md = json_path.with_suffix(".md")
    md.write_text(render_markdown(data) + "\n")
    written = {"markdown": str(md)}
    if png and data.get("points"):
        out = render_png(data, json_path.with_suffix(".png"))
        written["png"] = str(out) if out else "skipped: matplotlib not importable (re-render with python -m benchmarks.report)"
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Re-render a benchmark results JSON as a table and a PNG plot.")
    ap.add_argument("json", nargs="+", type=Path)
    ap.add_argument("--no-png", action="store_true")
    args = ap.parse_args(argv)
    for path in args.json:
        written = write_all(path, png=not args.no_png)
        data = json.loads(path.read_text())
        print(render_markdown(data))
        print(f"\nwrote {', '.join(f'{k}: {v}' for k, v in written.items())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
