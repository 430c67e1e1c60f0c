"""Baselines: torch ``scaled_dot_product_attention`` (flash / cuDNN backends) on contiguous KV.

This is the best a user can call on the machine without paging, so it is an upper-bound
reference, not a like-for-like competitor: it reads K/V laid out contiguously per sequence.
A varlen batch becomes one dense call per group of sequences that share ``(q_len, kv_len)``.

Masks: ``q_len == kv_len`` uses ``is_causal=True``; ``q_len == 1`` needs no mask (the query is
the last position); anything else (a chunk after cached context) needs the bottom-right causal
mask: ``causal_lower_right`` for flash, an explicit boolean mask for cuDNN. A verify batch's draft
tree narrows that mask among the new tokens (cuDNN only: flash takes no arbitrary mask).

GQA: first ``enable_gqa=True``; if the backend rejects it, K/V heads are expanded to the query
heads (materialized, so the call reads ``num_q_heads / num_kv_heads`` times the KV bytes) and
the note says so. A backend that cannot run a point is reported as unavailable with the reason.

A quantized point is not timed here (SDPA takes no fp8/int8 KV with scales); the sweep builds it
untimed on the dequantized values (``q_values``, ``dense_kv``) as the output check's reference.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .inputs import PagedInputs

BASELINES = ("sdpa-flash", "sdpa-cudnn")


class BaselineUnavailable(RuntimeError):
    """The backend cannot run this point; the message is the reason."""


def _backend(name: str):
    from torch.nn.attention import SDPBackend

    return {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}[name]


@dataclass
class _Group:
    seq_ids: list[int]
    token_index: torch.Tensor  # varlen token rows of these sequences, sequence-major
    q_len: int
    kv_len: int
    q: list[torch.Tensor] = field(default_factory=list)  # per copy, [n, H, q_len, D] (strided view)
    k: list[torch.Tensor] = field(default_factory=list)  # per copy, [n, Hkv or H, kv_len, D]
    v: list[torch.Tensor] = field(default_factory=list)
    mask: object = None
    is_causal: bool = False


@dataclass
class SdpaBaseline:
    name: str
    groups: list[_Group]
    enable_gqa: bool
    note: str
    num_tokens: int
    out_shape: tuple[int, int, int]
    expanded: bool = False

    def _run(self, copy: int) -> list[torch.Tensor]:
        from torch.nn.attention import sdpa_kernel

        outs = []
        with sdpa_kernel([_backend(self.name)]):
            for g in self.groups:
                outs.append(F.scaled_dot_product_attention(
                    g.q[copy], g.k[copy], g.v[copy], attn_mask=g.mask, is_causal=g.is_causal,
                    enable_gqa=self.enable_gqa))
        return outs

    def calls(self) -> list[Callable[[], object]]:
        return [(lambda c=c: self._run(c)) for c in range(len(self.groups[0].q))]

    def output(self, copy: int = 0) -> torch.Tensor:
        """One eager call's output rearranged to varlen ``[num_tokens, num_q_heads, head_size]``."""
        outs = self._run(copy)
        result = torch.empty(self.out_shape, dtype=outs[0].dtype, device=outs[0].device)
        for g, o in zip(self.groups, outs):
            result[g.token_index] = o.transpose(1, 2).reshape(-1, *self.out_shape[1:])
        return result


def _failure_reason(exc: BaseException, caught: list) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    extra = "; ".join(dict.fromkeys(str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()))
    return (f"{type(exc).__name__}: {msg}" + (f" [warnings: {extra}]" if extra else ""))[:600]


def _try_once(baseline: SdpaBaseline) -> str | None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            baseline._run(0)
            if baseline.groups[0].q[0].is_cuda:
                torch.cuda.synchronize()
            return None
        except Exception as exc:  # noqa: BLE001 - any backend refusal becomes a reason
            return _failure_reason(exc, caught)


def bottom_right_mask(point, q_len: int, kv_len: int, device) -> torch.Tensor:
    """Boolean ``[q_len, kv_len]``: the keys each of ``q_len`` queries at the end of a ``kv_len``-key
    sequence sees (causal; among the new tokens only ancestors and self under a draft tree)."""
    rows = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    mask = torch.arange(kv_len, device=device)[None, :] <= rows
    if point.tree:
        mask[:, kv_len - q_len:] = torch.tensor(point.tree_visible(), device=device)
    return mask


def build_sdpa(name: str, inputs: PagedInputs, copies: int | None = None) -> SdpaBaseline:
    """Contiguous copies of the point's KV and a ready-to-time baseline, or BaselineUnavailable."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}")
    point = inputs.point
    copies = inputs.copies if copies is None else copies
    h, hkv, d = point.num_q_heads, point.num_kv_heads, point.head_size
    ranges = inputs.token_ranges()
    if point.tree and name == "sdpa-flash":
        raise BaselineUnavailable("a draft tree needs an arbitrary mask; the flash backend takes none")
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(point.seqs):
        by_shape.setdefault(s, []).append(i)

    def make_groups(expand: bool) -> list[_Group]:
        groups = []
        for (q_len, kv_len), ids in by_shape.items():
            idx = torch.cat([torch.arange(*ranges[i]) for i in ids]).to(inputs.q[0].device)
            g = _Group(ids, idx, q_len, kv_len)
            for c in range(copies):
                g.q.append(inputs.q_values(c)[idx].reshape(len(ids), q_len, h, d).transpose(1, 2))
                k, v = inputs.dense_kv(c, ids)
                if expand and hkv != h:
                    k, v = (t.repeat_interleave(h // hkv, dim=2) for t in (k, v))
                g.k.append(k.transpose(1, 2))
                g.v.append(v.transpose(1, 2))
            if q_len == kv_len:
                g.is_causal = q_len > 1
            elif q_len > 1:
                if name == "sdpa-flash":
                    from torch.nn.attention.bias import causal_lower_right

                    g.mask = causal_lower_right(q_len, kv_len)
                else:
                    g.mask = bottom_right_mask(point, q_len, kv_len, idx.device)
            groups.append(g)
        return groups

    mask_note = ""
    if any(q > 1 and q != k for q, k in by_shape):
        mask_note = "; bottom-right causal via " + ("causal_lower_right" if name == "sdpa-flash" else "a boolean mask")
    base = SdpaBaseline(name, make_groups(False), enable_gqa=hkv != h,
                        note=("enable_gqa=True" if hkv != h else "MHA") + mask_note,
                        num_tokens=point.num_tokens, out_shape=(point.num_tokens, h, d))
    reason = _try_once(base)
    if reason is None:
        return base
    if hkv == h:
        raise BaselineUnavailable(reason)
    del base
    torch.cuda.empty_cache()
    expanded = SdpaBaseline(name, make_groups(True), enable_gqa=False,
                            note=f"KV heads expanded {hkv}->{h} (enable_gqa failed: {reason[:200]}); "
                                 f"reads {h // hkv}x the KV bytes" + mask_note,
                            num_tokens=point.num_tokens, out_shape=(point.num_tokens, h, d), expanded=True)
    reason2 = _try_once(expanded)
    if reason2 is None:
        return expanded
    raise BaselineUnavailable(f"enable_gqa: {reason}; expanded heads: {reason2}")
