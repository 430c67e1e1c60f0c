"""The sweep points, declared as data.

A point is one attention call: a varlen batch of sequences, each with ``q_len`` new query tokens
and ``kv_len`` keys in the paged cache (new tokens included, as ``seqused_k`` counts them), plus
the head configuration. Everything the runner, the floor, the FLOP count and the report need is
derived from these fields; nothing here touches a device.
"""

from __future__ import annotations

from dataclasses import dataclass

# Llama-3.1-8B attention: 32 query heads, 8 KV heads, head 128.
LLAMA = dict(num_q_heads=32, num_kv_heads=8, head_size=128)
BLOCK_SIZE = 16
DTYPE = "bfloat16"
ELEMENT_BYTES = 2  # bf16

# The reference experiment: 500 prompt tokens plus this many generated tokens.
BS1_GENERATED = (10, 100, 200, 400, 800, 1600, 3200, 6400, 12800)
BS1_PROMPT = 500
BS1_LONG = (32_768, 131_072)
BATCHES_AT_4K = (4, 16, 64, 256)


@dataclass(frozen=True)
class Target:
    """One of the issue's targets: ``metric`` of ``impl`` compared with ``value``."""

    metric: str  # "us" (latency, lower is better) or "tflops" (higher is better)
    value: float
    impl: str = "heuristic"

    def met(self, measured: float | None) -> bool | None:
        if measured is None:
            return None
        return measured <= self.value if self.metric == "us" else measured >= self.value

    def describe(self) -> str:
        return f"<= {self.value:g} us" if self.metric == "us" else f">= {self.value:g} TFLOP/s"


@dataclass(frozen=True)
class Point:
    name: str
    kind: str  # "decode", "prefill" or "mixed"
    series: str  # plot/grouping label, e.g. "bs1" or "bs@4k"
    seqs: tuple[tuple[int, int], ...]  # (q_len, kv_len) per sequence, in batch order
    num_q_heads: int = 32
    num_kv_heads: int = 8
    head_size: int = 128
    block_size: int = BLOCK_SIZE
    quick: bool = False
    target: Target | None = None
    note: str = ""

    # -- derived sizes ------------------------------------------------------------------
    @property
    def num_seqs(self) -> int:
        return len(self.seqs)

    @property
    def num_tokens(self) -> int:
        return sum(q for q, _ in self.seqs)

    @property
    def max_seqlen_q(self) -> int:
        return max(q for q, _ in self.seqs)

    @property
    def max_seqlen_k(self) -> int:
        return max(k for _, k in self.seqs)

    @property
    def total_kv(self) -> int:
        return sum(k for _, k in self.seqs)

    @property
    def x_value(self) -> int:
        """The plot's x coordinate: KV length for one sequence, batch size otherwise."""
        return self.max_seqlen_k if self.series.startswith("bs1") else self.num_seqs

    def blocks_per_seq(self) -> list[int]:
        return [-(-k // self.block_size) for _, k in self.seqs]

    def kv_bytes(self) -> int:
        """K and V bytes a kernel must read: every visible key and value once."""
        return self.total_kv * self.num_kv_heads * self.head_size * ELEMENT_BYTES * 2

    def qo_bytes(self) -> int:
        return self.num_tokens * self.num_q_heads * self.head_size * ELEMENT_BYTES * 2

    def floor_bytes(self) -> int:
        """Bytes that must cross HBM: K and V once, q read once, out written once."""
        return self.kv_bytes() + self.qo_bytes()

    def cache_bytes(self) -> int:
        """Bytes of one paged K+V cache copy (whole blocks)."""
        return sum(self.blocks_per_seq()) * self.block_size * self.num_kv_heads * self.head_size * ELEMENT_BYTES * 2

    def visible_pairs(self) -> int:
        """(query, key) pairs the causal mask lets through, with queries at the end of their sequence."""
        return sum(causal_pairs(q, k) for q, k in self.seqs)

    def flops(self) -> int:
        """QK^T and PV: 2 multiply-adds (4 FLOPs) per head dimension per visible pair per query head."""
        return 4 * self.head_size * self.num_q_heads * self.visible_pairs()

    def shape_groups(self) -> dict[tuple[int, int], int]:
        """How many sequences share each (q_len, kv_len): one dense SDPA call per group."""
        groups: dict[tuple[int, int], int] = {}
        for s in self.seqs:
            groups[s] = groups.get(s, 0) + 1
        return groups

    def describe(self) -> str:
        heads = f"{self.num_q_heads}/{self.num_kv_heads}x{self.head_size}"
        parts = [f"{n} x (q={q}, kv={k})" for (q, k), n in self.shape_groups().items()]
        return f"{self.kind} {heads}: " + " + ".join(parts)

    def scaled(self, factor: int) -> "Point":
        """The same point with every length divided by ``factor`` (at least 1): for CPU dry runs."""
        seqs = tuple((max(1, q // factor) if q > 1 else 1, max(1, k // factor)) for q, k in self.seqs)
        seqs = tuple((min(q, k), k) for q, k in seqs)
        return Point(self.name, self.kind, self.series, seqs, self.num_q_heads, self.num_kv_heads,
                     self.head_size, self.block_size, self.quick, self.target, self.note)


def causal_pairs(q_len: int, kv_len: int) -> int:
    """Pairs for ``q_len`` queries occupying the last positions of a ``kv_len``-key sequence.

    Query i (0-based) sits at position ``kv_len - q_len + i`` and sees keys 0..that position.
    """
    if q_len > kv_len:
        raise ValueError(f"q_len {q_len} > kv_len {kv_len}")
    context = kv_len - q_len
    return q_len * context + q_len * (q_len + 1) // 2


def _decode(name, series, batch, kv_len, *, quick=False, target=None, note="", **heads) -> Point:
    cfg = dict(LLAMA, **heads)
    return Point(name, "decode", series, tuple((1, kv_len) for _ in range(batch)), quick=quick,
                 target=target, note=note, **cfg)


def _bs1_name(kv_len: int) -> str:
    return f"decode-bs1-L{kv_len}"


def build_points() -> list[Point]:
    pts: list[Point] = []
    # Batch 1, the reference experiment's KV lengths, then long context.
    for gen in BS1_GENERATED:
        L = BS1_PROMPT + gen
        target = Target("us", 25.0) if L == 13_300 else None
        pts.append(_decode(_bs1_name(L), "bs1", 1, L, quick=L in (700, 3_700, 13_300), target=target,
                           note=f"500 prompt + {gen} generated"))
    for L in BS1_LONG:
        target = Target("us", 200.0) if L == 131_072 else None
        pts.append(_decode(_bs1_name(L), "bs1", 1, L, quick=L == 131_072, target=target))
    # Batches at 4k.
    batch_targets = {16: Target("us", 105.0), 64: Target("us", 370.0)}
    for bs in BATCHES_AT_4K:
        pts.append(_decode(f"decode-bs{bs}-L4096", "bs@4k", bs, 4_096, quick=bs in (16, 64),
                           target=batch_targets.get(bs)))
    # Other head shapes: GQA-1 (32/32) and head 256 (32/8).
    for tag, heads in (("gqa1", dict(num_kv_heads=32)), ("h256", dict(head_size=256))):
        pts.append(_decode(f"decode-{tag}-bs1-L13300", f"bs1-{tag}", 1, 13_300, **heads))
        pts.append(_decode(f"decode-{tag}-bs16-L4096", f"bs@4k-{tag}", 16, 4_096, quick=tag == "gqa1", **heads))
    # Prefill (causal, q_len == kv_len) and mixed (chunked prefill beside decodes).
    pts.append(Point("prefill-4x2048", "prefill", "prefill", ((2_048, 2_048),) * 4, quick=True,
                     target=Target("tflops", 250.0), **LLAMA))
    pts.append(Point("prefill-1x8192", "prefill", "prefill", ((8_192, 8_192),), **LLAMA))
    pts.append(Point("mixed-512on4096+32dec", "mixed", "mixed", ((1, 4_096),) * 32 + ((512, 4_096 + 512),),
                     note="32 decodes at 4096 keys, then a 512-token chunk after 4096 cached tokens "
                          "(vLLM order: decodes first)", **LLAMA))
    return pts


POINTS: list[Point] = build_points()


def select(names: str | None = None, quick: bool = False, kinds: tuple[str, ...] | None = None) -> list[Point]:
    """Points by comma-separated names (exact, or a prefix ending in '*'), the quick subset, or kinds."""
    pts = [p for p in POINTS if (not quick or p.quick) and (kinds is None or p.kind in kinds)]
    if not names:
        return pts
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    chosen = []
    for w in wanted:
        hits = [p for p in pts if (p.name.startswith(w[:-1]) if w.endswith("*") else p.name == w)]
        if not hits:
            raise ValueError(f"unknown point {w!r}; known: {', '.join(p.name for p in POINTS)}")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


TUNE_SEGMENTS = (2, 4, 8, 16, 32, 64, 128)
