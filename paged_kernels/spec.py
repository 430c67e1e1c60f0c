"""What a call is: the facts the planner and the launch read, each derived once.

``validate.check_arguments`` returns a ``CallSpec`` for a whole call (``validate.describe_call``
builds one from the arguments ``make_plan`` takes). Everything after validation reads its fields
and derives nothing from the arguments again. It is built from shapes, dtypes and host scalars
only, so building one never syncs the device and is safe inside CUDA-graph capture.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

import torch

# log2(e): the kernels keep scores, softcap, ALiBi slopes and sink logits in log2 units (exp2 softmax).
LOG2E = 1.4426950408889634
# Kernel-side lengths and positions are int32.
INT32_MAX = 2**31 - 1
# A window bound meaning "unlimited": past any sequence the kernels accept, and small enough that
# the kernels' window arithmetic stays in int32.
UNLIMITED = 1 << 30


def next_power_of_2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def rotation_block(head_size: int) -> int:
    """INT4 caches: the rotation's group size ``b``, the largest power of two dividing ``head_size``."""
    return head_size & -head_size


# vLLM's seed for the INT4 rotation's random signs: part of the cache format.
RHT_SIGN_SEED = 0x9E3779B9


@functools.lru_cache(maxsize=None)
def rht_sign_bits(block: int) -> int:
    """The ``D`` of a ``block``-sized INT4 rotation group as a bitmask (bit i set: sign i is -1).

    The signs are vLLM's draws (``block`` Bernoulli(0.5) from a CPU generator seeded with
    ``RHT_SIGN_SEED``); as an int they reach the kernels as a compile-time constant, so a call
    uploads nothing (CUDA-graph capture needs no warm-up for them)."""
    generator = torch.Generator(device="cpu").manual_seed(RHT_SIGN_SEED)
    draws = torch.bernoulli(torch.full((block,), 0.5), generator=generator)
    return sum(1 << i for i, draw in enumerate(draws.tolist()) if draw == 0.0)


class KVQuant(enum.IntEnum):
    """KV-cache quantization, with vLLM's KVQuantMode names and values."""

    NONE = 0
    FP8_PER_TENSOR = 1
    INT8_PER_TOKEN_HEAD = 2
    FP8_PER_TOKEN_HEAD = 3
    INT4_PER_TOKEN_HEAD = 4

    @property
    def label(self) -> str:
        """The mode as kv_quant_mode's string form ("int8_per_token_head")."""
        return self.name.lower()

    @property
    def per_token_head(self) -> bool:
        """Each cached row has its own float32 scale (``k_scale_cache`` / ``v_scale_cache``)."""
        return self in (KVQuant.INT8_PER_TOKEN_HEAD, KVQuant.FP8_PER_TOKEN_HEAD, KVQuant.INT4_PER_TOKEN_HEAD)

    @property
    def packed_int4(self) -> bool:
        """uint8 caches of ``head_size // 2`` bytes per row (two 4-bit values, low nibble first) of rows
        rotated by ``R = H D`` (``rotation_block``), the zero point in each scale's 4 low mantissa bits."""
        return self is KVQuant.INT4_PER_TOKEN_HEAD

    @property
    def fp8_cache(self) -> bool:
        """The cache holds fp8 e4m3 values (dot operands go through f16)."""
        return self in (KVQuant.FP8_PER_TENSOR, KVQuant.FP8_PER_TOKEN_HEAD)

    @property
    def per_tensor_fp8(self) -> bool:
        """An fp8 cache scaled by ``k_descale`` / ``v_descale``."""
        return self is KVQuant.FP8_PER_TENSOR


@dataclass(frozen=True)
class CallSpec:
    """One call, normalized: shapes, modes, the mask geometry as the kernels take it, launch options."""

    # Shapes.
    num_tokens: int
    num_q_heads: int
    head_size: int
    num_seqs: int
    num_blocks: int
    block_size: int
    num_kv_heads: int
    max_seqlen_q: int
    max_seqlen_k: int
    # Keys one block-table row addresses (int32-capped; the kernels clamp seqused_k to it). None when
    # described without a block table (make_plan).
    kv_capacity: int | None
    # Dtypes and quantization.
    kv_quant: KVQuant
    one_byte_kv: bool  # the cache's element size, whatever the mode says (int8 or fp8 values)
    q_fp32: bool  # float32 queries: IEEE dots
    q_fp8: bool  # fp8 queries: an fp8 x fp8 QK^T scaled by q_descale
    out_fp8: bool  # fp8 output, divided by output_scale and saturated
    store_lse: bool  # softmax_lse given: each row's natural-log log-sum-exp is stored too
    descale_per_head: bool  # per-tensor fp8 descales given per (sequence, KV head)
    # Scores, in log2 units.
    qk_scale: float
    softcap: float  # 0: off
    use_alibi: bool
    alibi_sqrt: bool  # ALiBi's bias is -slope * sqrt(p - j) (keys at or before p), not slope * (j - p)
    use_sinks: bool
    use_qq_bias: bool  # a bias between each sequence's new tokens (qq_bias) joins the scores
    fold_scale: bool  # scores stay unscaled until exp2 (the scale is known positive and normal)
    # Mask geometry: non-negative bounds, UNLIMITED for none; chunk_size 1 and lookback 0 when unchunked.
    # With per-sequence causal flags window_right is a bidirectional sequence's bound (a causal one's
    # is 0); with R-SWA window_left is its window's (rswa_window - 1).
    window_left: int
    window_right: int
    per_seq_causal: bool  # causal given as per-sequence int32 flags
    use_rswa: bool  # R-SWA: rswa_prefix_lens' prefix keys stay visible beside the window
    chunked: bool
    chunk_size: int
    chunk_lookback: int
    use_prefix: bool  # mm_prefix_range given with at least one range per sequence
    prefix_clamp: bool  # prefix ranges keep the window's left bound
    # Launch options.
    split_kv: bool | None = None
    num_segments: int | None = None
    batch_invariant: bool = False
    workspace_segments: int | None = None  # a given workspace's segments (None: the call allocates one)
    workspace_counters: int | None = None  # and its merge counters

    @property
    def empty(self) -> bool:
        """No token or no sequence: nothing to launch."""
        return self.num_tokens == 0 or self.num_seqs == 0

    @property
    def head_pad(self) -> int:
        return next_power_of_2(self.head_size)

    @property
    def queries_per_kv(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    @property
    def pv_f16(self) -> bool:
        """P x V on f16 operands: fp8 caches under 16-bit or fp8 queries."""
        return self.kv_quant.fp8_cache and not self.q_fp32

    @property
    def dot_precision(self) -> str:
        return "ieee" if self.q_fp32 else "tf32"

    @property
    def rht_block(self) -> int:
        """INT4: the rotation's group size (1 for other caches: no rotation)."""
        return rotation_block(self.head_size) if self.kv_quant.packed_int4 else 1

    @property
    def rht_signs(self) -> int:
        """INT4: the rotation's sign bitmask (``rht_sign_bits``); 0 for other caches."""
        return rht_sign_bits(self.rht_block) if self.kv_quant.packed_int4 else 0

    @property
    def visible_key_span(self) -> int:
        """Most keys one sequence's queries see together (what the split-KV layout covers)."""
        if not self.chunked:
            return self.max_seqlen_k
        # The first query's chunk starts at most (lookback + 1) * size - 1 keys before it.
        span = (self.chunk_lookback + 1) * self.chunk_size + max(self.max_seqlen_q, 1) - 1
        return min(self.max_seqlen_k, span)
