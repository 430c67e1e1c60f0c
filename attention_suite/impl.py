"""The implementation under test is pluggable: ``--attn-impl=MODULE:FUNC`` or ``path/to/file.py:FUNC``.

It must take the shared argument names. How its 2D/3D paths are forced depends on what its
signature offers:
- ``split_kv`` (ours): split_kv=False/True, ``num_segments``, ``workspace``;
- vLLM's 3D arguments (``seq_threshold_3D``, ``num_par_softmax_segments``,
  ``softmax_segm_output/max/expsum``): threshold 0 forces 2D, a threshold at the batch size
  forces 3D with suite-allocated, NaN-poisoned segment buffers;
- neither: only the implementation's own choice ("auto") runs; forced paths skip with a reason.
Features missing from the signature (sinks, alibi_slopes, output_scale, batch_invariant) make
the cases that need them skip with a reason instead of failing.

vLLM's calling convention differs from ours where its backend's habits are baked in; for a
``vllm``-style implementation the adapter follows them (``vllm_kwargs``): ``kv_quant_mode`` as
its own KVQuantMode member (taken from the signature's default), passed explicitly for fp8
caches (it does not infer per-tensor dequantization from the dtype). Cases outside its contract
skip with the reason (``vllm_unsupported``): it reads ``window_size[0]`` only and
``k_descale[0, 0]`` only (its backend expands one per-tensor scale to ``[num_seqs, num_kv_heads]``).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SPEC = "paged_kernels:unified_attention"


def __getattr__(name: str):
    # vLLM's KVQuantMode as the compat entry mirrors it: loaded on first use, since importing the
    # kernels imports triton, which must wait for the device set-up.
    if name == "VllmKVQuantMode":
        from paged_kernels.vllm_compat import KVQuantMode

        return KVQuantMode
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


VLLM_3D_ARGS = ("seq_threshold_3D", "num_par_softmax_segments", "softmax_segm_output",
                "softmax_segm_max", "softmax_segm_expsum")
VLLM_DEFAULT_SEGMENTS = 16
# Arguments that came with vLLM 0.33, as did per-sequence causal flags (the causal argument as a tensor).
VLLM_033_ARGS = ("qq_bias", "rswa_prefix_lens", "rswa_window", "use_alibi_sqrt")
VLLM_MAX_3D_QUERY_LEN = 8  # vLLM 0.33's MAX_3D_QUERY_LEN


VLLM_DIR_ENV = "VLLM_PEER_DIR"
VLLM_FUNC = "vllm.v1.attention.ops.triton_unified_attention:unified_attention"


def vllm_peer_dir() -> Path:
    """The unmodified vLLM copy the suite and the benchmarks name as a peer: ``$VLLM_PEER_DIR``, else
    ``../shared/peers/vllm`` beside the repository."""
    env = os.environ.get(VLLM_DIR_ENV)
    return Path(env).resolve() if env else (Path(__file__).resolve().parents[2] / "shared" / "peers" / "vllm").resolve()


def vllm_peer_absent() -> str:
    """Why a module of the vLLM peer copy did not load: the skip reason of every test that needs one."""
    return f"vLLM peer copy not found or not importable at {vllm_peer_dir()} (set ${VLLM_DIR_ENV})"


def vllm_peer_module(name: str):
    """Module ``name`` (e.g. ``vllm.v1.attention.ops.int4_per_token_head``) from the vLLM peer copy, or
    None where the copy lacks it or it does not import. The copy's folder is appended to sys.path (and
    stays, for the module's own later imports): it holds a ``reference/`` of its own that must not
    shadow ours."""
    folder = vllm_peer_dir()
    if not (folder / (name.replace(".", "/") + ".py")).is_file():
        return None
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 (a peer that does not import is a peer we do not use)
        return None


class ImplSpecError(ValueError):
    """A spec that names no loadable function; the message says what was wrong, in one line."""


def split_spec(spec: str) -> tuple[str, str]:
    """(module or file, function name) of ``MODULE:FUNC`` / ``path/to/file.py:FUNC``, checked cheaply:
    the form, the file's existence, the top-level module's existence (nothing is imported)."""
    target, _, name = spec.rpartition(":")
    if not target or not name.isidentifier():
        raise ImplSpecError(f"expected MODULE:FUNC or path/to/file.py:FUNC, got {spec!r}")
    if target.endswith(".py"):
        if not Path(target).is_file():
            raise ImplSpecError(f"file {target!r} not found")
    elif importlib.util.find_spec(target.split(".")[0]) is None:
        raise ImplSpecError(f"module {target!r} not found")
    return target, name


def load_function(spec: str):
    target, name = split_spec(spec)
    if target.endswith(".py"):
        path = Path(target).resolve()
        module_spec = importlib.util.spec_from_file_location(f"attn_impl_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
                raise ImplSpecError(f"module {target!r} not found") from None
            raise ImplSpecError(f"module {target!r} needs {exc.name!r}, which is not installed") from None
    func = getattr(module, name, None)
    if func is None:
        raise ImplSpecError(f"{target!r} has no function {name!r}")
    if not callable(func):
        raise ImplSpecError(f"{target}:{name} is not callable")
    return func


@dataclass
class Implementation:
    spec: str
    func: object
    params: frozenset

    @classmethod
    def load(cls, spec: str = DEFAULT_SPEC) -> "Implementation":
        func = load_function(spec)
        return cls(spec, func, frozenset(inspect.signature(func).parameters))

    @property
    def signature(self) -> inspect.Signature:
        return inspect.signature(self.func)

    @property
    def style(self) -> str:
        if "split_kv" in self.params:
            return "split_kv"
        if all(a in self.params for a in VLLM_3D_ARGS):
            return "vllm"
        return "plain"

    @property
    def is_ours(self) -> bool:
        return self.spec == DEFAULT_SPEC

    def missing_feature(self, case) -> str | None:
        """Why this implementation cannot run ``case`` (None when it can)."""
        if not isinstance(case.causal, bool) and not any(a in self.params for a in VLLM_033_ARGS):
            return f"{self.spec} predates per-sequence causal flags (none of {', '.join(VLLM_033_ARGS)})"
        for param in case.arguments_used:
            if param not in self.params:
                return f"{self.spec} has no '{param}' argument"
        return self.vllm_unsupported(case) if self.style == "vllm" else None

    def untested_tier(self, tiers) -> str | None:
        """Why a tier of ours does not apply to this implementation: vLLM's kernel asserts a few
        arguments and trusts the rest, by design, so the tiers of our validation contract
        (``bad_input``, ``bad_metadata``: named errors, memory safety on invalid metadata)
        would only restate that (under the interpreter, invalid metadata crashes the process)."""
        if self.style != "vllm":
            return None
        for tier in ("bad_input", "bad_metadata"):
            if tier in tiers:
                return f"{self.spec} does not validate its arguments (vLLM's contract): the {tier} tier is ours"
        return None

    def vllm_unsupported(self, case) -> str | None:
        """Cases outside vLLM's calling contract (its kernel does not check them: it would return
        a wrong result, which is not a bug of that kernel)."""
        if not case.causal and case.window_size[1] >= 0:
            return f"{self.spec} reads window_size[0] only (a right window of a non-causal call is ignored)"
        if case.descale_per_head:
            return f"{self.spec} reads k_descale[0, 0] / v_descale[0, 0] only (per-tensor scales, expanded)"
        if case.layout == "qq_bias_strided":
            return f"{self.spec} takes qq_bias's row stride as its column count (contiguous rows only)"
        if case.kv_quant_mode and not self.vllm_knows_mode(case.kv_quant_mode):
            return f"{self.spec}'s KVQuantMode has no {case.kv_quant_mode.upper()} member"
        if case.kv_quant_mode == "int4_per_token_head":
            # Its INT4 launcher (int4_per_token_head.py) asserts causal calls and takes no other mask argument.
            if case.causal is not True:
                return f"{self.spec} asserts causal attention with INT4 caches"
            if case.chunk_lookback >= 0 or case.rswa_window is not None:
                return f"{self.spec} ignores chunked attention and R-SWA with INT4 caches"
            if case.out_dtype:
                return f"{self.spec} rotates an INT4 call's output back after storing it in out's dtype"
        return None

    def vllm_knows_mode(self, mode: str) -> bool:
        """Whether the KVQuantMode of a vLLM-style signature has a member for ``mode`` (older vLLM copies
        predate INT4_PER_TOKEN_HEAD); true where the default is no enum."""
        enum_type = type(self.signature.parameters["kv_quant_mode"].default) if "kv_quant_mode" in self.params else None
        return not hasattr(enum_type, "__members__") or mode.upper() in enum_type.__members__

    def vllm_kwargs(self, inputs, kwargs: dict) -> dict:
        """Our keywords in vLLM's dialect (see the module docstring)."""
        if "kv_quant_mode" not in self.params:
            return kwargs
        mode = kwargs.get("kv_quant_mode")
        if mode is None and inputs.k.dtype.is_floating_point and inputs.k.dtype.itemsize == 1:
            mode = "fp8_per_tensor"
        if isinstance(mode, str):
            enum_type = type(self.signature.parameters["kv_quant_mode"].default)
            mode = enum_type[mode.upper()] if hasattr(enum_type, "__members__") else mode
        return {**kwargs, "kv_quant_mode": mode} if mode is not None else kwargs

    def path_unsupported(self, path: str, case=None) -> str | None:
        if path == "auto":
            return None
        if self.style == "plain":
            return f"{self.spec} offers no way to force the {path} path (no split_kv or vLLM 3D arguments)"
        if self.style == "vllm" and path == "3d" and case is not None and not self._vllm_3d_serves(case):
            return ("vLLM's 3D path serves decode batches (from 0.33 also causal verify batches of at most "
                    f"{VLLM_MAX_3D_QUERY_LEN} tokens per sequence, without prefix ranges)")
        return None

    def run(self, inputs, path: str = "auto", *, out=None, num_segments=None, workspace=None,
            batch_invariant: bool = False, poison_workspace: bool = True):
        """Call the implementation on ``inputs`` through ``path`` ("2d", "3d" or "auto")."""
        out = inputs.fresh_out() if out is None else out
        args, kwargs = self.call_arguments(inputs, path, out, num_segments=num_segments, workspace=workspace,
                                           batch_invariant=batch_invariant, poison_workspace=poison_workspace)
        self.func(*args, **kwargs)
        return out

    def call_arguments(self, inputs, path: str, out, *, num_segments=None, workspace=None,
                       batch_invariant: bool = False, poison_workspace: bool = True) -> tuple[tuple, dict]:
        """The positional and keyword arguments ``run`` passes for ``inputs`` through ``path``."""
        kwargs = {k: v for k, v in inputs.call_kwargs().items() if v is not None or k in self.params}
        kwargs = {k: v for k, v in kwargs.items() if k in self.params}
        num_segments = num_segments if num_segments is not None else inputs.case.num_segments
        if self.style == "split_kv":
            kwargs["split_kv"] = {"2d": False, "3d": True, "auto": None}[path]
            if path != "2d" and num_segments is not None:
                kwargs["num_segments"] = num_segments
            if workspace is not None:
                kwargs["workspace"] = workspace
            if batch_invariant:
                kwargs["batch_invariant"] = True
        elif self.style == "vllm":
            kwargs = self.vllm_kwargs(inputs, kwargs)
            if path != "auto":
                # Its reduction takes a power-of-two segment count (its backend always passes 16).
                if not num_segments or num_segments & (num_segments - 1):
                    num_segments = VLLM_DEFAULT_SEGMENTS
                kwargs.update(self._vllm_3d_args(inputs, path, num_segments, poison_workspace))
        return inputs.call_args(out), kwargs

    def _vllm_3d_serves(self, case) -> bool:
        if case.is_decode:
            return True
        return (any(a in self.params for a in VLLM_033_ARGS) and max(case.query_lens) <= VLLM_MAX_3D_QUERY_LEN
                and case.causal is True and not case.mm_prefix_range)

    def _vllm_3d_args(self, inputs, path, segments, poison):
        import torch

        num_tokens, num_heads, head_size = inputs.q.shape
        head_pad = 1 << (head_size - 1).bit_length()
        fill = float("nan") if poison else 0.0
        dev = inputs.q.device
        return {
            # Its 3D path runs when num_seqs * cdiv(max_seqlen_q, BLOCK_Q) query blocks fit the threshold:
            # one per query token bounds that from above.
            "seq_threshold_3D": 0 if path == "2d" else num_tokens,
            "num_par_softmax_segments": segments,
            "softmax_segm_output": torch.full((num_tokens, num_heads, segments, head_pad), fill, device=dev),
            "softmax_segm_max": torch.full((num_tokens, num_heads, segments), fill, device=dev),
            "softmax_segm_expsum": torch.full((num_tokens, num_heads, segments), fill, device=dev),
        }
