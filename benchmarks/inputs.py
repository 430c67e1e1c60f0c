"""Inputs for one sweep point: a real paged cache and the contiguous copies the baselines read.

All rotated copies share one K pool and one V pool; copy ``c`` owns a disjoint set of blocks,
handed out from a seeded random permutation, so every sequence's blocks are scattered and out
of order (paging is real) and different copies never share a byte of KV. Queries, outputs and
block tables are per copy; ``cu_seqlens_q`` and ``seqused_k`` are shared (same batch shape).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attention_suite import per_tensor_fp8_descale, per_token_head_quantize
from reference import int4

from .shapes import KV_QUANT_MODE, Point

FP8 = getattr(torch, "float8_e4m3fn", None)


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tensor, by the suite's rule: (x / descale in e4m3, one-element float32 descale = amax / 240)."""
    descale = per_tensor_fp8_descale(x)
    return (x.float() / descale).to(FP8), descale


def quantize_int8_per_token_head(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (slot, KV head), by the suite's rule: (int8 values, float32 scales = row amax / 127)."""
    values, scales = per_token_head_quantize(x, "int8")
    return values.to(torch.int8), scales


# Blocks quantized at once: bounds the writer's float32 temporaries (a few times the chunk's size).
INT4_CHUNK_BLOCKS = 4096


def quantize_int4_per_token_head(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's INT4 format (``reference.int4``'s writer, the bytes vLLM stores): (uint8 ``[..., head // 2]``,
    float32 scales carrying the zero points), quantized a chunk of blocks at a time, on x's device."""
    packed = torch.empty(*x.shape[:-1], x.shape[-1] // 2, dtype=torch.uint8, device=x.device)
    scales = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], INT4_CHUNK_BLOCKS):
        rows = slice(start, start + INT4_CHUNK_BLOCKS)
        packed[rows], scales[rows] = int4.quantize(x[rows], "k_cache")
    return packed, scales


@dataclass
class PagedInputs:
    point: Point
    q: list[torch.Tensor]  # per copy, [num_tokens, num_q_heads, head_size]
    out: list[torch.Tensor]  # per copy, like q
    k_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_size] (int4-pth: head_size // 2), all copies
    v_cache: torch.Tensor
    block_tables: list[torch.Tensor]  # per copy, int32 [num_seqs, max_blocks]
    cu_seqlens_q: torch.Tensor  # int32 [num_seqs + 1]
    seqused_k: torch.Tensor  # int32 [num_seqs]
    softmax_scale: float
    q_descale: torch.Tensor | None = None  # fp8 q: one float32 element, shared by the copies
    k_descale: torch.Tensor | None = None  # fp8 KV: one float32 element each
    v_descale: torch.Tensor | None = None
    k_scale_cache: torch.Tensor | None = None  # int8/int4-pth: float32 [num_blocks, block_size, num_kv_heads]
    v_scale_cache: torch.Tensor | None = None
    qq_bias: torch.Tensor | None = None  # a draft tree's float32 [q_len, q_len] bias (0 / -inf)

    @property
    def copies(self) -> int:
        return len(self.q)

    @property
    def max_seqlen_q(self) -> int:
        return self.point.max_seqlen_q

    @property
    def max_seqlen_k(self) -> int:
        return self.point.max_seqlen_k

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: outputs, and the dequantized values of a quantized point."""
        return self.out[0].dtype

    def quant_kwargs(self) -> dict:
        """``unified_attention``'s descales (None for bf16) and quantization keywords for this point."""
        kw = dict(q_descale=self.q_descale, k_descale=self.k_descale, v_descale=self.v_descale)
        if self.point.kv_format != "bf16":
            kw["kv_quant_mode"] = KV_QUANT_MODE[self.point.kv_format]
        if self.k_scale_cache is not None:
            kw.update(k_scale_cache=self.k_scale_cache, v_scale_cache=self.v_scale_cache)
        return kw

    def feature_kwargs(self) -> dict:
        """``unified_attention``'s keywords for the point's features beyond the cache formats."""
        return {} if self.qq_bias is None else {"qq_bias": self.qq_bias}

    def q_values(self, copy: int) -> torch.Tensor:
        """Copy ``copy``'s queries in the compute dtype (dequantized for fp8 queries)."""
        q = self.q[copy]
        return q if self.q_descale is None else (q.float() * self.q_descale).to(self.dtype)

    def _values(self, cache: torch.Tensor, ids: torch.Tensor, descale, scale_cache) -> torch.Tensor:
        """Blocks ``ids`` of ``cache`` in the compute dtype, dequantized (int4-pth: rotated back too)."""
        x = cache[ids]
        if self.point.kv_format == "int4-pth":
            return int4.rows(x, scale_cache[ids], torch.float32).to(self.dtype)
        if scale_cache is not None:
            return (x.float() * scale_cache[ids][..., None]).to(self.dtype)
        return x if descale is None else (x.float() * descale).to(self.dtype)

    def token_ranges(self) -> list[tuple[int, int]]:
        """[start, end) of each sequence's query tokens in varlen order."""
        cu = self.cu_seqlens_q.tolist()
        return [(cu[i], cu[i + 1]) for i in range(len(cu) - 1)]

    def dense_kv(self, copy: int, seq_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Contiguous K and V ``[n, kv_len, num_kv_heads, head_size]`` for sequences of equal length
        (in the compute dtype: dequantized for a quantized cache)."""
        kv_lens = {self.point.seqs[i][1] for i in seq_ids}
        if len(kv_lens) != 1:
            raise ValueError("dense_kv: sequences must share one KV length")
        kv_len = kv_lens.pop()
        nb = -(-kv_len // self.point.block_size)
        ids = self.block_tables[copy][seq_ids, :nb].long()  # [n, nb]
        shape = (len(seq_ids), nb * self.point.block_size, self.point.num_kv_heads, self.point.head_size)
        k = self._values(self.k_cache, ids, self.k_descale, self.k_scale_cache).reshape(shape)[:, :kv_len].contiguous()
        v = self._values(self.v_cache, ids, self.v_descale, self.v_scale_cache).reshape(shape)[:, :kv_len].contiguous()
        return k, v

    def nbytes(self) -> int:
        ts = [*self.q, *self.out, self.k_cache, self.v_cache, *self.block_tables]
        ts += [t for t in (self.k_scale_cache, self.v_scale_cache) if t is not None]
        return sum(t.numel() * t.element_size() for t in ts)


def build_inputs(point: Point, copies: int, device, dtype=torch.bfloat16, seed: int = 0,
                 fill: bool = True) -> PagedInputs:
    """Random q and caches (N(0,1), quantized to the point's formats), scattered block tables,
    varlen metadata for ``point``. ``dtype`` is the compute dtype (q and out unless quantized).
    ``fill=False`` leaves q and the caches unwritten (scales 1) for callers that need only the
    shapes, dtypes and metadata (``benchmarks.disasm`` compiles from them; nothing is computed)."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = point.blocks_per_seq()
    per_copy = sum(blocks_per_seq)
    total_blocks = per_copy * copies
    max_blocks = max(blocks_per_seq)
    perm = torch.randperm(total_blocks, generator=gen).to(torch.int32)
    tables = []
    offset = 0
    for _ in range(copies):
        table = torch.zeros(point.num_seqs, max_blocks, dtype=torch.int32)
        for s, nb in enumerate(blocks_per_seq):
            table[s, :nb] = perm[offset:offset + nb]
            offset += nb
        tables.append(table.to(device))

    torch.manual_seed(seed)  # device RNG for the large fills (fast on the GPU)
    cache_shape = (total_blocks, point.block_size, point.num_kv_heads, point.head_size)
    q_shape = (point.num_tokens, point.num_q_heads, point.head_size)
    out = [torch.empty(q_shape, dtype=dtype, device=device) for _ in range(copies)]
    if not fill:
        return _unfilled_inputs(point, device, cache_shape, q_shape, out, tables)
    k_cache = torch.randn(cache_shape, dtype=dtype, device=device)
    v_cache = torch.randn(cache_shape, dtype=dtype, device=device)
    q = [torch.randn(q_shape, dtype=dtype, device=device) for _ in range(copies)]
    quant: dict = {}
    if point.kv_format == "fp8":
        (k_cache, quant["k_descale"]), (v_cache, quant["v_descale"]) = quantize_fp8(k_cache), quantize_fp8(v_cache)
    elif point.kv_format == "int8-pth":
        (k_cache, quant["k_scale_cache"]), (v_cache, quant["v_scale_cache"]) = \
            quantize_int8_per_token_head(k_cache), quantize_int8_per_token_head(v_cache)
    elif point.kv_format == "int4-pth":
        (k_cache, quant["k_scale_cache"]), (v_cache, quant["v_scale_cache"]) = \
            quantize_int4_per_token_head(k_cache), quantize_int4_per_token_head(v_cache)
    if point.q_format == "fp8":
        _, quant["q_descale"] = quantize_fp8(torch.stack(q))  # one descale for every copy
        q = [(x.float() / quant["q_descale"]).to(FP8) for x in q]

    return PagedInputs(point=point, q=q, out=out, k_cache=k_cache, v_cache=v_cache, block_tables=tables,
                       **_metadata(point, device), **quant)


def _metadata(point: Point, device) -> dict:
    q_lens = [ql for ql, _ in point.seqs]
    cu = torch.zeros(point.num_seqs + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(q_lens, dtype=torch.int32), 0)
    seqused = torch.tensor([kl for _, kl in point.seqs], dtype=torch.int32)
    meta = dict(cu_seqlens_q=cu.to(device), seqused_k=seqused.to(device), softmax_scale=point.head_size ** -0.5)
    if point.tree:
        visible = torch.tensor(point.tree_visible())
        meta["qq_bias"] = torch.zeros(visible.shape).masked_fill_(~visible, float("-inf")).to(device)
    return meta


def _unfilled_inputs(point: Point, device, cache_shape, q_shape, out, tables) -> PagedInputs:
    kv_dtype = {"bf16": out[0].dtype, "fp8": FP8, "int8-pth": torch.int8, "int4-pth": torch.uint8}[point.kv_format]
    q_dtype = FP8 if point.q_format == "fp8" else out[0].dtype
    one = torch.ones(1, dtype=torch.float32, device=device)
    quant: dict = {}
    if point.kv_format == "fp8":
        quant.update(k_descale=one, v_descale=one.clone())
    elif point.kv_format in ("int8-pth", "int4-pth"):
        scales = torch.ones(cache_shape[:3], dtype=torch.float32, device=device)
        quant.update(k_scale_cache=scales, v_scale_cache=scales.clone())
    if point.kv_format == "int4-pth":  # two 4-bit values per byte
        cache_shape = (*cache_shape[:3], cache_shape[3] // 2)
    if point.q_format == "fp8":
        quant["q_descale"] = one.clone()
    return PagedInputs(point=point, q=[torch.empty(q_shape, dtype=q_dtype, device=device) for _ in out], out=out,
                       k_cache=torch.empty(cache_shape, dtype=kv_dtype, device=device),
                       v_cache=torch.empty(cache_shape, dtype=kv_dtype, device=device),
                       block_tables=tables, **_metadata(point, device), **quant)
