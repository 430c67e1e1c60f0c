"""A paged PyTorch baseline: FlexAttention reading our paged cache through torch's PagedAttention.

torch ships a paging helper for FlexAttention (``torch.nn.attention.experimental._paged_attention.
PagedAttention``): a page table maps each sequence's logical KV blocks to physical pages of one
shared cache ``[1, Hkv, pages * page_size, D]``, and ``convert_logical_block_mask`` turns a
block mask over logical positions into one over physical positions. Here the physical cache is
our own paged K/V pool, viewed (not copied) as ``[1, Hkv, blocks * 16, D]``, and the page table
is our block table, so FlexAttention reads exactly the scattered blocks our kernels read.

Limits, each recorded as the reason instead of a time: the helper or flex_attention missing from
this torch; a batch whose sequences have different query lengths (flex takes a padded
``[B, H, q_len, D]`` batch; padding and un-padding would be timed copies, so the mixed point is
left out); a quantized point (fp8 / int8 KV, fp8 queries); a compile failure. Off a GPU flex runs eagerly (its reference path) to check wiring.

Each rotated copy has its own page table and block mask; the mask functions share one code
object and differ only in the tensors they read, which dynamo guards by shape, so the copies
share one compiled kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


class FlexUnavailable(RuntimeError):
    """FlexAttention cannot run this point; the message is the reason."""


@dataclass
class FlexBaseline:
    calls_list: list[Callable[[], torch.Tensor]]
    config: str
    keep: tuple  # block masks and tables the calls read

    def calls(self) -> list[Callable[[], object]]:
        return self.calls_list

    def output(self, copy: int = 0) -> torch.Tensor:
        """One call's output as varlen ``[num_tokens, num_q_heads, head_size]``."""
        o = self.calls_list[copy]()  # [B, H, q_len, D]
        return o.transpose(1, 2).reshape(-1, o.shape[1], o.shape[3])


def _imports():
    try:
        from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
    except Exception as exc:  # noqa: BLE001
        raise FlexUnavailable(f"torch {torch.__version__} has no flex_attention: {type(exc).__name__}: {exc}") from exc
    try:
        from torch.nn.attention.experimental._paged_attention import PagedAttention
    except Exception as exc:  # noqa: BLE001
        raise FlexUnavailable(f"torch {torch.__version__} has no experimental PagedAttention: "
                              f"{type(exc).__name__}: {exc}") from exc
    return BlockMask, create_block_mask, flex_attention, PagedAttention


_COMPILED: dict = {}


def compiled_flex(flex_attention):
    """One torch.compile of flex_attention per process (flex is only fast compiled)."""
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(flex_attention, dynamic=False)
    return _COMPILED["fn"]


def reset_compile_cache() -> None:
    """Forget the previous point's compiled graphs, so many point shapes never hit dynamo's
    recompile limit (past which it would silently fall back to eager flex)."""
    import torch._dynamo

    torch._dynamo.reset()
    _COMPILED.clear()


def bottom_right_mask_mod(point, q_len: int, kv_len: torch.Tensor) -> Callable:
    """flex's ``mask_mod(b, h, q_idx, kv_idx)`` for the point: causal with the queries at the end of
    each sequence (``kv_len[b]`` keys), and among the new tokens only a draft tree's ancestors and self."""
    tree = torch.tensor(point.tree_visible(), device=kv_len.device) if point.tree else None

    def mask_mod(bi, hi, q_idx, kv_idx):
        causal = kv_idx <= q_idx + (kv_len[bi] - q_len)
        if tree is None:
            return causal
        new = kv_idx - (kv_len[bi] - q_len)
        return causal & ((new < 0) | tree[q_idx, new.clamp(0, q_len - 1)])

    return mask_mod


def build_flex(inputs, compile: bool) -> FlexBaseline:
    """A ready-to-time FlexAttention call per rotated copy over the paged cache, or FlexUnavailable."""
    BlockMask, create_block_mask, flex_attention, PagedAttention = _imports()
    point = inputs.point
    if point.quantized:
        raise FlexUnavailable(f"flex_attention takes no {point.formats} inputs (no fp8/int8 KV with scales); not run")
    q_lens = {q for q, _ in point.seqs}
    if len(q_lens) != 1:
        raise FlexUnavailable("sequences have different query lengths: flex needs a padded batch "
                              "(padding copies would be timed); not run")
    q_len = q_lens.pop()
    b, h, hkv, d = point.num_seqs, point.num_q_heads, point.num_kv_heads, point.head_size
    page = point.block_size
    device = inputs.q[0].device
    n_pages = inputs.k_cache.shape[0]
    max_blocks = inputs.block_tables[0].shape[1]
    kv_len = inputs.seqused_k.long()

    logical = torch.arange(max_blocks, device=device).expand(b, max_blocks)
    rows = torch.arange(b, device=device)[:, None].expand(b, max_blocks)
    used = logical < torch.tensor(point.blocks_per_seq(), device=device)[:, None]

    logical_mask = create_block_mask(bottom_right_mask_mod(point, q_len, kv_len), b, None, q_len, max_blocks * page,
                                     device=device, BLOCK_SIZE=(128, page))
    pagers, masks = [], []
    for table in inputs.block_tables:
        # One pager per copy: its physical->logical map holds only this copy's blocks, so the
        # physical mask is exact on its own (eager flex evaluates it on every physical position).
        pa = PagedAttention(n_pages, page, b, device=device)
        pa.page_table = table.long()  # logical block j of sequence i -> physical block table[i, j]
        pa.physical_to_logical[rows[used], table.long()[used]] = logical[used]
        pagers.append(pa)
        masks.append(pa.convert_logical_block_mask(logical_mask, kv_len=kv_len))
    k = inputs.k_cache.view(1, n_pages * page, hkv, d).transpose(1, 2)  # a view: the paged pool itself
    v = inputs.v_cache.view(1, n_pages * page, hkv, d).transpose(1, 2)
    fn = compiled_flex(flex_attention) if compile else flex_attention
    # flex's default tiles are wider than a 16-key page for prefill: then tile the keys by the page.
    options = None if q_len == 1 else {"BLOCK_N": page}

    def make(c: int):
        q = inputs.q[c].view(b, q_len, h, d).transpose(1, 2)
        mask = masks[c]

        def call():
            return fn(q, k, v, block_mask=mask, scale=inputs.softmax_scale, enable_gqa=hkv != h,
                      kernel_options=options)
        return call

    config = (f"torch {'compiled' if compile else 'eager'} flex_attention + PagedAttention page table "
              f"(page {page}, K/V the paged pool viewed as [1, {hkv}, {n_pages * page}, {d}]"
              + (f", kernel_options {options}" if options else "") + ")")
    return FlexBaseline([make(c) for c in range(inputs.copies)], config, (pagers, masks, logical_mask))
