"""vLLM's own fp8 tests, as vLLM calls the kernel, against ours.

vLLM's ``tests/kernels/attention/test_triton_unified_attention.py`` (2026) calls
``unified_attention`` by keyword with: a bfloat16 output for fp8 queries, a 0-dim float32
``q_descale``, fp8 caches with ``k_descale``/``v_descale`` of shape ``[num_seqs, num_kv_heads]``
(one value expanded), ``kv_quant_mode=KVQuantMode.FP8_PER_TENSOR``, ``softcap=0`` for "off",
``window_size=(w - 1, 0)``, block tables drawn at random from the whole cache (ids repeat) and
caches of 2048 and 32768 blocks (the latter for index overflow). Its two fp8 tests are
``test_triton_unified_attn`` with ``q_dtype=fp8`` and ``test_triton_unified_attn_bf16_query_fp8_kv``.

Here the same inputs, built the same way, go through our kernel's forced 2D, forced 3D and
heuristic paths (its ``seq_threshold_3D`` of 0 / 8 picks 2D / 3D); the judge is our reference
and tolerance rule, stricter than vLLM's 0.15 absolute. On the GPU the whole grid of those two
tests runs; under the interpreter a pairwise subset of it, with the 2048-block cache.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import torch

import reference
from attention_suite import VllmKVQuantMode as KVQuantMode, judge
from attention_suite import device as suite_device

ON_GPU = suite_device.ensure() == "cuda"
FP8 = torch.float8_e4m3fn


@dataclass(frozen=True)
class VllmCall:
    seq_lens: tuple  # (query_len, kv_len) per sequence
    num_heads: tuple  # (query heads, KV heads)
    head_size: int
    sliding_window: int | None
    soft_cap: float | None
    num_blocks: int
    fp8_query: bool  # False: vLLM's bf16-query / fp8-KV test

    @property
    def id(self) -> str:
        seqs = "decode" if all(q == 1 for q, _ in self.seq_lens) else "mixed"
        return "-".join([
            "q-fp8" if self.fp8_query else "q-bf16", seqs, f"h{self.num_heads[0]}-{self.num_heads[1]}",
            f"d{self.head_size}", f"w{self.sliding_window or 0}", f"cap{int(self.soft_cap or 0)}",
            f"nb{self.num_blocks}"])


SEQ_LENS = (((1, 1328), (5, 18), (129, 463)), ((1, 523), (1, 37), (1, 2011)))
NUM_HEADS = ((4, 4), (8, 2), (5, 1))
HEAD_SIZES = (128, 256)
WINDOWS = (None, 64, 128, 256)
SOFT_CAPS = (None, 50.0)
NUM_BLOCKS = (32768, 2048)


def _grid() -> list[VllmCall]:
    fp8_query = [VllmCall(s, h, d, w, c, n, True)
                 for s, h, d, w, c, n in itertools.product(SEQ_LENS, NUM_HEADS, HEAD_SIZES, WINDOWS, SOFT_CAPS,
                                                           NUM_BLOCKS)]
    fp8_kv = [VllmCall(s, h, d, None, None, n, False)
              for s, h, d, n in itertools.product(SEQ_LENS, NUM_HEADS, HEAD_SIZES, NUM_BLOCKS)]
    return fp8_query + fp8_kv


def _interpreter_subset() -> list[VllmCall]:
    """Both batches, every head grouping, a window and the softcap, the 2048-block cache (the
    32768-block one is 0.5 GB of fp8 per cache at head 256): a minute under the interpreter."""
    mixed, decode = SEQ_LENS
    return [VllmCall(mixed, (8, 2), 128, 64, 50.0, 2048, True),
            VllmCall(decode, (5, 1), 128, None, None, 2048, True),
            VllmCall(decode, (4, 4), 128, 128, 50.0, 2048, True),
            VllmCall(mixed, (8, 2), 256, None, None, 2048, False)]


CALLS = _grid() if ON_GPU else _interpreter_subset()


def vllm_inputs(call: VllmCall, device: str, seed: int = 0) -> dict:
    """The keyword arguments vLLM's test passes, built as it builds them (its scales included)."""
    gen = torch.Generator(device).manual_seed(seed)  # on the device: the 32768-block caches are 1 GB
    query_lens = [q for q, _ in call.seq_lens]
    kv_lens = [k for _, k in call.seq_lens]
    num_q_heads, num_kv_heads = call.num_heads
    block_size = 16

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device).to(torch.bfloat16)

    def fp8_cache(scale):
        # Drawn and quantized a slice of blocks at a time: whole float32 draws of the 32768-block caches
        # (2 GB each at head 256) run many parallel test workers out of GPU memory.
        cache = torch.empty(call.num_blocks, block_size, num_kv_heads, call.head_size, dtype=FP8, device=device)
        for start in range(0, call.num_blocks, 2048):
            rows = cache[start:start + 2048]
            rows.copy_((randn(*rows.shape) / scale).to(FP8))
        return cache

    query = randn(sum(query_lens), num_q_heads, call.head_size)
    max_blocks = -(-max(kv_lens) // block_size)
    block_table = torch.randint(0, call.num_blocks, (len(kv_lens), max_blocks), generator=gen,
                                dtype=torch.int32, device=device)
    q_scale, k_scale, v_scale = 0.75, 0.5, 0.25  # vLLM's non-1 scales
    descale_shape = (len(kv_lens), num_kv_heads)
    kwargs = dict(
        q=(query / q_scale).to(FP8) if call.fp8_query else query,
        k=fp8_cache(k_scale), v=fp8_cache(v_scale),
        out=torch.empty_like(query),
        cu_seqlens_q=torch.tensor([0] + query_lens, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(device),
        seqused_k=torch.tensor(kv_lens, dtype=torch.int32, device=device),
        max_seqlen_q=max(query_lens), max_seqlen_k=max(kv_lens),
        softmax_scale=call.head_size ** -0.5, causal=True,
        window_size=(call.sliding_window - 1, 0) if call.sliding_window is not None else (-1, -1),
        block_table=block_table, softcap=call.soft_cap if call.soft_cap is not None else 0,
        q_descale=torch.tensor(q_scale, dtype=torch.float32, device=device) if call.fp8_query else None,
        k_descale=torch.full(descale_shape, k_scale, dtype=torch.float32, device=device),
        v_descale=torch.full(descale_shape, v_scale, dtype=torch.float32, device=device),
        kv_quant_mode=KVQuantMode.FP8_PER_TENSOR,
    )
    return kwargs


@pytest.mark.numerics
@pytest.mark.parametrize("path", ["2d", "3d", "auto"])
@pytest.mark.parametrize("call", CALLS, ids=lambda c: c.id)
def test_vllm_fp8_calling_pattern(ctx, call, path):
    if not ctx.impl.is_ours:
        pytest.skip("vLLM's calling pattern against paged_kernels.unified_attention")
    kwargs = vllm_inputs(call, ctx.device)
    split_kv = {"2d": False, "3d": True, "auto": None}[path]
    out = ctx.impl.func(**{**kwargs, "out": kwargs["out"].clone()}, split_kv=split_kv)
    golden, baseline = (
        reference.unified_attention(**{**kwargs, "out": torch.zeros_like(kwargs["out"], dtype=dtype)},
                                   precision=precision).double()
        for dtype, precision in ((torch.float64, "float64"), (kwargs["out"].dtype, "native")))
    verdict = judge(out.double(), golden, baseline, out.dtype)
    assert verdict.passed, f"{call.id} {path}: {verdict.message()}"
