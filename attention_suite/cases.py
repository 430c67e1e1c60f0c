"""Cases as data, and the builder that turns a case into concrete paged-attention inputs.

A ``Case`` is one call: batch composition, shapes, features and memory layout. ``build`` makes
the tensors: a paged cache with spare blocks and a shuffled block table (so paging is real),
block-table columns past each sequence's last block pointing at a spare block, and optional
poison (NaN/Inf) in every cache slot and buffer the result must not depend on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import torch

from reference import int4 as reference_int4
from reference import visibility

DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float8_e4m3fn": getattr(torch, "float8_e4m3fn", None),
    "int8": torch.int8,  # per-token-head quantized caches only
    "int4": torch.uint8,  # INT4 per-token-head caches only: two 4-bit values per stored byte
}
INT4_MODE = reference_int4.MODE
LAYOUTS = (
    "contiguous",      # every tensor dense
    "fused_qkv",       # q is a slice of a fused [tokens, q_heads + 2 kv_heads, dim] projection
    "out_strided",     # out is every other head of a wider buffer
    "kv_combined",     # k, v = kv[:, 0], kv[:, 1] of one [blocks, 2, block, heads, dim] tensor
    "kv_outer",        # k, v = kv[0], kv[1] of one [2, blocks, block, heads, dim] tensor
    "head_major",      # cache stored [blocks, heads, block, dim], viewed [blocks, block, heads, dim]
    "kv_unlike",       # k dense, v head-major with padded blocks: k and v strides all differ
    "bt_strided",      # block table rows longer than their used width
    "bt_colstrided",   # block table columns two entries apart (every other column of a wider table)
    "head_padded",     # q/k/v/out rows padded past head_size (padding poisoned in poison runs)
    "qq_bias_strided", # qq_bias is every other column of a wider tensor
)


_DTYPE_TAGS = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float8_e4m3fn": "fp8", "int8": "i8",
               "int4": "int4"}
# Largest stored magnitude a quantizer maps its amax to: fp8 lands on 240, under e4m3fn's 448.
FP8_TOP = 240.0
INT8_TOP = 127.0
_QUANT_TOP = {"int8": INT8_TOP, "float8_e4m3fn": FP8_TOP}
SCALE_MIN = 1e-6  # an all-zero tensor or row still gets a usable scale


def per_tensor_fp8_descale(x: torch.Tensor) -> torch.Tensor:
    """One-element float32 descale that maps ``x``'s amax to FP8_TOP (x / descale is then stored in e4m3)."""
    return (x.abs().amax().float() / FP8_TOP).clamp_min(SCALE_MIN).reshape(1)


def per_token_head_quantize(x: torch.Tensor, kv_dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``[blocks, block_size, kv_heads, head]`` cache quantized per (slot, KV head): (float32 values
    ready to store in ``kv_dtype`` -- rounded and clamped for int8 --, float32 scales ``[blocks,
    block_size, kv_heads]``), each row's amax mapped to its format's top."""
    scales = (x.abs().amax(dim=-1).float() / _QUANT_TOP[kv_dtype]).clamp_min(SCALE_MIN)
    values = x.float() / scales[..., None]
    if kv_dtype == "int8":
        values = values.round().clamp(-INT8_TOP, INT8_TOP)
    return values, scales


def vllm_int4_module():
    """vLLM's ``int4_per_token_head`` module from the peer copy, or None where it is absent or does not
    import."""
    from .impl import vllm_peer_module

    return vllm_peer_module("vllm.v1.attention.ops.int4_per_token_head")


def int4_writer(device) -> tuple[object, str]:
    """(the INT4 cache writer for caches on ``device``, its name): vLLM's ``reshape_and_cache_int4`` where
    the peer copy imports and its Triton kernel can run there (a GPU, or the CPU under the interpreter),
    else ``reference.int4.reshape_and_cache``, which stores the same bytes (tests/test_int4_format.py)."""
    import os

    device = torch.device(device)
    runnable = device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")
    module = vllm_int4_module() if runnable else None
    if module is None:
        return reference_int4.reshape_and_cache, "reference"

    def vllm_writer(key, value, key_cache, value_cache, slot_mapping, k_scale_cache, v_scale_cache):
        module.reshape_and_cache_int4(key, value, key_cache, value_cache, slot_mapping, k_scale_cache=k_scale_cache,
                                      v_scale_cache=v_scale_cache)

    return vllm_writer, "vllm"


def int4_quantize(k_rows: torch.Tensor, v_rows: torch.Tensor, device) -> tuple[torch.Tensor, ...]:
    """INT4 caches of K and V rows ``[blocks, block_size, kv_heads, head]`` (float16/bfloat16/float32, the
    model's dtype), every slot written: (k uint8 ``[..., head // 2]``, v, k scales ``[blocks, block_size,
    kv_heads]``, v scales), on the CPU. Written on ``device`` where vLLM's writer runs there."""
    writer, name = int4_writer(device)
    where = torch.device(device) if name == "vllm" else torch.device("cpu")
    blocks, block_size, heads, head = k_rows.shape
    caches = [torch.zeros(blocks, block_size, heads, head // 2, dtype=torch.uint8, device=where) for _ in range(2)]
    scales = [torch.zeros(blocks, block_size, heads, dtype=torch.float32, device=where) for _ in range(2)]
    slots = torch.arange(blocks * block_size, device=where)
    writer(k_rows.reshape(-1, heads, head).to(where), v_rows.reshape(-1, heads, head).to(where), *caches, slots,
           *scales)
    return tuple(t.cpu() for t in (*caches, *scales))


def int4_special_rows(rows: torch.Tensor, kind: str, gen) -> torch.Tensor:
    """Float32 rows ``[blocks, block_size, kv_heads, head]`` with rows at the INT4 writer's boundaries
    (``Case.int4_rows``); each row's sign from a coin of ``gen``.

    "floor" (every row): ``c * sign_0`` at the first value of each rotation group, 0 elsewhere, which
    rotates to exactly ``c`` everywhere (H's first column is all ones): a zero range, so the scale
    clamps at its floor (1e-6) and the zero point is 0 (c = +0.75) or 15 (c = -0.75). Every row, so
    the output is of the floor's size and the rule judges it at that size. "one-signed" (KV head 0,
    the other heads stay ordinary): rows that rotate to values of one sign, 0.1 or more from zero:
    zero point 0 (positive) or 15 (negative), with an ordinary scale."""
    head = rows.shape[-1]
    block = reference_int4.rotation_block(head)
    if kind == "floor":
        sign = torch.where(torch.rand(rows.shape[:3], generator=gen) < 0.5, -1.0, 1.0)[..., None]
        special = torch.zeros(rows.shape)
        special[..., ::block] = 0.75 * float(reference_int4.rht_signs(block)[0])
        return special * sign
    sign = torch.where(torch.rand(rows.shape[:2], generator=gen) < 0.5, -1.0, 1.0)[..., None]
    magnitudes = torch.rand(*rows.shape[:2], head, generator=gen) + 0.1
    rows = rows.clone()
    rows[:, :, 0] = reference_int4.rotate_back((magnitudes * sign).double()).float()
    return rows


@dataclass(frozen=True)
class Case:
    """One paged-attention call, declared as data.

    ``label`` says what the case is for (a batch composition, or the boundary it probes);
    ``name``, the pytest id, is the label followed by the fields that shape the call, so an id
    never disagrees with the case it names.
    """

    label: str
    seq_lens: tuple[int, ...]  # keys per sequence (seqused_k)
    query_lens: tuple[int, ...]  # query tokens per sequence (its last positions)
    num_q_heads: int = 4
    num_kv_heads: int = 2
    head_size: int = 32
    block_size: int = 16
    dtype: str = "float16"
    kv_dtype: str | None = None  # None: same as dtype; "float8_e4m3fn" for fp8 caches
    out_dtype: str | None = None  # None: same as dtype; "float8_e4m3fn" for fp8 output
    output_scale: float = 0.05  # fp8 output only: out = attention / output_scale, saturating at 448
    causal: bool | tuple[bool, ...] = True  # a tuple: per-sequence flags, passed as the int32 [num_seqs] tensor
    window_size: tuple[int, int] = (-1, -1)
    softcap: float = 0.0
    alibi: bool = False
    alibi_scale: float = 1.0
    sinks: bool = False
    sink_scale: float = 1.0
    logit_scale: float = 1.0  # multiplies q: large values give extreme logits
    value_scale: float = 1.0  # multiplies V: large values give large per-token-head V scales
    # softmax_scale = softmax_scale_factor / sqrt(head_size): negative or zero scales are valid input too.
    softmax_scale_factor: float = 1.0
    layout: str = "contiguous"
    pad_tokens: int = 0  # q/out rows past the last sequence (padded CUDA-graph batches)
    num_segments: int | None = None  # force a segment count on the 3D path
    table_slack: int = 1  # block-table columns past the longest sequence's last block (0: exact fit)
    # Every query gets +a and every key -a along one shared direction: all scores near -a^2 * scale,
    # far below zero, where the online softmax's starting maximum decides the result.
    aligned_logits: float = 0.0
    # Keyword-only features, named as the API names them; each is passed to the implementation only
    # when it differs from its default.
    chunk_lookback: int = -1  # chunked attention (needs causal and window_size[0] >= 0); -1 off
    # Bidirectional prefix ranges as (seq, start, end) triples, inclusive; built into the int32 tensor
    # [num_seqs, max_ranges + 1, 2] the API takes, every row padded with an unused (start >= end) entry.
    mm_prefix_range: tuple = ()
    mm_prefix_clamp_sliding_window: bool = False
    range_slack: int = 1  # unused entries past the fullest row of the range table (0: every entry in use)
    # fp8 cache only: k/v descales of shape [num_seqs, num_kv_heads]; each (sequence, KV head) is
    # scaled by its own factor before quantization, so the descales differ.
    descale_per_head: bool | str = False  # True: K and V; "k" or "v": that one only, the other one element
    # Per-token-head quantized cache: "int8_per_token_head" (kv_dtype "int8"), "fp8_per_token_head"
    # (kv_dtype "float8_e4m3fn") or "int4_per_token_head" (kv_dtype "int4": vLLM's packed, rotated
    # format, reference.int4), with float32 scale caches [num_blocks, block_size, num_kv_heads].
    kv_quant_mode: str | None = None
    # INT4 only: rows at the writer's boundaries ("floor": every row, "one-signed": KV head 0's;
    # int4_special_rows).
    int4_rows: str | None = None
    # vLLM 0.33's arguments. qq_bias: a tree-attention bias over the new tokens ([max_seqlen_q,
    # max_seqlen_q] float32: random values for a token's ancestors and itself, -inf elsewhere), "tree";
    # "dead-row" also hides every new key from the first new token (its row is all -inf).
    qq_bias: str | None = None
    rswa_prefix_lens: tuple[int, ...] = ()  # R-SWA, with rswa_window: per-sequence prefix lengths
    rswa_window: int | None = None
    use_alibi_sqrt: bool = False
    softmax_lse: bool = False  # also ask for the log-sum-exp output and judge it

    def __post_init__(self):
        assert len(self.seq_lens) == len(self.query_lens), self.label
        assert all(0 <= q <= k for q, k in zip(self.query_lens, self.seq_lens)), self.label
        assert self.layout in LAYOUTS, self.layout
        assert self.table_slack >= 0, self.label
        assert all(0 <= r[0] < len(self.seq_lens) for r in self.mm_prefix_range), self.label
        assert not self.descale_per_head or self.kv_dtype == "float8_e4m3fn", self.label
        assert self.descale_per_head in (False, True, "k", "v"), self.descale_per_head
        assert self.kv_quant_mode in (None, "int8_per_token_head", "fp8_per_token_head", INT4_MODE), self.kv_quant_mode
        assert (self.kv_dtype == "int4") == (self.kv_quant_mode == INT4_MODE), self.label
        assert self.kv_quant_mode != INT4_MODE or self.head_size % 2 == 0, self.label
        assert self.int4_rows in (None, "floor", "one-signed") and (not self.int4_rows or self.kv_dtype == "int4"), \
            self.label
        assert (self.kv_dtype == "int8") <= (self.kv_quant_mode == "int8_per_token_head"), self.label
        assert self.kv_quant_mode != "fp8_per_token_head" or self.kv_dtype == "float8_e4m3fn", self.label
        assert self.kv_quant_mode != "int8_per_token_head" or self.kv_dtype == "int8", self.label
        assert not self.kv_quant_mode or not self.descale_per_head, self.label
        assert self.qq_bias in (None, "tree", "dead-row"), self.qq_bias
        assert (self.rswa_window is None) == (not self.rswa_prefix_lens), self.label
        assert not self.rswa_prefix_lens or len(self.rswa_prefix_lens) == len(self.seq_lens), self.label
        assert not self.use_alibi_sqrt or self.alibi, self.label
        assert isinstance(self.causal, bool) or len(self.causal) == len(self.seq_lens), self.label
        # fp8 queries need a quantized cache and a 16/32-bit or fp8 output named explicitly.
        assert self.dtype != "float8_e4m3fn" or (self.kv_dtype and self.out_dtype), self.label

    def causal_of(self, seq: int) -> bool:
        return self.causal if isinstance(self.causal, bool) else bool(self.causal[seq])

    def window_of(self, seq: int) -> tuple[int, int]:
        """Sequence ``seq``'s window as (left, right): per-sequence causal flags make a bidirectional
        sequence's window symmetric (vLLM's reading of ``window_size[0]``)."""
        if isinstance(self.causal, bool) or self.causal[seq]:
            return self.window_size
        return (self.window_size[0], self.window_size[0])

    def ranges_of(self, seq: int) -> list[tuple[int, int]]:
        """Sequence ``seq``'s prefix ranges as (start, end) pairs."""
        return [(a, b) for q, a, b in self.mm_prefix_range if q == seq]

    @property
    def name(self) -> str:
        """The label, then a tag for every field that differs from its default (``ID_TAGS``)."""
        parts = [self.label] if self.label else []
        for field, tag in ID_TAGS.items():
            if field in ALWAYS_IN_ID or getattr(self, field) != _DEFAULTS[field]:
                parts.append(tag(self))
        return "-".join(parts)

    @property
    def arguments_used(self) -> tuple[str, ...]:
        """The API's optional arguments this case passes a non-default value to (an implementation
        without one of them cannot run the case)."""
        per_token_head = self.kv_quant_mode is not None
        used = {"q_descale": self.dtype == "float8_e4m3fn", "alibi_slopes": self.alibi, "sinks": self.sinks,
                "output_scale": self.out_dtype is not None, "chunk_lookback": self.chunk_lookback != -1,
                "mm_prefix_range": bool(self.mm_prefix_range),
                "mm_prefix_clamp_sliding_window": self.mm_prefix_clamp_sliding_window,
                "kv_quant_mode": per_token_head, "k_scale_cache": per_token_head, "v_scale_cache": per_token_head,
                "qq_bias": self.qq_bias is not None, "rswa_prefix_lens": bool(self.rswa_prefix_lens),
                "rswa_window": self.rswa_window is not None, "use_alibi_sqrt": self.use_alibi_sqrt,
                "softmax_lse": self.softmax_lse}
        return tuple(name for name, on in used.items() if on)

    @property
    def is_decode(self) -> bool:
        return max(self.query_lens) <= 1

    def describe(self) -> dict:
        """The fields as plain data (what reproducer files store)."""
        return asdict(self)

    def with_(self, **changes) -> "Case":
        return replace(self, **changes)


def _times(case: Case, field: str) -> str:
    """``x<value>`` when a companion scale differs from its default."""
    value = getattr(case, field)
    return f"x{value:g}" if value != _DEFAULTS[field] else ""


def _window_tag(case: Case) -> str:
    left, right = case.window_size
    return f"w{left}" if right == -1 else f"w{left}.{right}"


_DEFAULTS = {f.name: f.default for f in fields(Case)}
# How each field shows in a case id (the pytest id), in id order. A field shows when it differs from
# its default, or always (ALWAYS_IN_ID); companions ride with the field they qualify (COMPANIONS).
ID_TAGS = {
    "dtype": lambda c: _DTYPE_TAGS[c.dtype],
    "kv_dtype": lambda c: f"kv{_DTYPE_TAGS[c.kv_dtype]}",
    "out_dtype": lambda c: f"out{_DTYPE_TAGS[c.out_dtype]}" + _times(c, "output_scale"),
    "head_size": lambda c: f"d{c.head_size}",
    "num_q_heads": lambda c: f"g{c.num_q_heads // c.num_kv_heads}",
    "block_size": lambda c: f"b{c.block_size}",
    "causal": lambda c: "noncausal" if c.causal is False else "causal" + "".join("1" if x else "0" for x in c.causal),
    "window_size": _window_tag,
    "softcap": lambda c: f"softcap{c.softcap:g}",
    "alibi": lambda c: "alibi" + _times(c, "alibi_scale"),
    "sinks": lambda c: "sinks" + _times(c, "sink_scale"),
    "logit_scale": lambda c: f"logits{c.logit_scale:g}",
    "value_scale": lambda c: f"values{c.value_scale:g}",
    "softmax_scale_factor": lambda c: f"scale{c.softmax_scale_factor:g}",
    "layout": lambda c: c.layout.replace("_", "-"),
    "pad_tokens": lambda c: f"pad{c.pad_tokens}",
    "num_segments": lambda c: f"seg{c.num_segments}",
    "table_slack": lambda c: f"slack{c.table_slack}",
    "aligned_logits": lambda c: f"aligned{c.aligned_logits:g}",
    "chunk_lookback": lambda c: f"chunk{c.chunk_lookback}",
    "mm_prefix_range": lambda c: "ranges" + "_".join(f"{q}.{a}.{b}" for q, a, b in c.mm_prefix_range),
    "mm_prefix_clamp_sliding_window": lambda c: "clamp",
    "range_slack": lambda c: f"rangeslack{c.range_slack}",
    "descale_per_head": lambda c: "descale-seqhead" + ("" if c.descale_per_head is True else f"-{c.descale_per_head}"),
    "kv_quant_mode": lambda c: "pertokenhead",
    "int4_rows": lambda c: f"int4rows-{c.int4_rows}",
    "qq_bias": lambda c: f"qqbias-{c.qq_bias}",
    "rswa_window": lambda c: f"rswa{c.rswa_window}-" + ".".join(map(str, c.rswa_prefix_lens)),
    "use_alibi_sqrt": lambda c: "sqrt",
    "softmax_lse": lambda c: "lse",
}
ALWAYS_IN_ID = frozenset({"dtype", "head_size", "num_q_heads", "block_size"})
# Fields an id shows through another tag (or through the label, which names the composition).
COMPANIONS = {"output_scale": "out_dtype", "alibi_scale": "alibi", "sink_scale": "sinks",
              "num_kv_heads": "num_q_heads", "rswa_prefix_lens": "rswa_window", "label": None, "seq_lens": None,
              "query_lens": None}
# Fields renamed to the API's argument names: reproducer files written before still load.
_RENAMED = {"window": "window_size", "kv_quant": "kv_quant_mode", "prefix_ranges": "mm_prefix_range",
            "prefix_clamp": "mm_prefix_clamp_sliding_window"}


_NESTED_TUPLE_FIELDS = {"mm_prefix_range"}


def case_from_dict(data: dict) -> Case:
    """A case from ``Case.describe()`` output (older files said ``name`` for the label)."""
    data = dict(data)
    if "label" not in data and "name" in data:
        data["label"] = data.pop("name")
    for old, new in _RENAMED.items():
        if old in data:
            data[new] = data.pop(old)
    known = {f.name for f in fields(Case)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
    for k in _NESTED_TUPLE_FIELDS & set(values):
        values[k] = tuple(tuple(r) for r in values[k])
    return Case(**values)


@dataclass
class Inputs:
    """Concrete tensors for a case. ``out`` is the initial output buffer (NaN-filled)."""

    case: Case
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    out: torch.Tensor
    cu_seqlens_q: torch.Tensor
    seqused_k: torch.Tensor
    block_table: torch.Tensor
    softmax_scale: float
    k_descale: torch.Tensor | None = None
    v_descale: torch.Tensor | None = None
    alibi_slopes: torch.Tensor | None = None
    sinks: torch.Tensor | None = None
    output_scale: torch.Tensor | None = None
    seed: int = 0
    mm_prefix_range: torch.Tensor | None = None
    k_scale_cache: torch.Tensor | None = None
    v_scale_cache: torch.Tensor | None = None
    q_descale: torch.Tensor | None = None  # fp8 queries only
    causal_flags: torch.Tensor | None = None  # int32 [num_seqs] when the case gives per-sequence flags
    qq_bias: torch.Tensor | None = None
    rswa_prefix_lens: torch.Tensor | None = None
    softmax_lse: torch.Tensor | None = None  # float32 [num_tokens, num_q_heads], NaN-filled; the call writes it

    @property
    def max_seqlen_q(self) -> int:
        return max(self.case.query_lens)

    @property
    def max_seqlen_k(self) -> int:
        return max(self.case.seq_lens)

    @property
    def num_tokens_used(self) -> int:
        return sum(self.case.query_lens)

    def fresh_out(self) -> torch.Tensor:
        """A copy of the initial output buffer with the same strides."""
        buf = torch.empty_strided(self.out.size(), self.out.stride(), dtype=self.out.dtype, device=self.out.device)
        buf.copy_(self.out)
        return buf

    def call_args(self, out: torch.Tensor) -> tuple:
        """Positional arguments in the shared calling convention."""
        c = self.case
        return (self.q, self.k, self.v, out, self.cu_seqlens_q, self.max_seqlen_q, self.seqused_k,
                self.max_seqlen_k, self.softmax_scale, c.causal if self.causal_flags is None else self.causal_flags,
                c.window_size, self.block_table, c.softcap,
                self.q_descale, self.k_descale, self.v_descale)

    def call_kwargs(self) -> dict:
        """Keywords of the call: the three optional tensors always, a newer feature's keyword only
        when the case uses it (so implementations without it still run every other case)."""
        c = self.case
        values = {"chunk_lookback": c.chunk_lookback, "mm_prefix_range": self.mm_prefix_range,
                  "mm_prefix_clamp_sliding_window": c.mm_prefix_clamp_sliding_window,
                  "kv_quant_mode": c.kv_quant_mode, "k_scale_cache": self.k_scale_cache,
                  "v_scale_cache": self.v_scale_cache, "qq_bias": self.qq_bias,
                  "rswa_prefix_lens": self.rswa_prefix_lens, "rswa_window": c.rswa_window,
                  "use_alibi_sqrt": c.use_alibi_sqrt, "softmax_lse": self.softmax_lse}
        kwargs = {"alibi_slopes": self.alibi_slopes, "sinks": self.sinks, "output_scale": self.output_scale}
        kwargs.update((name, values[name]) for name in c.arguments_used if name in values)
        return kwargs


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _randn(shape, gen, dtype=torch.float32):
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)


def _cache_row_width(case: Case) -> int:
    """Elements per cached row: the head size, or its bytes for a packed INT4 cache."""
    return case.head_size // 2 if case.kv_dtype == "int4" else case.head_size


def _cache_pair(case: Case, num_blocks: int, dtype, device):
    width = _cache_row_width(case)
    shape = (num_blocks, case.block_size, case.num_kv_heads, width)
    if case.layout == "kv_combined":
        kv = torch.empty(num_blocks, 2, *shape[1:], dtype=dtype, device=device)
        return kv[:, 0], kv[:, 1]
    if case.layout == "kv_outer":
        kv = torch.empty(2, *shape, dtype=dtype, device=device)
        return kv[0], kv[1]
    if case.layout == "head_major":
        store = (num_blocks, case.num_kv_heads, case.block_size, width)
        return (torch.empty(store, dtype=dtype, device=device).permute(0, 2, 1, 3),
                torch.empty(store, dtype=dtype, device=device).permute(0, 2, 1, 3))
    if case.layout == "kv_unlike":
        store = (num_blocks + 1, case.num_kv_heads, case.block_size + 3, width)
        v = torch.empty(store, dtype=dtype, device=device)[1:, :, 2:2 + case.block_size].permute(0, 2, 1, 3)
        return torch.empty(shape, dtype=dtype, device=device), v
    if case.layout == "head_padded":
        padded = (*shape[:-1], width + 8)
        return (torch.empty(padded, dtype=dtype, device=device)[..., :width],
                torch.empty(padded, dtype=dtype, device=device)[..., :width])
    return torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device)


def _fill_padding(t: torch.Tensor, value: float) -> None:
    """Fill the hidden last-dim padding of a head_padded view."""
    base = t.as_strided((*t.shape[:-1], t.stride(-2)), (*t.stride()[:-1], 1))
    base[..., t.shape[-1]:] = value


def _query_buffers(case: Case, num_tokens: int, dtype, out_dtype, device):
    hq, hkv, d = case.num_q_heads, case.num_kv_heads, case.head_size
    if case.layout == "fused_qkv":
        q = torch.empty(num_tokens, hq + 2 * hkv, d, dtype=dtype, device=device)[:, :hq]
    elif case.layout == "head_padded":
        q = torch.empty(num_tokens, hq, d + 8, dtype=dtype, device=device)[..., :d]
    else:
        q = torch.empty(num_tokens, hq, d, dtype=dtype, device=device)
    if case.layout == "out_strided":
        out = torch.empty(num_tokens, 2 * hq, d, dtype=out_dtype, device=device)[:, ::2]
    elif case.layout == "head_padded":
        out = torch.empty(num_tokens, hq, d + 8, dtype=out_dtype, device=device)[..., :d]
    else:
        out = torch.empty(num_tokens, hq, d, dtype=out_dtype, device=device)
    return q, out


def visible_slots(case: Case, block_table: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """Bool ``[num_blocks, block_size]``: cache slots some query of some sequence can see."""
    seen = torch.zeros(num_blocks, case.block_size, dtype=torch.bool)
    for seq, (seq_len, q_len) in enumerate(zip(case.seq_lens, case.query_lens)):
        if q_len == 0 or seq_len == 0:
            continue
        # qq_bias hides keys by adding -inf to their scores: they are still read, so they count as seen.
        keys = visibility(seq_len, q_len, case.causal_of(seq), case.window_of(seq), "cpu",
                          chunk_lookback=case.chunk_lookback, prefix_ranges=case.ranges_of(seq),
                          clamp_ranges_to_window=case.mm_prefix_clamp_sliding_window,
                          rswa_prefix_len=case.rswa_prefix_lens[seq] if case.rswa_prefix_lens else None,
                          rswa_window=case.rswa_window)
        keys = keys.any(dim=0).nonzero().flatten()
        seen[block_table[seq, keys // case.block_size].long(), keys % case.block_size] = True
    return seen


def scatter_block_table(blocks_needed, block_ids: torch.Tensor, width: int, fill: int) -> torch.Tensor:
    """int32 ``[num_seqs, width]``: sequence i takes the next ``blocks_needed[i]`` ids of ``block_ids``
    in order; every column past a sequence's last block holds ``fill``."""
    table = torch.full((len(blocks_needed), width), fill, dtype=torch.int32)
    start = 0
    for seq, n in enumerate(blocks_needed):
        table[seq, :n] = block_ids[start:start + n].to(torch.int32)
        start += n
    return table


def prefix_range_tensor(case: Case) -> torch.Tensor | None:
    """int32 ``[num_seqs, max_ranges + 1, 2]`` from ``case.mm_prefix_range`` (None without ranges).

    Rows are padded with unused entries, (5, 2), past a sequence's own ranges: start >= end must be
    skipped whatever the values. ``range_slack`` 0 with equally many ranges per row leaves none."""
    if not case.mm_prefix_range:
        return None
    num_seqs = len(case.seq_lens)
    width = max(len(case.ranges_of(s)) for s in range(num_seqs)) + case.range_slack
    table = torch.tensor([[5, 2]], dtype=torch.int32).repeat(num_seqs, width, 1)
    for seq in range(num_seqs):
        for i, (start, end) in enumerate(case.ranges_of(seq)):
            table[seq, i] = torch.tensor([start, end], dtype=torch.int32)
    return table


def _quantize_per_seq_head(case: Case, vals, table, blocks_needed, fallback, salt: int):
    """(cache values to store, descale ``[num_seqs, num_kv_heads]``) for per-(sequence, KV head) fp8.

    Sequence s's blocks, head h, are multiplied by ``2 ** ((s + 2h + salt) % 4 - 1.5)`` (no new
    random draws) and quantized with their own amax / 240; blocks no sequence owns keep the
    per-tensor ``fallback`` scale."""
    num_seqs, heads = len(case.seq_lens), case.num_kv_heads
    out = vals / fallback
    descale = torch.ones(num_seqs, heads, dtype=torch.float32)
    for seq, n in enumerate(blocks_needed):
        if n == 0:
            continue
        blocks = table[seq, :n].long()
        factor = torch.tensor([2.0 ** ((seq + 2 * h + salt) % 4 - 1.5) for h in range(heads)])
        rows = vals[blocks] * factor[None, None, :, None]
        descale[seq] = rows.abs().amax(dim=(0, 1, 3)).clamp_min(1e-6) / FP8_TOP
        out[blocks] = rows / descale[seq][None, None, :, None]
    return out, descale


def _block_table_on(device, layout: str, backing: torch.Tensor, block_table: torch.Tensor, width: int):
    """The block table on ``device``, the same view of its backing table as on the host."""
    if layout == "bt_strided":
        return backing.to(device)[:, :width]
    if layout == "bt_colstrided":
        return backing.to(device)[:, ::2]
    return block_table.to(device)


def _tree_bias(case: Case, gen) -> torch.Tensor:
    """float32 ``[max_q, max_q]``: a random draft tree over the new tokens (each token's parent is an
    earlier one); a token sees its ancestors and itself with a random bias, every other new key -inf."""
    size = max(max(case.query_lens), 1)
    parents = [0] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, size)]
    bias = torch.full((size, size), float("-inf"))
    for i in range(size):
        node = i
        while True:
            bias[i, node] = float(torch.randn((), generator=gen)) * 0.5
            if node == 0:
                break
            node = parents[node]
    if case.qq_bias == "dead-row":
        bias[0] = float("-inf")
    if case.layout == "qq_bias_strided":
        wide = torch.full((size, 2 * size), float("nan"))
        wide[:, ::2] = bias
        return wide[:, ::2]
    return bias


def build(case: Case, device, seed: int, poison: bool = False, exact: bool = False) -> Inputs:
    """Concrete inputs for ``case``. Identical ``seed`` gives identical visible data whatever ``poison``.

    With ``poison`` every byte the result must not depend on is NaN/Inf: cache slots no query
    sees (unreferenced blocks, block tails past seqused_k, slots outside the window), the
    spare block that unused block-table columns point at, head-dim padding, and the output
    buffer. Without it those bytes hold ordinary random values.

    With ``exact`` nothing has slack (for the sanitizer tier): the block table is exactly as
    wide as the longest sequence needs and the cache holds exactly the referenced blocks, so
    any read past what the call needs leaves its allocation.
    """
    gen = torch.Generator().manual_seed(seed)
    dtype = DTYPES[case.dtype]
    kv_dtype = DTYPES[case.kv_dtype or case.dtype]
    out_dtype = DTYPES[case.out_dtype or case.dtype]
    num_seqs = len(case.seq_lens)
    blocks_needed = [_cdiv(n, case.block_size) for n in case.seq_lens]
    width = max(max(blocks_needed, default=0), 1) + (0 if exact else case.table_slack)
    num_blocks = max(sum(blocks_needed), 1) + (0 if exact else 3)  # spares; one is what unused columns hit
    order = torch.randperm(num_blocks, generator=gen)
    spare_block = 0 if exact else int(order[-1])
    table_cols = width + 5 if case.layout == "bt_strided" and not exact else width
    table = scatter_block_table(blocks_needed, order, table_cols, spare_block)
    block_table = table[:, :width] if case.layout == "bt_strided" else table
    backing = table
    if case.layout == "bt_colstrided":  # the odd columns hold the spare block: a wrong stride reads them
        backing = torch.full((num_seqs, 2 * width), spare_block, dtype=torch.int32)
        backing[:, ::2] = block_table

    # Values are drawn in float32 on the CPU so every device sees the same numbers.
    shape = (num_blocks, case.block_size, case.num_kv_heads, case.head_size)
    k_vals, v_vals = _randn(shape, gen), _randn(shape, gen) * case.value_scale
    num_tokens = sum(case.query_lens) + case.pad_tokens
    q_vals = _randn((num_tokens, case.num_q_heads, case.head_size), gen) * case.logit_scale
    if case.aligned_logits:
        # One shared unit direction, from a generator of its own: the other draws stay as they were.
        direction = torch.randn(case.head_size, generator=torch.Generator().manual_seed(seed + 2))
        direction = direction / direction.norm() * case.aligned_logits
        q_vals, k_vals = q_vals + direction, k_vals - direction
    k_descale = v_descale = k_scales = v_scales = None
    if case.kv_quant_mode == INT4_MODE:  # packed and rotated, by vLLM's writer where it runs (int4_writer)
        if case.int4_rows:
            k_vals = int4_special_rows(k_vals, case.int4_rows, gen)
            v_vals = int4_special_rows(v_vals, case.int4_rows, gen)
        k_vals, v_vals, k_scales, v_scales = int4_quantize(k_vals.to(dtype), v_vals.to(dtype),
                                                           "cpu" if torch.device(device).type == "meta" else device)
    elif case.kv_quant_mode:  # per-token-head: every cached row quantized with its own scale
        k_vals, k_scales = per_token_head_quantize(k_vals, case.kv_dtype)
        v_vals, v_scales = per_token_head_quantize(v_vals, case.kv_dtype)
    elif kv_dtype is not dtype or dtype is DTYPES["float8_e4m3fn"]:  # fp8 cache: quantize with a per-tensor scale
        k_descale, v_descale = per_tensor_fp8_descale(k_vals), per_tensor_fp8_descale(v_vals)
        k_vals, v_vals = k_vals / k_descale, v_vals / v_descale
        if case.descale_per_head in (True, "k"):
            k_vals, k_descale = _quantize_per_seq_head(case, k_vals * k_descale, table, blocks_needed, k_descale, 0)
        if case.descale_per_head in (True, "v"):
            v_vals, v_descale = _quantize_per_seq_head(case, v_vals * v_descale, table, blocks_needed, v_descale, 1)

    if poison:
        hidden = ~visible_slots(case, block_table, num_blocks)
        if not exact:
            hidden[spare_block] = True
        # A separate generator keeps every later draw identical between clean and poisoned runs.
        coin = torch.rand(hidden.shape, generator=torch.Generator().manual_seed(seed + 1))
        poison_values = torch.where(coin < 0.5, float("nan"), float("inf"))
        fill = poison_values[..., None, None].expand(k_vals.shape)
        mask = hidden[..., None, None].expand(k_vals.shape)
        if kv_dtype == torch.uint8:  # INT4 bytes cannot hold NaN either: all nibbles 15 in K, 0 in V
            k_vals = torch.where(mask, torch.full_like(k_vals, 0xFF), k_vals)
            v_vals = torch.where(mask, torch.zeros_like(v_vals), v_vals)
        elif kv_dtype == torch.int8:  # int8 rows cannot hold NaN: their scales carry the poison
            k_vals = torch.where(mask, torch.full_like(k_vals, 127.0), k_vals)
            v_vals = torch.where(mask, torch.full_like(v_vals, -127.0), v_vals)
        else:
            k_vals = torch.where(mask, fill, k_vals)
            v_vals = torch.where(mask, -fill, v_vals)
        if case.kv_quant_mode:
            scale_fill = poison_values[..., None].expand(k_scales.shape)
            scale_mask = hidden[..., None].expand(k_scales.shape)
            k_scales = torch.where(scale_mask, scale_fill, k_scales)
            v_scales = torch.where(scale_mask, -scale_fill, v_scales)

    k, v = _cache_pair(case, num_blocks, kv_dtype, device)
    k.copy_(k_vals.to(kv_dtype))
    v.copy_(v_vals.to(kv_dtype))
    q, out = _query_buffers(case, num_tokens, dtype, out_dtype, device)
    q_descale = None
    if dtype is DTYPES["float8_e4m3fn"]:  # fp8 queries: a per-tensor scale, from the same draws
        q_descale = per_tensor_fp8_descale(q_vals)
        q_vals = q_vals / q_descale
    q.copy_(q_vals.to(dtype))
    out.fill_(float("nan") if out_dtype.is_floating_point else 0)
    if case.layout == "head_padded":
        pad_value = float("nan") if poison else 0.0
        _fill_padding(q, pad_value)
        for t in (k, v):  # integer caches: the largest value stands for NaN
            _fill_padding(t, pad_value if t.dtype.is_floating_point else (0xFF if poison else 0))

    cu = torch.tensor([0] + [sum(case.query_lens[: i + 1]) for i in range(num_seqs)], dtype=torch.int32)
    slopes = None
    if case.alibi:
        slopes = (torch.rand(case.num_q_heads, generator=gen) * case.alibi_scale).to(device)
    sinks = None
    if case.sinks:
        sinks = (_randn((case.num_q_heads,), gen) * case.sink_scale).to(device)
    output_scale = None
    if out_dtype in (DTYPES["float8_e4m3fn"],):
        output_scale = torch.tensor([case.output_scale], dtype=torch.float32, device=device)
    to_dev = (lambda t: None if t is None else t.to(device))
    extras = dict(
        causal_flags=None if isinstance(case.causal, bool) else torch.tensor(case.causal, dtype=torch.int32),
        qq_bias=_tree_bias(case, gen) if case.qq_bias else None,
        rswa_prefix_lens=torch.tensor(case.rswa_prefix_lens, dtype=torch.int32) if case.rswa_prefix_lens else None,
        softmax_lse=torch.full((num_tokens, case.num_q_heads), float("nan")) if case.softmax_lse else None,
    )
    return Inputs(
        case=case, q=q, k=k, v=v, out=out, cu_seqlens_q=cu.to(device),
        seqused_k=torch.tensor(case.seq_lens, dtype=torch.int32, device=device),
        block_table=_block_table_on(device, case.layout, backing, block_table, width),
        softmax_scale=case.softmax_scale_factor / math.sqrt(case.head_size), k_descale=to_dev(k_descale), v_descale=to_dev(v_descale),
        alibi_slopes=slopes, sinks=sinks, output_scale=output_scale, seed=seed,
        mm_prefix_range=to_dev(prefix_range_tensor(case)), k_scale_cache=to_dev(k_scales),
        v_scale_cache=to_dev(v_scales), q_descale=to_dev(q_descale), **{k: to_dev(t) for k, t in extras.items()},
    )


def slice_sequence(inputs: Inputs, seq: int) -> tuple[Inputs, slice]:
    """The same data as a batch holding only sequence ``seq`` (shares the cache); returns its rows too."""
    c = inputs.case
    start = sum(c.query_lens[:seq])
    rows = slice(start, start + c.query_lens[seq])
    case = c.with_(label=f"{c.label}-seq{seq}", seq_lens=(c.seq_lens[seq],), query_lens=(c.query_lens[seq],),
                   pad_tokens=0)
    dev = inputs.q.device
    case = case.with_(mm_prefix_range=tuple((0, a, b) for a, b in c.ranges_of(seq)))
    ranges = None if inputs.mm_prefix_range is None else inputs.mm_prefix_range[seq:seq + 1]
    alone = replace(
        inputs, case=case, q=inputs.q[rows], out=inputs.out[rows], mm_prefix_range=ranges,
        cu_seqlens_q=torch.tensor([0, c.query_lens[seq]], dtype=torch.int32, device=dev),
        seqused_k=inputs.seqused_k[seq:seq + 1], block_table=inputs.block_table[seq:seq + 1],
    )
    return alone, rows
