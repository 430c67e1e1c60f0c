"""Inputs for one sweep point: a real paged cache and the contiguous copies the baselines read.

All rotated copies share one K pool and one V pool; copy ``c`` owns a disjoint set of blocks,
handed out from a seeded random permutation, so every sequence's blocks are scattered and out
of order (paging is real) and different copies never share a byte of KV. Queries, outputs and
block tables are per copy; ``cu_seqlens_q`` and ``seqused_k`` are shared (same batch shape).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .shapes import Point


@dataclass
class PagedInputs:
    point: Point
    q: list[torch.Tensor]  # per copy, [num_tokens, num_q_heads, head_size]
    out: list[torch.Tensor]  # per copy, like q
    k_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_size], all copies
    v_cache: torch.Tensor
    block_tables: list[torch.Tensor]  # per copy, int32 [num_seqs, max_blocks]
    cu_seqlens_q: torch.Tensor  # int32 [num_seqs + 1]
    seqused_k: torch.Tensor  # int32 [num_seqs]
    softmax_scale: float

    @property
    def copies(self) -> int:
        return len(self.q)

    @property
    def max_seqlen_q(self) -> int:
        return self.point.max_seqlen_q

    @property
    def max_seqlen_k(self) -> int:
        return self.point.max_seqlen_k

    def token_ranges(self) -> list[tuple[int, int]]:
        """[start, end) of each sequence's query tokens in varlen order."""
        cu = self.cu_seqlens_q.tolist()
        return [(cu[i], cu[i + 1]) for i in range(len(cu) - 1)]

    def dense_kv(self, copy: int, seq_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Contiguous K and V ``[n, kv_len, num_kv_heads, head_size]`` for sequences of equal length."""
        kv_lens = {self.point.seqs[i][1] for i in seq_ids}
        if len(kv_lens) != 1:
            raise ValueError("dense_kv: sequences must share one KV length")
        kv_len = kv_lens.pop()
        nb = -(-kv_len // self.point.block_size)
        ids = self.block_tables[copy][seq_ids, :nb].long()  # [n, nb]
        shape = (len(seq_ids), nb * self.point.block_size, *self.k_cache.shape[2:])
        k = self.k_cache[ids].reshape(shape)[:, :kv_len].contiguous()
        v = self.v_cache[ids].reshape(shape)[:, :kv_len].contiguous()
        return k, v

    def nbytes(self) -> int:
        ts = [*self.q, *self.out, self.k_cache, self.v_cache, *self.block_tables]
        return sum(t.numel() * t.element_size() for t in ts)


def build_inputs(point: Point, copies: int, device, dtype=torch.bfloat16, seed: int = 0) -> PagedInputs:
    """Random q and caches (N(0,1)), scattered block tables, varlen metadata for ``point``."""
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
    k_cache = torch.randn(cache_shape, dtype=dtype, device=device)
    v_cache = torch.randn(cache_shape, dtype=dtype, device=device)
    q_shape = (point.num_tokens, point.num_q_heads, point.head_size)
    q = [torch.randn(q_shape, dtype=dtype, device=device) for _ in range(copies)]
    out = [torch.empty(q_shape, dtype=dtype, device=device) for _ in range(copies)]

    q_lens = [ql for ql, _ in point.seqs]
    cu = torch.zeros(point.num_seqs + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(q_lens, dtype=torch.int32), 0)
    seqused = torch.tensor([kl for _, kl in point.seqs], dtype=torch.int32)
    return PagedInputs(point=point, q=q, out=out, k_cache=k_cache, v_cache=v_cache, block_tables=tables,
                       cu_seqlens_q=cu.to(device), seqused_k=seqused.to(device),
                       softmax_scale=point.head_size ** -0.5)
