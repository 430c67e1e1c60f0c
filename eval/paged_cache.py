"""A paged KV cache driven the way a serving engine drives one.

Blocks come from a free list that starts as a seeded random permutation, so a sequence's blocks
are scattered and out of order: a kernel that assumed contiguous or identity-mapped blocks
would read the wrong keys and fail parity. Each step appends the new tokens of some sequences
and produces the varlen metadata (``cu_seqlens_q``, ``seqused_k``, ``block_table``) that
``unified_attention`` takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepPlan:
    """Where this step's new tokens go and what the attention call needs to read them back.

    Token order is varlen order: sequence by sequence in ``seq_ids`` order, each sequence's new
    tokens in position order.
    """

    seq_ids: list[int]
    q_lens: list[int]
    is_decode: bool
    cu_seqlens_q: torch.Tensor  # int32 [num_seqs + 1]
    seqused_k: torch.Tensor  # int32 [num_seqs], lengths including this step's tokens
    block_table: torch.Tensor  # int32 [num_seqs, max_blocks]
    max_seqlen_q: int
    max_seqlen_k: int
    slot_block: torch.Tensor  # int64 [num_new_tokens]
    slot_offset: torch.Tensor  # int64 [num_new_tokens]

    @property
    def num_tokens(self) -> int:
        return sum(self.q_lens)


class PagedKVCache:
    """K/V for every layer in ``[num_blocks, block_size, num_kv_heads, head_dim]`` pools."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, num_blocks: int,
                 dtype: torch.dtype, device, seed: int = 0):
        self.num_layers, self.block_size, self.num_blocks = num_layers, block_size, num_blocks
        self.device = torch.device(device)
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        # NaN, not zeros: a kernel that reads a slot no sequence wrote must not get away with it.
        self.k = [torch.full(shape, float("nan"), dtype=dtype, device=self.device) for _ in range(num_layers)]
        self.v = [torch.full(shape, float("nan"), dtype=dtype, device=self.device) for _ in range(num_layers)]
        gen = torch.Generator().manual_seed(seed)
        self._free: list[int] = torch.randperm(num_blocks, generator=gen).tolist()
        self._blocks: dict[int, list[int]] = {}
        self._lengths: dict[int, int] = {}
        self._next_id = 0

    @staticmethod
    def blocks_needed(num_tokens: int, block_size: int) -> int:
        return -(-num_tokens // block_size)

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    def new_sequence(self) -> int:
        seq_id = self._next_id
        self._next_id += 1
        self._blocks[seq_id], self._lengths[seq_id] = [], 0
        return seq_id

    def release(self, seq_id: int) -> None:
        self._free.extend(self._blocks.pop(seq_id))
        del self._lengths[seq_id]

    def length(self, seq_id: int) -> int:
        return self._lengths[seq_id]

    def block_ids(self, seq_id: int) -> list[int]:
        return list(self._blocks[seq_id])

    def plan_step(self, seq_ids: list[int], q_lens: list[int], is_decode: bool) -> StepPlan:
        """Reserve slots for ``q_lens[i]`` new tokens of ``seq_ids[i]`` and build the metadata.

        The lengths advance now; the K/V land when each layer calls ``write``.
        """
        if len(seq_ids) != len(q_lens) or not seq_ids:
            raise ValueError("plan_step needs one q_len per sequence and at least one sequence")
        if is_decode and any(n != 1 for n in q_lens):
            raise ValueError("a decode step has exactly one new token per sequence")
        slot_block, slot_offset, tables, used = [], [], [], []
        for seq_id, q_len in zip(seq_ids, q_lens):
            start = self._lengths[seq_id]
            end = start + q_len
            blocks = self._blocks[seq_id]
            missing = self.blocks_needed(end, self.block_size) - len(blocks)
            if missing > len(self._free):
                raise RuntimeError(f"paged cache out of blocks: need {missing}, {len(self._free)} free")
            for _ in range(missing):
                blocks.append(self._free.pop())
            positions = range(start, end)
            slot_block.extend(blocks[p // self.block_size] for p in positions)
            slot_offset.extend(p % self.block_size for p in positions)
            self._lengths[seq_id] = end
            tables.append(blocks)
            used.append(end)
        width = max(1, max(len(t) for t in tables))
        # Entries past a sequence's last block are never read; 0 is as good as any.
        table = torch.zeros(len(tables), width, dtype=torch.int32)
        for row, blocks in enumerate(tables):
            table[row, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
        cu = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(q_lens, dtype=torch.int32), 0)
        dev = self.device
        return StepPlan(
            seq_ids=list(seq_ids), q_lens=list(q_lens), is_decode=is_decode,
            cu_seqlens_q=cu.to(dev), seqused_k=torch.tensor(used, dtype=torch.int32, device=dev),
            block_table=table.to(dev), max_seqlen_q=max(q_lens), max_seqlen_k=max(used),
            slot_block=torch.tensor(slot_block, dtype=torch.long, device=dev),
            slot_offset=torch.tensor(slot_offset, dtype=torch.long, device=dev),
        )

    def write(self, layer: int, plan: StepPlan, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store ``[num_new_tokens, num_kv_heads, head_dim]`` K/V of ``plan`` into ``layer``."""
        if key.shape[0] != plan.num_tokens:
            raise ValueError(f"layer {layer}: got K/V for {key.shape[0]} tokens, plan has {plan.num_tokens}")
        self.k[layer][plan.slot_block, plan.slot_offset] = key.to(self.k[layer].dtype)
        self.v[layer][plan.slot_block, plan.slot_offset] = value.to(self.v[layer].dtype)
