"""Benchmark results as typed records, from the measurement to the report, and their JSON form.

- ``Result``: one implementation's measurement at one point (time, why there is none, output check).
- ``PointRecord``: a point (``PointInfo``), its results by implementation, the check's reference, the plans.
- ``TuneRecord``: a decode point timed forced 2D and forced 3D at each segment count.
- ``Run``: where it ran (``Environment``), the bandwidths behind the floor, the peers, every record.

JSON is the storage: ``Run.to_json`` writes the fields as they are, under ``"format": FORMAT``, and
``Run.from_json`` reads them back; an unknown field is a TypeError that names it. Files written
before the records (the committed ``results/*.json``) are mapped onto the same fields by
``_upgrade``, the one place that knows the old keys. Nothing here imports torch: the report runs
anywhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from .shapes import Target

if TYPE_CHECKING:
    from .shapes import Point

FORMAT = 2
DEFAULT_TOLERANCE = 0.05  # the check's bound in files that stored none per implementation


class _Record:
    """``to_json`` is ``asdict``; ``from_json`` builds the flat fields, and a record with nested
    records overrides it to build those."""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict):
        return cls(**d)


def _opt(cls, d):
    return None if d is None else cls.from_json(d)


@dataclass
class Timing(_Record):
    median_us: float  # median over replays of (replay time / calls per replay)
    p20_us: float
    p80_us: float
    min_us: float
    calls_per_replay: int
    copies: int  # distinct input copies cycled within one replay
    replays: int
    mode: str  # "graph" or "eager"
    note: str = ""


@dataclass
class Result(_Record):
    """One implementation at one point: its time, or why there is none, and its output check."""

    us: float | None = None  # median per call
    timing: Timing | None = None
    config: str | None = None  # what ran: a peer's path, SDPA's GQA handling, flex's compile mode
    error: str | None = None  # why there is no time
    unavailable: bool = False  # cannot run this point by design (``error`` says why): not a failure
    note: str | None = None  # a fallback or a cap, worth reading beside the time
    skipped: str | None = None  # tuning: why this segment count was not timed
    above_floor: bool = False  # faster than the point's floor allows
    tolerance: float | None = None  # the check's bound on max_abs_diff; None: output not checked
    max_abs_diff: float | None = None  # vs the point's reference; None when checked: NaN/inf in the output
    mismatch: str | None = None  # the failed check, in words

    @classmethod
    def from_json(cls, d: dict) -> Result:
        return cls(**{**d, "timing": _opt(Timing, d.get("timing"))})

    @property
    def time(self) -> float | None:
        """``us`` when it is a number."""
        return None if self.us is None or math.isnan(self.us) else float(self.us)

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text


@dataclass
class PointInfo(_Record):
    """What the report needs of a ``shapes.Point``, and the floor at the run's bandwidth."""

    name: str
    kind: str
    series: str
    description: str
    note: str
    x: int  # the plot's x value
    num_seqs: int
    num_tokens: int
    max_seqlen_q: int
    max_seqlen_k: int
    num_q_heads: int
    num_kv_heads: int
    head_size: int
    block_size: int
    kv_bytes: int
    floor_bytes: int
    cache_copy_bytes: int
    visible_pairs: int
    flops: int
    floor_us: float | None
    target: Target | None = None
    kv_format: str = "bf16"
    q_format: str = "bf16"
    quantized: bool = False

    @classmethod
    def from_json(cls, d: dict) -> PointInfo:
        target = d.get("target")
        return cls(**{**d, "target": None if target is None else Target(**target)})

    @classmethod
    def of(cls, point: Point, floor_gbps: float) -> PointInfo:
        return cls(
            name=point.name, kind=point.kind, series=point.series, description=point.describe(), note=point.note,
            x=point.x_value, num_seqs=point.num_seqs, num_tokens=point.num_tokens, max_seqlen_q=point.max_seqlen_q,
            max_seqlen_k=point.max_seqlen_k, num_q_heads=point.num_q_heads, num_kv_heads=point.num_kv_heads,
            head_size=point.head_size, block_size=point.block_size, kv_bytes=point.kv_bytes(),
            floor_bytes=point.floor_bytes(), cache_copy_bytes=point.cache_bytes(), visible_pairs=point.visible_pairs(),
            flops=point.flops(), floor_us=point.floor_bytes() / (floor_gbps * 1e9) * 1e6, target=point.target,
            kv_format=point.kv_format, q_format=point.q_format, quantized=point.quantized)


@dataclass
class DryRun(_Record):
    """A dry-run point: the plan an H100 would get at full size, and how the point was shrunk."""

    h100_path: str
    h100_segments: int
    h100_forced3d_segments: int
    h100_reason: str
    divided_by: int
    small: str  # the shrunk point, described


@dataclass
class PointRecord(_Record):
    point: PointInfo
    copies: int  # rotated input copies per replay
    results: dict[str, Result] = field(default_factory=dict)  # in column order
    reference: str | None = None  # what every checked output was compared with
    plans: dict[str, dict] = field(default_factory=dict)  # the planner's launch per column, as it wrote it
    error: str | None = None  # the point failed
    traceback: str | None = None
    elapsed_s: float | None = None
    dry_run: DryRun | None = None

    @classmethod
    def from_json(cls, d: dict) -> PointRecord:
        return cls(**{**d, "point": PointInfo.from_json(d["point"]), "dry_run": _opt(DryRun, d.get("dry_run")),
                      "results": {k: Result.from_json(r) for k, r in d.get("results", {}).items()}})

    def us(self, impl: str) -> float | None:
        r = self.results.get(impl)
        return None if r is None else r.time

    def pct_of_floor(self, impl: str) -> float | None:
        """Floor time over measured time, in percent: 100% means the call ran at the HBM roofline."""
        t, floor = self.us(impl), self.point.floor_us
        return None if t is None or not floor else 100.0 * floor / t

    def tflops(self, impl: str) -> float | None:
        t = self.us(impl)
        return None if t is None or not self.point.flops else self.point.flops / (t * 1e-6) / 1e12

    def speedup_vs_2d(self, impl: str) -> float | None:
        t, t2 = self.us(impl), self.us("2d")
        return None if t is None or t2 is None else t2 / t

    def mismatched(self, impl: str) -> bool:
        r = self.results.get(impl)
        return r is not None and r.mismatch is not None

    def checked(self) -> dict[str, Result]:
        """The results whose output was compared with the reference."""
        return {k: r for k, r in self.results.items() if r.tolerance is not None}

    @property
    def above_floor(self) -> list[str]:
        return [k for k, r in self.results.items() if r.above_floor]

    def mark_above_floor(self) -> list[str]:
        """Flag the implementations that ran faster than the floor allows; returns them."""
        floor = self.point.floor_us
        for impl, r in self.results.items():
            t = r.time
            r.above_floor = bool(floor and t is not None and t < floor)
        return self.above_floor

    @property
    def heuristic_plan(self) -> dict:
        return self.plans.get("heuristic") or {}


@dataclass
class TuneRecord(_Record):
    name: str
    description: str
    series: str
    x: int
    copies: int
    heuristic_plan: dict = field(default_factory=dict)
    heuristic: Result | None = None
    forced_2d: Result | None = None
    segments: dict[int, Result] = field(default_factory=dict)  # forced 3D by segment count
    error: str | None = None
    traceback: str | None = None
    elapsed_s: float | None = None

    @classmethod
    def from_json(cls, d: dict) -> TuneRecord:
        return cls(**{**d, "heuristic": _opt(Result, d.get("heuristic")), "forced_2d": _opt(Result, d.get("forced_2d")),
                      "segments": {int(s): Result.from_json(r) for s, r in d.get("segments", {}).items()}})

    def best(self) -> tuple[str | None, float | None]:
        """The fastest forced choice ("2d" or "3d/<segments>") and its time."""
        timed = {"2d": self.forced_2d.time} if self.forced_2d is not None else {}
        timed.update({f"3d/{s}": r.time for s, r in sorted(self.segments.items()) if not r.skipped})
        timed = {k: t for k, t in timed.items() if t is not None}
        if not timed:
            return None, None
        best = min(timed, key=timed.get)
        return best, timed[best]


@dataclass
class Bandwidth(_Record):
    what: str | None = None
    bytes: int | None = None  # the buffer streamed
    gbps: float | None = None  # at the median call; None: the measurement failed
    best_gbps: float | None = None  # at the fastest call
    timing: Timing | None = None
    error: str | None = None

    @classmethod
    def from_json(cls, d: dict) -> Bandwidth:
        return cls(**{**d, "timing": _opt(Timing, d.get("timing"))})


@dataclass
class Environment(_Record):
    """Where and what ran: the results' provenance."""

    date_utc: str | None = None
    python: str | None = None
    torch: str | None = None
    triton: str | None = None
    cuda_runtime: str | None = None
    cudnn: int | None = None
    git_commit: str | None = None
    kernels_sha256_16: str | None = None  # digest of paged_kernels/*.py
    command: str | None = None
    host: str | None = None
    device_name: str | None = None
    num_sms: int | None = None
    l2_bytes: int | None = None
    total_memory_bytes: int | None = None
    compute_capability: str | None = None


@dataclass
class PeerInfo(_Record):
    name: str  # the column
    spec: str  # MODULE:FUNC or path/to/file.py:FUNC
    import_dir: str | None = None
    style: str | None = None  # how it is called (peers.Peer.style)
    file: str | None = None  # the module file that loaded


@dataclass
class Run(_Record):
    mode: str = "sweep"  # sweep, quick, tune-segments or dry-run
    seed: int = 0
    env: Environment = field(default_factory=Environment)
    floor_gbps: float | None = None
    floor_bandwidth: str = "max"  # --floor-bandwidth
    floor_source: str | None = None  # the measurement the floor used; None in runs that predate naming it
    bandwidths: dict[str, Bandwidth] = field(default_factory=dict)
    bandwidths_end: dict[str, Bandwidth] = field(default_factory=dict)  # measured again after the points
    peers: list[PeerInfo] = field(default_factory=list)
    flex: bool = False
    flex_compiled: bool = False
    target_s: float | None = None
    points: list[PointRecord] = field(default_factory=list)
    tune: list[TuneRecord] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # points left out by the time budget
    elapsed_s: float | None = None

    def to_json(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, d: dict) -> Run:
        if "format" not in d:
            d = _upgrade(d)
        elif d["format"] != FORMAT:
            raise ValueError(f"results format {d['format']!r}: this code reads {FORMAT} and the unversioned "
                             "files before it")
        d = {k: v for k, v in d.items() if k != "format"}

        def bandwidths(key):
            return {n: Bandwidth.from_json(b) for n, b in d.get(key, {}).items()}

        return cls(**{**d, "env": Environment.from_json(d.get("env", {})), "bandwidths": bandwidths("bandwidths"),
                      "bandwidths_end": bandwidths("bandwidths_end"),
                      "peers": [PeerInfo.from_json(p) for p in d.get("peers", [])],
                      "points": [PointRecord.from_json(p) for p in d.get("points", [])],
                      "tune": [TuneRecord.from_json(t) for t in d.get("tune", [])]})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1, default=str))

    def point(self, name: str) -> PointRecord | None:
        return next((r for r in self.points if r.point.name == name), None)


def load(path: Path) -> Run:
    return Run.from_json(json.loads(Path(path).read_text()))


# -- files written before the records --------------------------------------------------------
def _renamed(d: dict, names: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> dict:
    names = names or {}
    return {names.get(k, k): v for k, v in d.items() if k not in drop}


def _upgrade(data: dict) -> dict:
    """A results file of the string-keyed layout, as ``Run.from_json`` reads it."""
    legacy = data.get("bandwidths") is None  # before every bandwidth had a name: a copy and torch.sum
    out = _renamed(data, drop=("copy_bandwidth", "read_bandwidth", "copy_bandwidth_end", "read_bandwidth_end", "flex"))
    for key, pair in (("bandwidths", ("copy_bandwidth", "read_bandwidth")),
                      ("bandwidths_end", ("copy_bandwidth_end", "read_bandwidth_end"))):
        named = data.get(key) or ({"copy": data.get(pair[0]), "torch_sum": data.get(pair[1])} if legacy else {})
        out[key] = {n: _renamed(b, {"bytes_per_copy": "bytes", "bytes_per_read": "bytes"})
                    for n, b in named.items() if b is not None}
    if legacy:
        out.setdefault("floor_bandwidth", "copy")  # the only floor those runs had
    flex = data.get("flex") or {}
    out["flex"], out["flex_compiled"] = bool(flex.get("enabled")), bool(flex.get("compiled"))
    for key in ("peers", "skipped"):
        out[key] = data.get(key) or []
    out["points"] = [_upgrade_point(p) for p in data.get("points") or []]
    out["tune"] = [_renamed(t, {"describe": "description", "2d": "forced_2d", "3d": "segments"}, drop=("best",))
                   for t in data.get("tune") or []]  # best: TuneRecord.best() derives it
    return out


# Point keys whose content now lives elsewhere: the check (in each result), the plan's summary
# (heuristic_*, forced3d_segments: in plans), the 3D cap (the 3D result's note), above_floor (each
# result's flag), the dry run's preview (DryRun).
_POINT_MOVED = ("check", "heuristic_path", "heuristic_segments", "heuristic_reason", "forced3d_segments",
                "forced3d_note", "above_floor", "h100_preview", "dry_run_scale")
_POINT_RECORD_FIELDS = {f.name for f in fields(PointRecord)} - {"point"}


def _upgrade_point(p: dict) -> dict:
    chk = p.get("check") or {}
    above = set(p.get("above_floor") or [])
    tol, mismatch = chk.get("tolerance", DEFAULT_TOLERANCE), chk.get("mismatch") or {}
    # A result's own mismatch text repeats the check's; a peer's target is in the run's peers.
    results = {impl: {**_renamed(r, drop=("spec", "mismatch", "above_floor")), "above_floor": impl in above}
               for impl, r in (p.get("results") or {}).items()}
    for impl, diff in (chk.get("max_abs_diff") or {}).items():
        results.setdefault(impl, {}).update({
            "max_abs_diff": diff, "mismatch": mismatch.get(impl),
            "tolerance": tol.get(impl, DEFAULT_TOLERANCE) if isinstance(tol, dict) else tol})
    info = _renamed({k: v for k, v in p.items() if k not in _POINT_RECORD_FIELDS}, {"describe": "description"},
                    drop=_POINT_MOVED)
    preview, scale = p.get("h100_preview"), p.get("dry_run_scale")
    dry_run = None if preview is None else {
        "h100_path": preview["path"], "h100_segments": preview["num_segments"],
        "h100_forced3d_segments": preview["forced3d_segments"], "h100_reason": preview["reason"],
        "divided_by": scale["divided_by"], "small": scale["seqs"]}
    return {**{k: v for k, v in p.items() if k in _POINT_RECORD_FIELDS}, "point": info, "results": results,
            "reference": chk.get("reference"), "dry_run": dry_run}
