"""The prefill ceiling's yardstick: a minimal causal flash kernel on contiguous K/V.

One program per ``BLOCK_M``-row query block and query head, online softmax, an unmasked walk over
the keys left of the diagonal and a masked one on it; pointer loads (cp.async) or TMA descriptors.
bf16/f16 only, no varlen, head size a power of two: what Triton reaches on the card without paging
and without any of our features. Imported after argument parsing (``python -m benchmarks.ceiling``).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _flash_walk(acc, m_i, l_i, q, k_ptr, v_ptr, k_desc, v_desc, kv_col, tok0, row0, key_lo, key_hi, stride_tok,
                qk_scale, BLOCK_M: tl.constexpr, TILE: tl.constexpr, HEAD: tl.constexpr, CAUSAL_MASK: tl.constexpr,
                TMA: tl.constexpr):
    """Online softmax over keys [key_lo, key_hi) of one sequence (contiguous rows of ``stride_tok``)."""
    offs = tl.arange(0, TILE)
    dims = tl.arange(0, HEAD)
    rows = row0 + tl.arange(0, BLOCK_M)
    for start in range(key_lo, key_hi, TILE):
        if TMA:
            k = k_desc.load([tok0 + start, kv_col]).T
            v = v_desc.load([tok0 + start, kv_col])
        else:
            k = tl.load(k_ptr + (start + offs)[None, :] * stride_tok + dims[:, None])
            v = tl.load(v_ptr + (start + offs)[:, None] * stride_tok + dims[None, :])
        s = tl.dot(q, k) * qk_scale
        if CAUSAL_MASK:
            s = tl.where(rows[:, None] >= (start + offs)[None, :], s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _flash_causal_kernel(q_ptr, k_ptr, v_ptr, o_ptr, q_desc, k_desc, v_desc, o_desc, seq_len, qk_scale,
                         NUM_Q_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, TILE: tl.constexpr,
                         HEAD: tl.constexpr, TMA: tl.constexpr):
    """q/o ``[seqs * seq_len, NUM_Q_HEADS, HEAD]``, k/v ``[seqs * seq_len, NUM_Q_HEADS // GROUP, HEAD]``."""
    # Heaviest query blocks first: they walk the most keys.
    m_block = tl.num_programs(0) - 1 - tl.program_id(0)
    head = tl.program_id(1)
    tok0 = tl.program_id(2) * seq_len
    kv_head = head // GROUP
    row0 = m_block * BLOCK_M
    rows = tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD)
    stride_q = NUM_Q_HEADS * HEAD
    stride_kv = (NUM_Q_HEADS // GROUP) * HEAD
    q_offs = (tok0 + row0 + rows)[:, None] * stride_q + head * HEAD + dims[None, :]
    if TMA:
        q = q_desc.load([tok0 + row0, head * HEAD])
    else:
        q = tl.load(q_ptr + q_offs)
    k_base = k_ptr + tok0 * stride_kv + kv_head * HEAD
    v_base = v_ptr + tok0 * stride_kv + kv_head * HEAD
    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD], tl.float32)
    acc, m_i, l_i = _flash_walk(acc, m_i, l_i, q, k_base, v_base, k_desc, v_desc, kv_head * HEAD, tok0, row0,
                                0, row0, stride_kv, qk_scale, BLOCK_M, TILE, HEAD, False, TMA)
    acc, m_i, l_i = _flash_walk(acc, m_i, l_i, q, k_base, v_base, k_desc, v_desc, kv_head * HEAD, tok0, row0,
                                row0, row0 + BLOCK_M, stride_kv, qk_scale, BLOCK_M, TILE, HEAD, True, TMA)
    o = (acc / l_i[:, None]).to(o_ptr.dtype.element_ty)
    if TMA:
        o_desc.store([tok0 + row0, head * HEAD], o)
    else:
        tl.store(o_ptr + q_offs, o)


def flash_causal(q, k, v, out, seq_len: int, block_m: int = 128, tile: int = 64, num_warps: int = 8,
                 num_stages: int = 3, tma: bool = False):
    """A call of the minimal kernel on contiguous ``[tokens, heads, head]`` tensors (returns a closure)."""
    tokens, num_q_heads, head = q.shape
    if tokens % seq_len or seq_len % block_m or block_m % tile or head & (head - 1):
        raise ValueError(f"flash_causal: seq_len {seq_len} must divide the {tokens} tokens and be a multiple of "
                         f"block_m {block_m}, itself a multiple of tile {tile}; head {head} a power of two")
    descs = (0, 0, 0, 0)
    if tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        flat = [t.view(t.shape[0], -1) for t in (q, k, v, out)]
        descs = (TensorDescriptor.from_tensor(flat[0], [block_m, head]), TensorDescriptor.from_tensor(flat[1], [tile, head]),
                 TensorDescriptor.from_tensor(flat[2], [tile, head]), TensorDescriptor.from_tensor(flat[3], [block_m, head]))
    grid = (seq_len // block_m, num_q_heads, tokens // seq_len)
    qk_scale = head ** -0.5 * LOG2E

    def call():
        _flash_causal_kernel[grid](q, k, v, out, *descs, seq_len, qk_scale, NUM_Q_HEADS=num_q_heads,
                                   GROUP=num_q_heads // k.shape[1], BLOCK_M=block_m, TILE=tile, HEAD=head, TMA=tma,
                                   num_warps=num_warps, num_stages=num_stages)
    return call
