"""Peer implementations timed beside ours: ``--impl NAME=MODULE:FUNC`` (or ``NAME=path/to/file.py:FUNC``)
and the ``--impl vllm`` shortcut.

A peer takes the suite's positional calling convention (the one ``--attn-impl`` uses, loaded by
``attention_suite.impl.Implementation``): ``(q, k_cache, v_cache, out, cu_seqlens_q, max_seqlen_q,
seqused_k, max_seqlen_k, softmax_scale, causal, window_size, block_table, softcap, q_descale,
k_descale, v_descale)`` and writes ``out``.

How a peer is called depends on what its signature offers, as in the suite:
- vLLM's 3D arguments (``seq_threshold_3D``, ``num_par_softmax_segments``, ``softmax_segm_*``):
  called the way vLLM's Triton backend calls it, so the peer is timed with its own production
  settings: a decode-only batch of at most ``128 // num_kv_heads`` sequences gets the 3D split-KV
  path with 16 segments and float32 segment buffers allocated once, outside the timed region;
  any other batch gets the 2D path (the buffers omitted, which is how the function picks 2D);
- anything else (ours included, through ``kernels:unified_attention``): the positional arguments
  only, i.e. the implementation's own choice of path.

Quantized points (``Peer.quant_args``): fp8 descales positionally (vLLM: expanded to
``[num_seqs, num_kv_heads]`` with ``kv_quant_mode=KVQuantMode.FP8_PER_TENSOR``); an int8 per
token-head cache needs ``kv_quant_mode``, ``k_scale_cache`` and ``v_scale_cache`` in the
signature, else the peer is recorded n/a with the reason.
"""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
VLLM_SHORTCUT = "vllm"
VLLM_FUNC = "vllm.v1.attention.ops.triton_unified_attention:unified_attention"
VLLM_DIR_ENV = "VLLM_PEER_DIR"
# vLLM's Triton backend (triton_attn.py): 3D below MIN_LAUNCH_GRID_SIZE_2D // num_kv_heads sequences,
# with a fixed 16 segments per sequence.
VLLM_MIN_LAUNCH_GRID_SIZE_2D = 128
VLLM_NUM_SEGMENTS = 16
# Column names the sweep already uses: a peer may not take one.
RESERVED_NAMES = ("heuristic", "2d", "3d", "sdpa-flash", "sdpa-cudnn", "flex", "reference")


class PeerError(ValueError):
    """A bad ``--impl`` value (raised while parsing arguments, before anything runs)."""


class PeerUnsupported(RuntimeError):
    """The peer cannot run this point (e.g. no argument for its KV format); the message is the reason."""


@dataclass(frozen=True)
class PeerSpec:
    name: str  # the column name in the JSON, table and plot
    target: str  # MODULE:FUNC or path/to/file.py:FUNC, as --attn-impl takes it
    import_dir: str | None = None  # put first on sys.path before loading (the vLLM copy's folder)

    def to_dict(self) -> dict:
        return {"name": self.name, "spec": self.target, "import_dir": self.import_dir}


def vllm_dir() -> Path:
    """The unmodified vLLM copy: ``$VLLM_PEER_DIR``, else ``<repo root>/../shared/peers/vllm``."""
    env = os.environ.get(VLLM_DIR_ENV)
    return Path(env).resolve() if env else (REPO_ROOT.parent / "shared" / "peers" / "vllm").resolve()


def parse_impl(value: str) -> PeerSpec:
    """``vllm`` or ``NAME=MODULE:FUNC`` / ``NAME=path/to/file.py:FUNC`` -> PeerSpec."""
    value = value.strip()
    if value == VLLM_SHORTCUT:
        return PeerSpec(VLLM_SHORTCUT, VLLM_FUNC, str(vllm_dir()))
    name, sep, target = value.partition("=")
    name, target = name.strip(), target.strip()
    if not sep or not name or ":" not in target:
        raise PeerError(f"--impl: expected 'vllm' or NAME=MODULE:FUNC or NAME=path/to/file.py:FUNC, got {value!r}")
    if name in RESERVED_NAMES:
        raise PeerError(f"--impl: the name {name!r} is taken by a built-in column ({', '.join(RESERVED_NAMES)})")
    if not all(c.isalnum() or c in "-_." for c in name):
        raise PeerError(f"--impl: name {name!r} may hold only letters, digits, '-', '_' and '.'")
    return PeerSpec(name, target)


def parse_all(values: list[str] | None) -> list[PeerSpec]:
    specs = [parse_impl(v) for v in values or []]
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PeerError(f"--impl: name(s) given twice: {', '.join(dup)}")
    return specs


def specs_or_exit(parser, values: list[str] | None) -> list[PeerSpec]:
    """``parse_all`` for a command line: a bad ``--impl`` is the parser's usage error (exit 2)."""
    try:
        return parse_all(values)
    except PeerError as exc:
        parser.error(str(exc))


@dataclass
class Peer:
    """A loaded peer: the suite's Implementation (function + signature), or why it failed to load."""

    spec: PeerSpec
    impl: object = None  # attention_suite.impl.Implementation
    error: str | None = None

    @classmethod
    def load(cls, spec: PeerSpec) -> "Peer":
        try:
            if spec.import_dir:
                if not Path(spec.import_dir).is_dir():
                    raise FileNotFoundError(f"{spec.import_dir} does not exist (set ${VLLM_DIR_ENV})")
                if spec.import_dir not in sys.path:
                    sys.path.insert(0, spec.import_dir)
            from attention_suite.impl import Implementation

            return cls(spec, Implementation.load(spec.target))
        except Exception as exc:  # noqa: BLE001 - a peer that cannot load is a recorded reason, not a crash
            text = str(exc).strip().splitlines()
            return cls(spec, error=f"load failed: {type(exc).__name__}: {text[0] if text else ''}"[:600])

    @property
    def style(self) -> str | None:
        return None if self.impl is None else self.impl.style

    def describe(self) -> dict:
        d = self.spec.to_dict()
        d["style"] = self.style
        if self.impl is not None:
            d["file"] = getattr(sys.modules.get(getattr(self.impl.func, "__module__", ""), None), "__file__", None)
        if self.error:
            d["error"] = self.error
        return d

    def build(self, inputs) -> "PeerCalls":
        """One call per rotated input copy, with any buffers the peer needs allocated now (untimed)."""
        if self.impl is None:
            raise RuntimeError(self.error or "peer not loaded")
        point = inputs.point
        extra: dict = {}
        config = "own choice (positional arguments only)"
        if self.style == "vllm":
            extra, config = vllm_backend_args(point, inputs.q[0].device)
        descales, quant = self.quant_args(inputs)
        extra.update(quant)
        func = self.impl.func
        if self.style == "split_kv" and "workspace" in self.impl.params:
            workspace = self._workspace(inputs, quant)
            if workspace is not None:
                extra["workspace"] = workspace
                config = "own choice, with a preallocated workspace (as the heuristic column)"

        def make(c: int):
            def call():
                return func(inputs.q[c], inputs.k_cache, inputs.v_cache, inputs.out[c], inputs.cu_seqlens_q,
                            inputs.max_seqlen_q, inputs.seqused_k, inputs.max_seqlen_k, inputs.softmax_scale,
                            True, (-1, -1), inputs.block_tables[c], 0.0, *descales, **extra)
            return call

        return PeerCalls([make(c) for c in range(inputs.copies)], config, extra)


    def _workspace(self, inputs, quant: dict):
        """A split-KV peer's own ``Workspace`` (a copy of our kernels: its package's class), sized by its
        own plan, so its calls allocate nothing, as the heuristic column's do; None if the package has none."""
        package = sys.modules.get(getattr(self.impl.func, "__module__", "").rpartition(".")[0])
        workspace_cls, make_plan = getattr(package, "Workspace", None), getattr(package, "make_plan", None)
        if workspace_cls is None or make_plan is None:
            return None
        q0, point = inputs.q[0], inputs.point
        plan = make_plan(q0, inputs.k_cache, inputs.cu_seqlens_q, inputs.max_seqlen_q, inputs.max_seqlen_k,
                         **{k: v for k, v in quant.items() if k == "kv_quant_mode"})
        return workspace_cls(q0.shape[0], point.num_q_heads, point.head_size, max(plan.num_segments, 1), q0.device,
                             **({"max_num_seqs": point.num_seqs}
                                if "max_num_seqs" in inspect.signature(workspace_cls).parameters else {}))

    def quant_args(self, inputs) -> tuple[tuple, dict]:
        """The positional (q_descale, k_descale, v_descale) and the keywords of the point's formats.

        fp8 descales go positionally (the suite's convention); vLLM gets them as its backend passes
        them, expanded to ``[num_seqs, num_kv_heads]``, and its KVQuantMode member. An int8 per
        token-head cache needs ``kv_quant_mode`` and the scale caches in the signature, else
        PeerUnsupported.
        """
        point, ours = inputs.point, inputs.quant_kwargs()
        descales = [ours.pop(n) for n in ("q_descale", "k_descale", "v_descale")]
        if not point.quantized:
            return tuple(descales), {}
        missing = [n for n in ours if n not in self.impl.params]
        if point.kv_format != "fp8" and missing:
            raise PeerUnsupported(f"{self.spec.target} has no {', '.join(missing)} argument(s) for a "
                                  f"{point.kv_format} cache; not run")
        if self.style == "vllm":
            descales[1:] = [d.expand(point.num_seqs, point.num_kv_heads) if d is not None else None
                            for d in descales[1:]]
            ours = self.impl.vllm_kwargs(inputs, ours)  # the mode as vLLM's KVQuantMode member
        return tuple(descales), {k: v for k, v in ours.items() if k in self.impl.params}


@dataclass
class PeerCalls:
    calls: list[Callable[[], object]]
    config: str
    buffers: dict = field(default_factory=dict)  # kept alive as long as the calls


def vllm_backend_args(point, device) -> tuple[dict, str]:
    """The 3D arguments vLLM's Triton backend passes for this batch, and a description of the path.

    vLLM's backend allocates the segment buffers once; the function then runs 3D only for a
    decode-only batch (max_seqlen_q == 1) of at most seq_threshold_3D sequences. Outside that
    range the buffers are left out, which makes the function take its 2D path.
    """
    threshold = VLLM_MIN_LAUNCH_GRID_SIZE_2D // point.num_kv_heads
    if point.max_seqlen_q > 1 or point.num_seqs > threshold:
        why = "not decode-only" if point.max_seqlen_q > 1 else f"{point.num_seqs} seqs > seq_threshold_3D {threshold}"
        return {}, f"2D (vLLM backend: {why})"
    head_pad = 1 << (point.head_size - 1).bit_length()
    shape = (point.num_tokens, point.num_q_heads, VLLM_NUM_SEGMENTS)
    args = {
        "seq_threshold_3D": threshold,
        "num_par_softmax_segments": VLLM_NUM_SEGMENTS,
        "softmax_segm_output": torch.empty((*shape, head_pad), dtype=torch.float32, device=device),
        "softmax_segm_max": torch.empty(shape, dtype=torch.float32, device=device),
        "softmax_segm_expsum": torch.empty(shape, dtype=torch.float32, device=device),
    }
    return args, (f"3D/{VLLM_NUM_SEGMENTS} (vLLM backend: decode-only, {point.num_seqs} seqs <= "
                  f"seq_threshold_3D {threshold}; segment buffers preallocated)")
