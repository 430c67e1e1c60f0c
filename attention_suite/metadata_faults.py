"""Invalid batch metadata, as data: each fault breaks one rule of the metadata contract.

The per-call argument checks never read tensor values (no device sync), so a fault in the
*values* of ``cu_seqlens_q``, ``seqused_k``, ``block_table`` or the ``max_seqlen`` bounds
reaches the kernels unless the caller asks for the checked mode. The contract:

- checked (``check_metadata=True``, ``validate_metadata``) and the reference: a ``ValueError``
  whose message starts with the argument's name, before anything is written;
- unchecked: the output is unspecified, but the call completes and touches no memory outside
  its tensors (on a GPU the memsafety tier runs these faults under compute-sanitizer memcheck).

A fault is a function ``(meta, seq, amount)`` that edits host copies of the metadata for one
sequence; the table pins ``seq`` and ``amount``, the fuzz tier draws them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from . import tables
from .cases import Inputs

# The batch every fault is applied to: four sequences mixing decode, prefill and chunked rows,
# plus two padding rows past the last sequence.
FAULT_CASE = tables.composition_case("mixed", pad_tokens=2)


@dataclass
class Metadata:
    """Host copies of one call's metadata (edited by faults, then moved to the inputs' device)."""

    cu_seqlens_q: torch.Tensor
    seqused_k: torch.Tensor
    block_table: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    num_tokens: int
    num_blocks: int
    block_size: int

    @property
    def num_seqs(self) -> int:
        return self.seqused_k.shape[0]

    def q_len(self, seq: int) -> int:
        return int(self.cu_seqlens_q[seq + 1] - self.cu_seqlens_q[seq])

    def blocks_used(self, seq: int) -> int:
        return max(1, -(-int(self.seqused_k[seq]) // self.block_size))


def _cu_past_tokens(m: Metadata, seq: int, amount: int) -> None:
    m.cu_seqlens_q[seq + 1:] += m.num_tokens + amount  # this sequence's end, and every later one


def _cu_decreasing(m: Metadata, seq: int, amount: int) -> None:
    m.cu_seqlens_q[seq + 1] = int(m.cu_seqlens_q[seq]) - amount  # below its predecessor, negative if need be


def _cu_not_from_zero(m: Metadata, seq: int, amount: int) -> None:
    m.cu_seqlens_q[0] = min(amount, int(m.cu_seqlens_q[1])) or 1


def _block_id(value: Callable[[Metadata, int], int]):
    def fault(m: Metadata, seq: int, amount: int) -> None:
        m.block_table[seq, amount % m.blocks_used(seq)] = value(m, amount)
    return fault


def _block_id_in_last_block(m: Metadata, seq: int, amount: int) -> None:
    # The sequence's last block, partly filled (its tail slots unused): the masked tail path.
    m.block_table[seq, m.blocks_used(seq) - 1] = m.num_blocks + amount


def _seqused_past_table(m: Metadata, seq: int, amount: int) -> None:
    m.seqused_k[seq] = m.block_table.shape[1] * m.block_size + amount
    m.max_seqlen_k = max(m.max_seqlen_k, int(m.seqused_k[seq]))  # only seqused_k is wrong


def _seqused_negative(m: Metadata, seq: int, amount: int) -> None:
    m.seqused_k[seq] = -amount


def _q_longer_than_kv(m: Metadata, seq: int, amount: int) -> None:
    m.seqused_k[seq] = max(0, m.q_len(seq) - amount)


def _max_q_short(m: Metadata, seq: int, amount: int) -> None:
    longest = max(m.q_len(s) for s in range(m.num_seqs))
    m.max_seqlen_q = max(0, longest - amount)


def _max_q_zero(m: Metadata, seq: int, amount: int) -> None:
    m.max_seqlen_q = 0  # a decode plan for a batch holding prefill sequences


def _max_k_short(m: Metadata, seq: int, amount: int) -> None:
    m.max_seqlen_k = max(0, int(m.seqused_k.max()) - amount)


@dataclass(frozen=True)
class Fault:
    name: str
    arg: str  # the argument the named error must blame
    apply: Callable[[Metadata, int, int], None]
    seq: int = 0  # the sequence the table's instance breaks
    amount: int = 1  # how far past the valid range (>= 1)
    # Two sequences claim the same rows of out: their programs race on a GPU, so the (unspecified)
    # output may differ from run to run without any read outside the tensors.
    races: bool = False


FAULTS = (
    Fault("cu-past-tokens", "cu_seqlens_q", _cu_past_tokens, seq=3, amount=7),
    Fault("cu-decreasing", "cu_seqlens_q", _cu_decreasing, seq=1, amount=3, races=True),
    # Far below zero: a sequence starting 40 rows before q, wider than two query blocks.
    Fault("cu-negative", "cu_seqlens_q", _cu_decreasing, seq=1, amount=40, races=True),
    Fault("cu-not-from-zero", "cu_seqlens_q", _cu_not_from_zero),
    Fault("block-id-past-end", "block_table", _block_id(lambda m, a: m.num_blocks + 5 + a), seq=2, amount=3),
    Fault("block-id-num-blocks", "block_table", _block_id(lambda m, a: m.num_blocks), seq=2, amount=1),
    Fault("block-id-minus-1", "block_table", _block_id(lambda m, a: -1), seq=0),
    Fault("block-id-in-last-partial-block", "block_table", _block_id_in_last_block, seq=0, amount=2),
    Fault("seqused-past-table", "seqused_k", _seqused_past_table, seq=2, amount=16),
    Fault("seqused-negative", "seqused_k", _seqused_negative, seq=3, amount=5),
    Fault("q-longer-than-kv", "seqused_k", _q_longer_than_kv, seq=1, amount=1),
    Fault("max-seqlen-q-short", "max_seqlen_q", _max_q_short),
    Fault("max-seqlen-q-zero", "max_seqlen_q", _max_q_zero),
    Fault("max-seqlen-k-short", "max_seqlen_k", _max_k_short),
)
BY_NAME = {f.name: f for f in FAULTS}


def metadata_of(inputs: Inputs) -> Metadata:
    return Metadata(
        cu_seqlens_q=inputs.cu_seqlens_q.cpu().clone(), seqused_k=inputs.seqused_k.cpu().clone(),
        block_table=inputs.block_table.cpu().clone(), max_seqlen_q=inputs.max_seqlen_q,
        max_seqlen_k=inputs.max_seqlen_k, num_tokens=inputs.q.shape[0], num_blocks=inputs.k.shape[0],
        block_size=inputs.k.shape[1],
    )


def break_metadata(inputs: Inputs, fault: Fault, seq: int | None = None, amount: int | None = None,
                   in_place: bool = False) -> tuple:
    """(positional args, keyword args) of ``inputs``' call with ``fault`` applied to one sequence
    (the table's by default). By default the metadata tensors and the output buffer are fresh
    copies; ``in_place`` writes the faulty metadata into ``inputs``' own tensors and calls with
    its own ``out`` (for ``guarded`` inputs, whose tensors are views into larger buffers)."""
    meta = metadata_of(inputs)
    seq = fault.seq if seq is None else seq
    fault.apply(meta, seq % meta.num_seqs, fault.amount if amount is None else amount)
    device = inputs.q.device
    if in_place:
        broken, out = inputs, inputs.out
        for name in ("cu_seqlens_q", "seqused_k", "block_table"):
            getattr(inputs, name).copy_(getattr(meta, name))
    else:
        out = inputs.fresh_out()
        broken = replace(inputs, cu_seqlens_q=meta.cu_seqlens_q.to(device), seqused_k=meta.seqused_k.to(device),
                         block_table=meta.block_table.to(device))
    args = list(broken.call_args(out))
    args[5], args[7] = meta.max_seqlen_q, meta.max_seqlen_k  # max_seqlen_q, max_seqlen_k
    return args, dict(broken.call_kwargs())


# Rows, blocks and block-table columns of guard on each side of a guarded tensor.
GUARD = 64


@dataclass
class Guarded:
    """Inputs whose q, k, v, out and block table are views into larger buffers (``buffers``);
    ``regions`` says where each view sits, and every other byte of a buffer is guard."""

    inputs: Inputs
    buffers: dict
    regions: dict

    def guard_bytes(self, name: str) -> torch.Tensor:
        """One buffer's guard as raw bytes (to compare before and after a call)."""
        big = self.buffers[name]
        guard = torch.ones(big.shape, dtype=torch.bool, device=big.device)
        guard[self.regions[name]] = False
        return big[guard].view(torch.uint8).clone()


def guarded(inputs: Inputs, fill: float, table_fill: int) -> Guarded:
    """A copy of ``inputs`` (dense layouts only) whose q, k, v and out sit ``GUARD`` rows/blocks inside
    buffers filled with ``fill``, and whose block table sits inside one with ``GUARD`` more rows and
    columns holding block id ``table_fill``. A kernel that reads a guard gives different results for
    different fills; one that writes a guard changes it."""
    buffers, regions = {}, {}

    def inside(name, t):
        big = torch.full((t.shape[0] + 2 * GUARD, *t.shape[1:]), fill, dtype=t.dtype, device=t.device)
        view = big[GUARD:GUARD + t.shape[0]]
        view.copy_(t)
        buffers[name], regions[name] = big, (slice(GUARD, GUARD + t.shape[0]),)
        return view

    table = inputs.block_table
    big_table = torch.full((table.shape[0] + GUARD, table.shape[1] + GUARD), table_fill, dtype=table.dtype,
                           device=table.device)
    big_table[: table.shape[0], : table.shape[1]] = table
    buffers["block_table"] = big_table
    regions["block_table"] = (slice(0, table.shape[0]), slice(0, table.shape[1]))
    copy = replace(inputs, q=inside("q", inputs.q), k=inside("k", inputs.k), v=inside("v", inputs.v),
                   out=inside("out", inputs.out), block_table=big_table[: table.shape[0], : table.shape[1]],
                   cu_seqlens_q=inputs.cu_seqlens_q.clone(), seqused_k=inputs.seqused_k.clone())
    return Guarded(copy, buffers, regions)
