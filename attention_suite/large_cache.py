"""Inputs whose KV blocks sit past element 2^31 of the cache (GPU stress only: ~8 GB)."""

from __future__ import annotations

import math

import torch

from .cases import Case, Inputs, scatter_block_table
from .check import reference_outputs
from .tolerance import as_values, judge

BLOCK_SIZE, KV_HEADS, HEAD = 16, 1, 128
ELEMENTS_PER_BLOCK = BLOCK_SIZE * KV_HEADS * HEAD
FIRST_HIGH_BLOCK = (1 << 31) // ELEMENTS_PER_BLOCK + 1  # every used block starts past 2^31 elements


def large_cache_inputs(device: str, seed: int) -> Inputs:
    case = Case(label="cache-past-2^31", seq_lens=(300, 700), query_lens=(1, 5), num_q_heads=4,
                num_kv_heads=KV_HEADS, head_size=HEAD, block_size=BLOCK_SIZE)
    gen = torch.Generator().manual_seed(seed)
    blocks_needed = [math.ceil(n / BLOCK_SIZE) for n in case.seq_lens]
    num_blocks = FIRST_HIGH_BLOCK + sum(blocks_needed) + 1
    k = torch.empty(num_blocks, BLOCK_SIZE, KV_HEADS, HEAD, dtype=torch.float16, device=device)
    v = torch.empty_like(k)
    used = FIRST_HIGH_BLOCK + torch.randperm(sum(blocks_needed), generator=gen)
    table = scatter_block_table(blocks_needed, used, max(blocks_needed), 0)
    k[used.to(device)] = torch.randn(len(used), BLOCK_SIZE, KV_HEADS, HEAD, generator=gen).to(device, torch.float16)
    v[used.to(device)] = torch.randn(len(used), BLOCK_SIZE, KV_HEADS, HEAD, generator=gen).to(device, torch.float16)
    tokens = sum(case.query_lens)
    q = torch.randn(tokens, case.num_q_heads, HEAD, generator=gen).to(device, torch.float16)
    return Inputs(case=case, q=q, k=k, v=v, out=torch.full_like(q, float("nan")),
                  cu_seqlens_q=torch.tensor([0, 1, 6], dtype=torch.int32, device=device),
                  seqused_k=torch.tensor(case.seq_lens, dtype=torch.int32, device=device),
                  block_table=table.to(device), softmax_scale=HEAD ** -0.5, seed=seed)


def judge_large(inputs: Inputs, out: torch.Tensor):
    golden, baseline = reference_outputs(inputs)
    return judge(as_values(out[:inputs.num_tokens_used], None), golden, baseline, out.dtype)
