"""The sweep points, declared as data.

A point is one attention call: a varlen batch of sequences, each with ``q_len`` new query tokens
and ``kv_len`` keys in the paged cache (new tokens included, as ``seqused_k`` counts them), plus
the head configuration. Everything the runner, the floor, the FLOP count and the report need is
derived from these fields; nothing here touches a device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# Llama-3.1-8B attention: 32 query heads, 8 KV heads, head 128.
LLAMA = dict(num_q_heads=32, num_kv_heads=8, head_size=128)
# Multiprocessors of an H100 SXM (and an H200): the card the dry run's plans and disasm's target
# stand for when no GPU is present.
H100_SMS = 132
BLOCK_SIZE = 16
DTYPE = "bfloat16"
ELEMENT_BYTES = 2  # bf16: queries, outputs and the unquantized cache
# Bytes per cached element of each KV format, and per query element of each query format.
KV_ELEMENT_BYTES = {"bf16": 2, "fp8": 1, "int8-pth": 1, "int4-pth": 0.5}
Q_ELEMENT_BYTES = {"bf16": 2, "fp8": 1}
SCALE_BYTES = 4  # per-token-head formats: one float32 scale per (slot, KV head), for K and for V
PER_TOKEN_HEAD_FORMATS = ("int8-pth", "int4-pth")
# The kernel's kv_quant_mode for each KV format (fp8: per-tensor k_descale / v_descale).
KV_QUANT_MODE = {"bf16": None, "fp8": "fp8_per_tensor", "int8-pth": "int8_per_token_head",
                 "int4-pth": "int4_per_token_head"}

# The reference experiment: 500 prompt tokens plus this many generated tokens.
BS1_GENERATED = (10, 100, 200, 400, 800, 1600, 3200, 6400, 12800)
BS1_PROMPT = 500
BS1_LONG = (32_768, 131_072)
BATCHES_AT_4K = (4, 16, 64, 256)
# Verify batches: (batch, KV length) and the drafted tokens per sequence.
VERIFY_BATCHES = ((1, 8_192), (1, 32_768), (8, 8_192), (32, 4_096))
VERIFY_QUERY_LENS = (2, 4, 8)
# A draft tree of 4 tokens (parent of each; -1: the root), verified with a qq_bias that hides every new
# token but a token's ancestors and itself (EAGLE-style tree attention).
VERIFY_TREE = (-1, 0, 0, 1)


@dataclass(frozen=True)
class Target:
    """One of the issue's targets: ``metric`` of ``impl`` compared with ``value``.

    Metrics: "us" (latency, at most ``value``), "tflops" (at least ``value``) and "pct_floor"
    (percent of the point's own HBM floor, at least ``value``). With ``relative_to`` (a point
    name) a "tflops" target is ``value`` times that point's heuristic TFLOP/s in the same run.
    The report (``report.target_status``) judges targets from the results JSON.
    """

    metric: str
    value: float
    impl: str = "heuristic"
    relative_to: str | None = None

    def describe(self) -> str:
        if self.relative_to:
            return f">= {self.value:g}x {self.relative_to}'s TFLOP/s"
        return {"us": f"<= {self.value:g} us", "tflops": f">= {self.value:g} TFLOP/s",
                "pct_floor": f">= {self.value:g}% of floor"}[self.metric]


@dataclass(frozen=True)
class Point:
    name: str
    kind: str  # "decode", "verify", "prefill" or "mixed"
    series: str  # plot/grouping label, e.g. "bs1" or "bs@4k"
    seqs: tuple[tuple[int, int], ...]  # (q_len, kv_len) per sequence, in batch order
    num_q_heads: int = 32
    num_kv_heads: int = 8
    head_size: int = 128
    block_size: int = BLOCK_SIZE
    quick: bool = False
    target: Target | None = None
    note: str = ""
    kv_format: str = "bf16"  # a KV_ELEMENT_BYTES key: "bf16", "fp8" (per tensor), "int8-pth"/"int4-pth" (per token-head)
    q_format: str = "bf16"  # "bf16" or "fp8" (needs an fp8 cache); the output is bf16 either way
    tree: tuple[int, ...] = ()  # a verify batch's draft tree: each new token's parent (-1: root); () none

    def __post_init__(self):
        if self.kv_format not in KV_ELEMENT_BYTES or self.q_format not in Q_ELEMENT_BYTES:
            raise ValueError(f"{self.name}: unknown kv_format {self.kv_format!r} or q_format {self.q_format!r}")
        if self.q_format == "fp8" and self.kv_format != "fp8":
            raise ValueError(f"{self.name}: fp8 queries need the per-tensor fp8 cache")
        if self.tree and (any(q != len(self.tree) for q, _ in self.seqs) or self.tree[0] != -1
                          or any(not 0 <= parent < i for i, parent in enumerate(self.tree) if i)):
            raise ValueError(f"{self.name}: tree {self.tree} must give every sequence's new tokens a parent "
                             "before them (the first is the root, -1)")

    def tree_visible(self) -> list[list[bool]]:
        """``[i][j]``: new token i sees new token j (j is i or one of its ancestors); [] without a tree."""
        visible = [[False] * len(self.tree) for _ in self.tree]
        for i in range(len(self.tree)):
            j = i
            while j >= 0:
                visible[i][j] = True
                j = self.tree[j]
        return visible

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
    def quantized(self) -> bool:
        return (self.kv_format, self.q_format) != ("bf16", "bf16")

    @property
    def formats(self) -> str:
        """E.g. "fp8 q, fp8 KV"; "" for a bf16 point."""
        return f"{self.q_format} q, {self.kv_format} KV" if self.quantized else ""

    @property
    def x_value(self) -> int:
        """The plot's x coordinate: KV length for one sequence, batch size otherwise."""
        return self.max_seqlen_k if self.series.startswith("bs1") else self.num_seqs

    def blocks_per_seq(self) -> list[int]:
        return [-(-k // self.block_size) for _, k in self.seqs]

    def slot_bytes(self) -> int:
        """Bytes of one cached token of K (or V): its values plus, per token-head, its scales."""
        scales = SCALE_BYTES if self.kv_format in PER_TOKEN_HEAD_FORMATS else 0
        return self.num_kv_heads * (int(self.head_size * KV_ELEMENT_BYTES[self.kv_format]) + scales)

    def kv_bytes(self) -> int:
        """K and V bytes a kernel must read: every visible key and value once (with its scales)."""
        return self.total_kv * self.slot_bytes() * 2

    def qo_bytes(self) -> int:
        """q read once (in its format), out written once (bf16)."""
        return self.num_tokens * self.num_q_heads * self.head_size * (Q_ELEMENT_BYTES[self.q_format] + ELEMENT_BYTES)

    def floor_bytes(self) -> int:
        """Bytes that must cross HBM: K and V once, q read once, out written once."""
        return self.kv_bytes() + self.qo_bytes()

    def cache_bytes(self) -> int:
        """Bytes of one paged K+V cache copy (whole blocks)."""
        return sum(self.blocks_per_seq()) * self.block_size * self.slot_bytes() * 2

    def visible_pairs(self) -> int:
        """(query, key) pairs the causal mask (and a draft tree) lets through, with queries at the end of
        their sequence."""
        if self.tree:
            among_new = sum(map(sum, self.tree_visible()))
            return sum(q * (k - q) + among_new for q, k in self.seqs)
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
        formats = f" ({self.formats})" if self.quantized else ""
        tree = f", draft tree {self.tree} by qq_bias" if self.tree else ""
        return f"{self.kind} {heads}{formats}{tree}: " + " + ".join(parts)

    def scaled(self, factor: int) -> "Point":
        """The same point with every length divided by ``factor`` (at least 1): for CPU dry runs.
        Query lengths up to 8 (decode, verify batches) are kept: they are what the point is about."""
        seqs = tuple((q if q <= 8 else max(1, q // factor), max(1, k // factor)) for q, k in self.seqs)
        seqs = tuple((min(q, k), k) for q, k in seqs)
        return replace(self, seqs=seqs)


def causal_pairs(q_len: int, kv_len: int) -> int:
    """Pairs for ``q_len`` queries occupying the last positions of a ``kv_len``-key sequence.

    Query i (0-based) sits at position ``kv_len - q_len + i`` and sees keys 0..that position.
    """
    if q_len > kv_len:
        raise ValueError(f"q_len {q_len} > kv_len {kv_len}")
    context = kv_len - q_len
    return q_len * context + q_len * (q_len + 1) // 2


def _decode(name, series, batch, kv_len, *, quick=False, target=None, note="", **cfg) -> Point:
    cfg = dict(LLAMA, **cfg)
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
    # Speculative-decoding verify batches: q_len drafted tokens per sequence, causal, over the context.
    for bs, L in VERIFY_BATCHES:
        for q in VERIFY_QUERY_LENS:
            target = Target("pct_floor", 85.0) if (bs, L) == (1, 32_768) else None
            pts.append(Point(f"verify-q{q}-bs{bs}-L{L}", "verify", f"verify-bs{bs}-L{L}", ((q, L),) * bs,
                             quick=(q, bs, L) in ((4, 1, 32_768), (8, 32, 4_096)), target=target, **LLAMA))
    q = len(VERIFY_TREE)
    pts.append(Point(f"verify-tree{q}-bs8-L8192", "verify", "verify-tree", ((q, 8_192),) * 8, tree=VERIFY_TREE,
                     note=f"draft tree {VERIFY_TREE} (parents) as a qq_bias of 0 / -inf", **LLAMA))
    # Prefill (causal, q_len == kv_len) and mixed (chunked prefill beside decodes).
    pts.append(Point("prefill-4x2048", "prefill", "prefill", ((2_048, 2_048),) * 4, quick=True,
                     target=Target("tflops", 250.0), **LLAMA))
    prefill_4x2048 = pts[-1]
    pts.append(Point("prefill-1x8192", "prefill", "prefill", ((8_192, 8_192),), **LLAMA))
    pts.append(Point("mixed-512on4096+32dec", "mixed", "mixed", ((1, 4_096),) * 32 + ((512, 4_096 + 512),),
                     note="32 decodes at 4096 keys, then a 512-token chunk after 4096 cached tokens "
                          "(vLLM order: decodes first)", **LLAMA))
    # Quantized: the fp8 / int8 points, each judged against its own bytes or our bf16 prefill
    # (last, so a sweep cut by its time budget still has every bf16 point).
    for tag, kv_format in (("fp8kv", "fp8"), ("int8pth", "int8-pth"), ("int4pth", "int4-pth")):
        for bs, L, series in ((1, 131_072, "bs1"), (16, 4_096, "bs@4k")):
            pts.append(_decode(f"decode-{tag}-bs{bs}-L{L}", f"{series}-{tag}", bs, L, quick=True,
                               target=Target("pct_floor", 90.0), kv_format=kv_format))
    pts.append(replace(prefill_4x2048, name="prefill-fp8q-fp8kv-4x2048", series="prefill-fp8",
                       kv_format="fp8", q_format="fp8",
                       target=Target("tflops", 1.5, relative_to=prefill_4x2048.name)))
    return pts


POINTS: list[Point] = build_points()


def select(names: str | None = None, quick: bool = False, kinds: tuple[str, ...] | None = None) -> list[Point]:
    """Points by comma-separated names (exact, or a prefix ending in '*'), the quick subset, or kinds;
    a point whose target is relative to another point brings that point along."""
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
    # A relative target is judged against its reference point in the same run: bring it along.
    by_name = {p.name: p for p in POINTS}
    for p in list(chosen):
        ref = p.target and p.target.relative_to
        if ref and by_name[ref] not in chosen:
            chosen.insert(chosen.index(p), by_name[ref])
    return chosen


TUNE_SEGMENTS = (2, 4, 8, 16, 32, 64, 128)
