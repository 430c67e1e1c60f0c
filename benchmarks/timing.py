"""Timing: CUDA-graph capture and replay, medians, input rotation against L2, copy bandwidth.

A measurement captures a sequence of calls (one per rotated input copy, cycled up to a minimum
count) into one ``torch.cuda.CUDAGraph``, replays the graph many times, times every replay with
CUDA events and reports the median per call. Rotating inputs whose combined size is several
times the L2 makes every call read its operands from HBM, as a layer of a real model does.
If capture fails the same sequence is timed eagerly and the result says so.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

from .records import Bandwidth, Environment, Timing

H100_L2_BYTES = 50 * 1024 * 1024


def require_cuda() -> torch.device:
    if not torch.cuda.is_available():
        raise SystemExit(
            "benchmarks: timing needs a CUDA GPU and none is visible (torch.cuda.is_available() is False). "
            "Use --dry-run on a CPU machine, or run on the GPU machine.")
    return torch.device("cuda", torch.cuda.current_device())


def l2_bytes(device: torch.device | None = None) -> int:
    if device is None or device.type != "cuda":
        return H100_L2_BYTES
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 0) or H100_L2_BYTES)


def rotation_copies(copy_bytes: int, l2: int, *, l2_multiple: int = 4, max_copies: int = 128) -> int:
    """Input copies to cycle so that one pass touches ``l2_multiple`` x L2 (1 if a copy already does)."""
    if copy_bytes <= 0:
        return 1
    return max(1, min(max_copies, math.ceil(l2_multiple * l2 / copy_bytes)))


def _quantile(sorted_vals: Sequence[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    pos = q * (len(sorted_vals) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def summarize(per_call_us: Sequence[float], **meta) -> Timing:
    vals = sorted(per_call_us)
    return Timing(median_us=statistics.median(vals), p20_us=_quantile(vals, 0.2), p80_us=_quantile(vals, 0.8),
                  min_us=vals[0], replays=len(vals), **meta)


class Replayer:
    """Calls warmed up and captured into one CUDA graph (or, if capture fails, replayed eagerly).

    Every callable runs once eagerly first (Triton compiles, cuDNN plans, errors surface here,
    outside capture); then the sequence, cycled to at least ``min_calls`` calls, is captured.
    """

    def __init__(self, calls: Sequence[Callable[[], object]], *, min_calls: int = 8, use_graph: bool = True):
        if not calls:
            raise ValueError("Replayer: nothing to time")
        self.copies = len(calls)
        self.sequence = [calls[i % self.copies] for i in range(max(self.copies, min_calls))]
        self.note = ""
        self.graph = None
        for fn in calls:
            fn()
        torch.cuda.synchronize()
        if use_graph:
            try:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for fn in calls:
                        fn()
                torch.cuda.current_stream().wait_stream(side)
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    for fn in self.sequence:
                        fn()
                torch.cuda.synchronize()
                self.graph = graph
            except Exception as exc:  # capture unsupported for this call: time eagerly, say so
                self.note = (f"graph capture failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                             "eager timing")
                torch.cuda.synchronize()
        self.mode = "graph" if self.graph is not None else "eager"

    @property
    def calls_per_replay(self) -> int:
        return len(self.sequence)

    def replay(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            for fn in self.sequence:
                fn()

    def close(self) -> None:
        self.graph = None
        self.sequence = []


def time_interleaved(replayers: dict[str, Replayer], *, target_s: float = 0.2, min_rounds: int = 10,
                     max_rounds: int = 300, warmup_rounds: int = 3) -> dict[str, Timing]:
    """Median microseconds per call of each replayer, measured in interleaved rounds.

    Each round replays every replayer once, alternating the order between rounds, so clock
    ramps, thermal drift and what the previous kernel left in L2 fall on all of them alike.
    ``target_s`` is device time per replayer.
    """
    if not replayers:
        return {}
    names = list(replayers)
    for _ in range(warmup_rounds):
        for n in names:
            replayers[n].replay()
    torch.cuda.synchronize()
    t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0.record()
    for n in names:  # pilot round, sizes the measurement
        replayers[n].replay()
    t1.record()
    torch.cuda.synchronize()
    per_round_s = max(t0.elapsed_time(t1) / 1e3, 1e-7)
    rounds = int(min(max_rounds, max(min_rounds, target_s * len(names) / per_round_s)))
    events = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else reversed(names)):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            replayers[n].replay()
            e.record()
            events[n].append((s, e))
    torch.cuda.synchronize()
    out = {}
    for n in names:
        rep = replayers[n]
        per_call = [s.elapsed_time(e) * 1e3 / rep.calls_per_replay for s, e in events[n]]
        out[n] = summarize(per_call, calls_per_replay=rep.calls_per_replay, copies=rep.copies, mode=rep.mode,
                           note=rep.note)
    return out


def time_calls(calls: Sequence[Callable[[], object]], *, min_calls: int = 8, target_s: float = 0.2,
               use_graph: bool = True) -> Timing:
    """Median microseconds per call of ``calls`` (each one call on its own rotated inputs)."""
    rep = Replayer(calls, min_calls=min_calls, use_graph=use_graph)
    try:
        return time_interleaved({"x": rep}, target_s=target_s)["x"]
    finally:
        rep.close()


def _bandwidth(nbytes: int, moved_bytes: int, timing: Timing) -> Bandwidth:
    """GB/s at the median and the fastest call of ``timing`` (``moved_bytes`` per call) over a buffer of ``nbytes``."""
    return Bandwidth(bytes=nbytes, gbps=moved_bytes / (timing.median_us * 1e-6) / 1e9,
                     best_gbps=moved_bytes / (timing.min_us * 1e-6) / 1e9, timing=timing)


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, target_s: float = 0.2) -> Bandwidth:
    """Device-to-device copy bandwidth in GB/s (read + write bytes counted) and its timing."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    timing = time_calls([lambda: dst.copy_(src)], min_calls=4, target_s=target_s)
    del src, dst
    torch.cuda.empty_cache()
    return _bandwidth(nbytes, 2 * nbytes, timing)


def read_bandwidth(device: torch.device, nbytes: int = 1 << 30, target_s: float = 0.2) -> Bandwidth:
    """Read-only streaming bandwidth in GB/s: ``torch.sum`` over a bf16 buffer several times the L2.

    Attention reads K/V and writes almost nothing; on an H100 a read-only stream sustains about
    25% more than a copy (whose reads and writes share the bus), so a copy-based floor is beaten
    by good kernels. Both are measured; the sweep's floor uses the higher by default.
    """
    src = torch.randn(nbytes // 2, dtype=torch.bfloat16, device=device)
    timing = time_calls([lambda: src.sum()], min_calls=4, target_s=target_s)
    del src
    torch.cuda.empty_cache()
    return _bandwidth(nbytes, nbytes, timing)


def stream_bandwidth(device: torch.device, nbytes: int = 1 << 30, target_s: float = 0.2) -> Bandwidth:
    """Read-only bandwidth in GB/s of a plain streaming Triton kernel (``read_kernel.stream_sum``)."""
    from .read_kernel import partials_for, stream_sum

    src = torch.randn(nbytes // 2, dtype=torch.bfloat16, device=device)
    partials = partials_for(src)
    timing = time_calls([lambda: stream_sum(src, partials)], min_calls=4, target_s=target_s)
    del src, partials
    torch.cuda.empty_cache()
    return _bandwidth(nbytes, nbytes, timing)


# What each bandwidth measures; the floor takes the best of the ones that ran.
BANDWIDTH_MEASUREMENTS = {
    "copy": ("D2D copy of 1 GiB, read + write bytes counted", copy_bandwidth),
    "torch_sum": ("torch.sum over 1 GiB of bf16 (read-only)", read_bandwidth),
    "triton_stream": ("streaming Triton read kernel over 1 GiB of bf16 (read-only)", stream_bandwidth),
}
READ_MEASUREMENTS = ("torch_sum", "triton_stream")


def measure_bandwidths(device: torch.device, target_s: float = 0.2) -> dict[str, Bandwidth]:
    """Every bandwidth measurement by name; one that fails holds its reason instead of ``gbps``."""
    out = {}
    for name, (what, measure) in BANDWIDTH_MEASUREMENTS.items():
        try:
            out[name] = measure(device, target_s=target_s)
        except Exception as exc:  # noqa: BLE001 - a failed measurement is recorded; the others set the floor
            torch.cuda.empty_cache()
            out[name] = Bandwidth(error=f"{type(exc).__name__}: {str(exc).strip()[:300]}")
        out[name].what = what
    return out


def floor_gbps(bandwidths: dict[str, Bandwidth], choice: str = "max") -> tuple[float, str]:
    """The floor's bandwidth and which measurement gave it: the best copy, read, or either ("max")."""
    names = {"copy": ("copy",), "read": READ_MEASUREMENTS, "max": ("copy", *READ_MEASUREMENTS)}[choice]
    got = {n: bandwidths[n].gbps for n in names if n in bandwidths and bandwidths[n].gbps}
    if not got:
        raise RuntimeError(f"no bandwidth measurement for --floor-bandwidth {choice} succeeded: "
                           + "; ".join(f"{n}: {getattr(bandwidths.get(n), 'error', None)}" for n in names))
    best = max(got, key=got.get)
    return got[best], best


def _git_commit() -> str | None:
    """$BENCH_GIT_COMMIT when set (a copied working tree may carry stale git metadata: the device
    tool's copy reported an older HEAD), else HEAD with '+dirty-kernels' if paged_kernels/ has local edits."""
    import os

    if os.environ.get("BENCH_GIT_COMMIT"):
        return os.environ["BENCH_GIT_COMMIT"]
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        if out.returncode != 0 or len(sha) != 40:
            return os.environ.get("BENCH_GIT_COMMIT") or None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "paged_kernels"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty-kernels" if dirty else "")
    except Exception:
        return os.environ.get("BENCH_GIT_COMMIT") or None


def kernels_digest() -> str | None:
    """sha256 (first 16 hex) over paged_kernels/*.py: which kernel sources ran, even without git."""
    import hashlib

    root = Path(__file__).resolve().parent.parent / "paged_kernels"
    files = sorted(root.glob("*.py"))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def environment(device: torch.device | None) -> Environment:
    """Device name, versions and date: what the results file must say about where it came from."""
    import triton

    env = Environment(
        date_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        python=platform.python_version(),
        torch=torch.__version__,
        triton=triton.__version__,
        cuda_runtime=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        git_commit=_git_commit(),
        kernels_sha256_16=kernels_digest(),
        command=" ".join([Path(sys.executable).name, "-m", "benchmarks.sweep", *sys.argv[1:]]),
        host=platform.node(),
        device_name="cpu (dry run)",
    )
    if device is not None and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.device_name = props.name
        env.num_sms = props.multi_processor_count
        env.l2_bytes = l2_bytes(device)
        env.total_memory_bytes = props.total_memory
        env.compute_capability = f"{props.major}.{props.minor}"
    return env


def card_slug(device_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3': the results' file-name stem."""
    name = device_name.lower().replace("nvidia", "").strip()
    slug = "".join(c if c.isalnum() else "-" for c in name)
    while "--" in slug:
        slug = slug.replace("--", "-")
    return slug.strip("-") or "unknown"
