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
- anything else (ours included, through ``paged_kernels:unified_attention``): the positional arguments
  only, i.e. the implementation's own choice of path.

Quantized points (``Peer.quant_args``): fp8 descales positionally (vLLM: expanded to
``[num_seqs, num_kv_heads]`` with ``kv_quant_mode=KVQuantMode.FP8_PER_TENSOR``); a per token-head
cache (int8, or vLLM's packed INT4: ``INT4_PER_TOKEN_HEAD``, which vLLM's function hands to its own
INT4 launcher) needs ``kv_quant_mode``, ``k_scale_cache`` and ``v_scale_cache`` in the signature,
else the peer is recorded n/a with the reason.

A bad ``--impl`` (malformed; no such module, file or function; an import that fails) is the
command's one-line usage error, exit 2: the form and the module or file are checked while parsing,
before anything heavy is imported; the function, when the peers load.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NoReturn

from attention_suite import VLLM_DIR_ENV, VLLM_FUNC, vllm_peer_dir

from .records import PeerInfo

VLLM_SHORTCUT = "vllm"
# vLLM's Triton backend (triton_attn.py): 3D below MIN_LAUNCH_GRID_SIZE_2D // num_kv_heads sequences,
# with a fixed 16 segments per sequence.
VLLM_MIN_LAUNCH_GRID_SIZE_2D = 128
VLLM_NUM_SEGMENTS = 16
VLLM_MAX_3D_QUERY_LEN = 8  # vLLM 0.33's MAX_3D_QUERY_LEN: verify batches up to 8 tokens go 3D
# Column names the sweep already uses: a peer may not take one.
RESERVED_NAMES = ("heuristic", "2d", "3d", "sdpa-flash", "sdpa-cudnn", "flex", "reference")


class PeerError(ValueError):
    """A bad ``--impl`` value; the message names it and says what is wrong, in one line."""


class PeerUnsupported(RuntimeError):
    """The peer cannot run this point (e.g. no argument for its KV format); the message is the reason."""


@dataclass(frozen=True)
class PeerSpec:
    name: str  # the column name in the JSON, table and plot
    target: str  # MODULE:FUNC or path/to/file.py:FUNC, as --attn-impl takes it
    import_dir: str | None = None  # put first on sys.path before loading (the vLLM copy's folder)

    @property
    def flag(self) -> str:
        """The ``--impl`` value as the user gave it, for error messages."""
        if self.name == VLLM_SHORTCUT and self.target == VLLM_FUNC:
            return f"--impl {VLLM_SHORTCUT}"
        return f"--impl {self.name}={self.target}"


def parse_impl(value: str) -> PeerSpec:
    """``vllm`` or ``NAME=MODULE:FUNC`` / ``NAME=path/to/file.py:FUNC`` -> PeerSpec."""
    value = value.strip()
    if value == VLLM_SHORTCUT:
        spec = PeerSpec(VLLM_SHORTCUT, VLLM_FUNC, str(vllm_peer_dir()))
        check_target(spec)
        return spec
    name, sep, target = value.partition("=")
    name, target = name.strip(), target.strip()
    where, _, func = target.rpartition(":")
    if not sep or not name or not where or not func.isidentifier():
        raise PeerError(f"--impl: expected 'vllm' or NAME=MODULE:FUNC or NAME=path/to/file.py:FUNC, got {value!r}")
    if name in RESERVED_NAMES:
        raise PeerError(f"--impl: the name {name!r} is taken by a built-in column ({', '.join(RESERVED_NAMES)})")
    if not all(c.isalnum() or c in "-_." for c in name):
        raise PeerError(f"--impl: name {name!r} may hold only letters, digits, '-', '_' and '.'")
    spec = PeerSpec(name, target)
    check_target(spec)
    return spec


def check_target(spec: PeerSpec) -> None:
    """What can be known without importing anything: that the target's file or top-level module
    exists (in ``import_dir`` when it has one). A missing function shows only on load."""
    where = spec.target.rpartition(":")[0]
    if spec.import_dir and not Path(spec.import_dir).is_dir():
        raise PeerError(f"{spec.flag}: folder {spec.import_dir} not found (set ${VLLM_DIR_ENV})")
    if where.endswith(".py"):
        if not Path(where).is_file():
            raise PeerError(f"{spec.flag}: file {where!r} not found")
        return
    top = where.split(".")[0]
    if not top.isidentifier():
        raise PeerError(f"{spec.flag}: {where!r} is neither a module name nor a .py file")
    found = (importlib.machinery.PathFinder.find_spec(top, [spec.import_dir]) if spec.import_dir
             else importlib.util.find_spec(top))
    if found is None:
        raise PeerError(f"{spec.flag}: module {top!r} not found")


def parse_all(values: list[str] | None) -> list[PeerSpec]:
    specs = [parse_impl(v) for v in values or []]
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PeerError(f"--impl: name(s) given twice: {', '.join(dup)}")
    return specs


def usage_error(prog: str, message: str) -> NoReturn:
    """argparse's error line without the usage text above it: a bad ``--impl`` reads as one line."""
    sys.stderr.write(f"{prog}: error: {message}\n")
    raise SystemExit(2)


def specs_or_exit(parser, values: list[str] | None) -> list[PeerSpec]:
    """``parse_all`` for a command line: a bad ``--impl`` is a usage error (exit 2)."""
    try:
        return parse_all(values)
    except PeerError as exc:
        usage_error(parser.prog, str(exc))


def load_or_exit(prog: str, specs) -> tuple["Peer", ...]:
    """Every peer loaded, or a usage error (exit 2) naming the ``--impl`` that failed to load."""
    try:
        return tuple(Peer.load(spec) for spec in specs)
    except PeerError as exc:
        usage_error(prog, str(exc))


@dataclass
class Peer:
    """A loaded peer: the suite's Implementation (function + signature)."""

    spec: PeerSpec
    impl: object  # attention_suite.impl.Implementation

    @classmethod
    def load(cls, spec: PeerSpec) -> "Peer":
        """Import the peer's function; PeerError (one line, naming the ``--impl``) if it cannot be."""
        check_target(spec)
        if spec.import_dir and spec.import_dir not in sys.path:
            sys.path.insert(0, spec.import_dir)
        from attention_suite.impl import Implementation

        try:
            return cls(spec, Implementation.load(spec.target))
        except Exception as exc:  # noqa: BLE001 - whatever stops the import, the --impl value is what to fix
            text = str(exc).strip().splitlines()
            first = text[0] if text else ""
            # The suite's loader says what was wrong in a ValueError; anything else is named by its type.
            reason = first if isinstance(exc, ValueError) else f"{type(exc).__name__}: {first}"
            raise PeerError(f"{spec.flag}: {reason}"[:600]) from None

    @property
    def style(self) -> str:
        return self.impl.style

    def describe(self) -> PeerInfo:
        module = sys.modules.get(getattr(self.impl.func, "__module__", ""), None)
        return PeerInfo(name=self.spec.name, spec=self.spec.target, import_dir=self.spec.import_dir, style=self.style,
                        file=getattr(module, "__file__", None))

    def build(self, inputs) -> "PeerCalls":
        """One call per rotated input copy, with any buffers the peer needs allocated now (untimed)."""
        point = inputs.point
        extra: dict = {}
        config = "own choice (positional arguments only)"
        if self.style == "vllm":
            extra, config = vllm_backend_args(point, inputs.q[0].device)
        descales, quant = self.quant_args(inputs)
        extra.update(quant)
        features = inputs.feature_kwargs()
        missing = [n for n in features if n not in self.impl.params]
        if missing:
            raise PeerUnsupported(f"{self.spec.target} has no {', '.join(missing)} argument(s); not run")
        extra.update(features)
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
        them, expanded to ``[num_seqs, num_kv_heads]``, and its KVQuantMode member. A per token-head
        cache (int8, INT4) needs ``kv_quant_mode`` and the scale caches in the signature, else
        PeerUnsupported; a vLLM whose KVQuantMode lacks the mode is PeerUnsupported too.
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
            mode = ours.get("kv_quant_mode")
            if mode is not None and not self.impl.vllm_knows_mode(mode):  # an older vLLM (no INT4 member)
                raise PeerUnsupported(f"{self.spec.target}: its KVQuantMode has no {mode.upper()} member; not run")
            ours = self.impl.vllm_kwargs(inputs, ours)  # the mode as vLLM's KVQuantMode member
        return tuple(descales), {k: v for k, v in ours.items() if k in self.impl.params}


@dataclass
class PeerCalls:
    calls: list[Callable[[], object]]
    config: str
    buffers: dict = field(default_factory=dict)  # kept alive as long as the calls


def vllm_backend_args(point, device) -> tuple[dict, str]:
    """The 3D arguments vLLM 0.33's Triton backend passes for this batch, and a description of the path.

    The backend allocates the segment buffers once (a row per query token); the function then runs
    3D for a causal batch of at most ``VLLM_MAX_3D_QUERY_LEN`` tokens per sequence whose query
    blocks (``num_seqs * cdiv(max_seqlen_q, BLOCK_Q)``) number at most seq_threshold_3D. Outside that
    range the buffers are left out, which makes the function take its 2D path.
    """
    import torch
    import triton

    threshold = VLLM_MIN_LAUNCH_GRID_SIZE_2D // point.num_kv_heads
    per_kv = point.num_q_heads // point.num_kv_heads
    block_q = (16 if per_kv <= 16 else triton.next_power_of_2(per_kv)) // per_kv  # as vLLM computes it
    q_blocks = point.num_seqs * -(-point.max_seqlen_q // block_q)
    if point.max_seqlen_q > VLLM_MAX_3D_QUERY_LEN or q_blocks > threshold:
        why = (f"{point.max_seqlen_q} query tokens > {VLLM_MAX_3D_QUERY_LEN}" if point.max_seqlen_q > VLLM_MAX_3D_QUERY_LEN
               else f"{q_blocks} query blocks > seq_threshold_3D {threshold}")
        return {}, f"2D (vLLM backend: {why})"
    head_pad = triton.next_power_of_2(point.head_size)  # as vLLM's backend pads the head
    shape = (point.num_tokens, point.num_q_heads, VLLM_NUM_SEGMENTS)
    args = {
        "seq_threshold_3D": threshold,
        "num_par_softmax_segments": VLLM_NUM_SEGMENTS,
        "softmax_segm_output": torch.empty((*shape, head_pad), dtype=torch.float32, device=device),
        "softmax_segm_max": torch.empty(shape, dtype=torch.float32, device=device),
        "softmax_segm_expsum": torch.empty(shape, dtype=torch.float32, device=device),
    }
    return args, (f"3D/{VLLM_NUM_SEGMENTS} (vLLM backend: {q_blocks} query blocks <= seq_threshold_3D {threshold}; "
                  f"segment buffers preallocated)")
