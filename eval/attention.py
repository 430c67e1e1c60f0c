"""Attention functions that route a Hugging Face model's attention through our paged backends.

Each backend is registered under its own name twice: in transformers' ``AttentionInterface``
(the function the attention layers call) and in ``AttentionMaskInterface`` (what the model
builds as ``attention_mask`` for it). The mask registration is not optional: for an
implementation name the mask interface does not know, transformers skips mask creation and
passes ``None``, and a padded batch would then silently attend to its padding.

Our mask function (``eval.mapping.mask_request``) keeps the 2D padding mask together with the
pattern transformers asked for. The attention function maps the call's keywords to kernel
arguments (``eval.mapping.map_arguments``: scale, window, softcap, sinks; anything else that
would change the math is refused), checks the requested pattern against what the kernel will
compute, uses the padding mask's last ``q_len`` columns to tell real new tokens from padding,
packs the real ones into the varlen layout, appends their K/V to the paged cache and calls
``unified_attention`` on the cache.

The model is run without a transformers cache on these backends, so the ``key``/``value`` an
attention layer receives are exactly this step's new tokens; history lives only in our paged
cache. Which cache and step plan apply is set by ``PagedSession.step`` around each forward.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import mapping
from .choices import BACKENDS, BREAK_MODES, MAPPING_BREAKS  # noqa: F401  (BACKENDS: eval.engine, eval.lm)
from .paged_cache import PagedKVCache, StepPlan

PAGED_BACKENDS = ("kernel", "reference", "reference-native")
STOCK_BACKENDS = ("sdpa", "eager")
IMPLEMENTATION_NAMES = {"kernel": "paged_kernel", "reference": "paged_reference",
                        "reference-native": "paged_reference_native", "sdpa": "sdpa", "eager": "eager"}


@dataclass
class PagedSession:
    """One batch's paged cache plus the plan of the step being run."""

    cache: PagedKVCache
    plan: StepPlan | None = None
    # Attention calls per kernel path ("2d" / "split-kv"); the engine shares one across batches.
    calls: Counter = field(default_factory=Counter)

    @contextlib.contextmanager
    def step(self, plan: StepPlan):
        self.plan = plan
        token = _ACTIVE.session
        _ACTIVE.session = self
        try:
            yield self
        finally:
            _ACTIVE.session = token
            self.plan = None


class _Active(threading.local):
    session: PagedSession | None = None


_ACTIVE = _Active()


def _kernel_fn():
    # Imported late: the kernels package is optional for the sdpa/reference backends, and on CPU
    # TRITON_INTERPRET must be in the environment (``setup``) before triton is first imported.
    from . import setup

    setup()
    import paged_kernels

    return paged_kernels.unified_attention


def _reference_fn(precision: str):
    import reference

    def call(*args, split_kv=None, **kwargs):
        return reference.unified_attention(*args, precision=precision, **kwargs)

    return call


@dataclass
class BackendConfig:
    """Process-wide knobs of the paged backends (set by ``configure``)."""

    reference_precision: str = "float64"
    break_mode: str = "none"
    break_mapping: str = "none"


CONFIG = BackendConfig()


def configure(reference_precision: str | None = None, break_mode: str | None = None,
              break_mapping: str | None = None) -> None:
    if reference_precision is not None:
        CONFIG.reference_precision = reference_precision
    if break_mode is not None:
        if break_mode not in BREAK_MODES:
            raise ValueError(f"break mode must be one of {BREAK_MODES}, got {break_mode!r}")
        CONFIG.break_mode = break_mode
    if break_mapping is not None:
        if break_mapping not in MAPPING_BREAKS:
            raise ValueError(f"mapping break must be one of {MAPPING_BREAKS}, got {break_mapping!r}")
        CONFIG.break_mapping = break_mapping


def _broken_mapping(args: mapping.KernelArgs, mode: str) -> mapping.KernelArgs:
    """``args`` with one feature dropped, as a mapping bug (an unread keyword) would drop it."""
    if mode == "sinks":
        return dataclasses.replace(args, sinks=None)
    if mode == "softcap":
        return dataclasses.replace(args, softcap=0.0)
    if mode == "window":
        return dataclasses.replace(args, window_size=(-1, -1)) if args.chunk_lookback < 0 else args
    if mode == "chunk":  # chunked layers become plain causal
        return dataclasses.replace(args, window_size=(-1, -1), chunk_lookback=-1) if args.chunk_lookback >= 0 else args
    return args


def new_token_mask(attention_mask, batch: int, q_len: int, device) -> torch.Tensor:
    """Bool ``[batch, q_len]``: which of this step's query positions hold real tokens."""
    if isinstance(attention_mask, mapping.MaskRequest):
        attention_mask = attention_mask.padding
    if attention_mask is None:
        return torch.ones(batch, q_len, dtype=torch.bool, device=device)
    if attention_mask.dim() != 2:
        raise ValueError(f"paged attention expects the 2D padding mask, got shape {tuple(attention_mask.shape)}")
    return attention_mask[:, -q_len:].to(device=device, dtype=torch.bool)


def _broken_call(fn: Callable, mode: str) -> Callable:
    """Wrap ``fn`` so its results are subtly wrong in a way a real kernel bug could be."""
    if mode == "none":
        return fn

    def call(q, k, v, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, softmax_scale, *rest, **kw):
        if mode == "scale":
            # A wrong softmax scale (e.g. forgetting a head-size change) sharpens every head.
            softmax_scale = softmax_scale * 1.25
        elif mode == "drop-last-block":
            # Forgetting the final partial block of every sequence: the newest keys (often the
            # query token's own) vanish. A sequence never drops below its own query count, so
            # no query row is left with nothing to attend to; in a prefill step every key is a
            # query's, so only decode steps (the split-KV path) are hit.
            block = k.shape[1]
            q_lens = cu_seqlens_q[1:] - cu_seqlens_q[:-1]
            shortened = seqused_k - ((seqused_k - 1) % block + 1)
            seqused_k = torch.maximum(shortened, q_lens).to(seqused_k.dtype)
        return fn(q, k, v, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, softmax_scale, *rest, **kw)

    return call


def paged_attention_forward(backend: str, module, query, key, value, attention_mask, **kwargs):
    """The transformers attention function of a paged backend.

    ``query`` is ``[batch, q_heads, q_len, head_dim]``, ``key``/``value`` the same with kv heads,
    all for this step's positions only; returns ``([batch, q_len, q_heads, head_dim], None)``.
    Every keyword goes through ``mapping.map_arguments``: carried to the kernel or refused.
    """
    session = _ACTIVE.session
    if session is None or session.plan is None:
        raise RuntimeError(f"{backend} attention called outside a PagedSession step")
    plan, cache = session.plan, session.cache
    batch, num_q_heads, q_len, head_dim = query.shape
    args = mapping.map_arguments(module, num_q_heads, head_dim, **kwargs)
    if not isinstance(attention_mask, mapping.MaskRequest):
        # Without the request we cannot tell which pattern the model wants (chunked? bidirectional?).
        mapping.refuse(module, "attention_mask", f"expected the paged mask request, got "
                       f"{type(attention_mask).__name__}: the mask was not built through the registered mask function")
    attention_mask.check(module, args, plan.max_seqlen_k, query.device)
    args = _broken_mapping(args, CONFIG.break_mapping)
    real = new_token_mask(attention_mask, batch, q_len, query.device)
    counts = real.sum(dim=1).tolist()
    if counts != plan.q_lens:
        raise RuntimeError(f"padding mask says {counts} new tokens per row, the step plan says {plan.q_lens}")

    # Boolean indexing walks rows in order and each row's real tokens in order: exactly the
    # varlen layout, whatever side the padding is on.
    q = query.transpose(1, 2)[real].contiguous()
    k_new = key.transpose(1, 2)[real]
    v_new = value.transpose(1, 2)[real]
    layer = module.layer_idx
    cache.write(layer, plan, k_new, v_new)

    if backend == "kernel":
        fn = _broken_call(_kernel_fn(), CONFIG.break_mode)
    elif backend == "reference-native":
        fn = _reference_fn("native")
    else:
        fn = _reference_fn(CONFIG.reference_precision)
    split_kv = plan.is_decode  # a serving engine: split-KV for decode, the 2D path for prefill
    out = torch.empty_like(q)
    sinks = None if args.sinks is None else args.sinks.to(q.device)
    fn(
        q, cache.k[layer], cache.v[layer], out, plan.cu_seqlens_q, plan.max_seqlen_q, plan.seqused_k,
        plan.max_seqlen_k, args.softmax_scale, True, args.window_size, plan.block_table, args.softcap,
        None, None, None, sinks=sinks, split_kv=split_kv, chunk_lookback=args.chunk_lookback,
    )
    session.calls["split-kv" if split_kv else "2d"] += 1
    result = query.new_zeros(batch, q_len, num_q_heads, head_dim)
    result[real] = out
    return result, None


def set_backend(model, backend: str) -> None:
    """Point every attention layer of ``model`` at ``backend`` (shared weights, no reload)."""
    register()
    name = IMPLEMENTATION_NAMES[backend]
    if getattr(model.config, "_attn_implementation", None) == name:
        return
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:  # pragma: no cover - older transformers
        model.config._attn_implementation = name


_REGISTERED = False


def register() -> None:
    """Register the paged backends with transformers (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface

    try:
        from transformers import AttentionMaskInterface
    except ImportError:  # older releases only export it from masking_utils
        from transformers.masking_utils import AttentionMaskInterface

    for backend in PAGED_BACKENDS:
        name = IMPLEMENTATION_NAMES[backend]

        def forward(*args, _backend=backend, **kwargs):
            return paged_attention_forward(_backend, *args, **kwargs)

        AttentionInterface.register(name, forward)
        AttentionMaskInterface.register(name, mapping.mask_request)
    _REGISTERED = True
