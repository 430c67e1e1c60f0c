"""What a transformers attention call asks for, as ``unified_attention`` arguments, or a refusal.

transformers hands an attention function the layer's tensors plus keywords that change the
math: ``scaling``, ``softcap`` (Gemma 2), ``sliding_window`` (Mistral, Gemma, gpt-oss, Qwen2),
``s_aux`` (gpt-oss's per-head sinks), ``dropout``, ``is_causal``, and whatever a later model
adds. Each known keyword maps to a kernel argument or is refused; an unknown keyword with a
value is refused too, so a feature can never be dropped by a ``**kwargs`` that nobody reads.

The mask is the other channel. transformers asks the registered mask function for a mask and
describes the pattern it wants with a ``mask_function(batch, head, q_idx, kv_idx)`` (causal,
sliding, chunked, bidirectional, blockwise, ...). Our mask function keeps that description
next to the 2D padding mask (``MaskRequest``); before a layer's kernel call the description
is evaluated over every (query, key) position pair the call can touch and compared with what
the kernel will compute (causal, plus the left window from ``sliding_window``, or Llama 4's
chunks from the layer type and ``attention_chunk_size``). Any difference (a bidirectional
mask, a window or chunk the arguments do not state) is an
``UnsupportedAttention`` error naming the model, the layer and the argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

# Keywords transformers passes that do not change what attention computes here: positions are
# already in the rotated q/k, the rest only say what the model returns (gpt-oss's router logits).
HARMLESS_KWARGS = frozenset({"position_ids", "cache_position", "use_cache", "output_hidden_states", "return_dict",
                             "output_router_logits"})


class UnsupportedAttention(ValueError):
    """The model asks for attention the paged backends cannot compute."""


@dataclass(frozen=True)
class KernelArgs:
    """The math-changing arguments of one ``unified_attention`` call."""

    softmax_scale: float
    window_size: tuple[int, int]  # (left, right), -1 = unlimited
    softcap: float  # 0 = off
    sinks: torch.Tensor | None  # float32 [num_q_heads]
    chunk_lookback: int = -1  # >= 0: chunked attention, chunk size = window_size[0] + 1 (lookback 0)


def where(module) -> str:
    cfg = getattr(module, "config", None)
    model = getattr(cfg, "model_type", None) or type(module).__name__
    path = getattr(cfg, "_name_or_path", "") or ""
    label = f"{model} ({path})" if path else model
    return f"{label} layer {getattr(module, 'layer_idx', '?')}"


def refuse(module, argument: str, message: str):
    raise UnsupportedAttention(f"{where(module)}: {argument}: {message}")


def attention_chunk(module) -> int | None:
    """The chunk size of a chunked-attention layer (Llama 4's ``layer_types``), else None.

    transformers states chunking only through the layer type and the mask it builds; the mask
    check below verifies that the kernel's chunks are the ones the model asked for."""
    cfg = getattr(module, "config", None)
    types = getattr(cfg, "layer_types", None)
    layer = getattr(module, "layer_idx", None)
    if not types or layer is None or types[layer] != "chunked_attention":
        return None
    size = getattr(cfg, "attention_chunk_size", None)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        refuse(module, "attention_chunk_size", f"{size!r}: expected a positive int for a chunked_attention layer")
    return size


def map_arguments(module, num_q_heads: int, head_dim: int, *, scaling=None, dropout=0.0, softcap=None,
                  sliding_window=None, s_aux=None, **kwargs) -> KernelArgs:
    """Every keyword of one attention call, carried into ``KernelArgs`` or refused."""
    for key, value in kwargs.items():
        if key in HARMLESS_KWARGS or value is None:
            continue
        if key == "output_attentions":
            if value:
                refuse(module, key, "attention weights are never materialized by the paged backends")
            continue
        if key == "is_causal":
            if value is not True:
                refuse(module, key, f"{value!r}: only causal attention is supported")
            continue
        refuse(module, key, f"{type(value).__name__} value not understood by the paged mapping; "
                            "it may change the math, so it is not ignored")
    if getattr(module, "is_causal", True) is False:
        refuse(module, "is_causal", "the layer is bidirectional; only causal attention is supported")
    if dropout:
        refuse(module, "dropout", f"{dropout}: inference only, dropout must be 0")

    if scaling is None:
        scaling = getattr(module, "scaling", None)
    scale = float(head_dim ** -0.5 if scaling is None else scaling)

    if sliding_window is None:
        window = (-1, -1)
    elif isinstance(sliding_window, int) and not isinstance(sliding_window, bool) and sliding_window >= 1:
        # transformers' window w lets a query see keys with q - k < w: w - 1 keys to its left.
        window = (sliding_window - 1, 0)
    else:
        refuse(module, "sliding_window", f"{sliding_window!r}: expected a positive int or None")
    chunk_lookback = -1
    chunk = attention_chunk(module)
    if chunk is not None:
        if sliding_window is not None:
            refuse(module, "sliding_window", "a chunked_attention layer with a sliding window too: not expressible")
        # The query's own chunk only: chunk size (left + 1) // (lookback + 1) = chunk.
        window, chunk_lookback = (chunk - 1, 0), 0

    if softcap is None or softcap == 0:
        cap = 0.0
    elif isinstance(softcap, (int, float)) and softcap > 0:
        cap = float(softcap)
    else:
        refuse(module, "softcap", f"{softcap!r}: expected a positive float, 0 or None")

    sinks = None
    if s_aux is not None:
        if not isinstance(s_aux, torch.Tensor) or s_aux.dim() != 1 or s_aux.shape[0] != num_q_heads:
            shape = tuple(s_aux.shape) if isinstance(s_aux, torch.Tensor) else type(s_aux).__name__
            refuse(module, "s_aux", f"expected one sink logit per query head [{num_q_heads}], got {shape}")
        sinks = s_aux.detach().float().contiguous()
    return KernelArgs(scale, window, cap, sinks, chunk_lookback)


# -- the mask channel


@dataclass
class MaskRequest:
    """What transformers' mask creation asked for: the padding mask plus the pattern function."""

    padding: torch.Tensor | None  # bool [batch, past + new], True = real token
    mask_function: Callable | None
    # (window, positions) -> None when verified; the same request serves every layer of its type.
    _verified: dict = field(default_factory=dict, repr=False)

    def pattern(self, positions: int, device) -> torch.Tensor:
        """Bool ``[positions, positions]``: the requested visibility at sequence positions.

        Evaluated for batch row 0 at its padded indices (position + its left padding): chunked
        masks count chunks from a row's first real token."""
        offset = 0 if self.padding is None else int((~self.padding[0]).long().cumprod(0).sum())
        q_idx = torch.arange(positions, device=device) + offset
        kv_idx = torch.arange(positions, device=device) + offset
        zero = torch.zeros(1, dtype=torch.long, device=device)
        try:  # index-based functions broadcast, as transformers' non-vmap expansion does
            grid = self.mask_function(zero[:, None, None, None], zero[None, :, None, None],
                                      q_idx[None, None, :, None], kv_idx[None, None, None, :])
        except Exception:  # noqa: BLE001 - custom (or/and) mask functions need vmap
            fn = self.mask_function
            for dims in ((None, None, None, 0), (None, None, 0, None), (None, 0, None, None), (0, None, None, None)):
                fn = torch.vmap(fn, in_dims=dims, out_dims=0)
            grid = fn(zero, zero, q_idx, kv_idx)
        return torch.as_tensor(grid, device=device).to(torch.bool).expand(1, 1, positions, positions)[0, 0]

    def check(self, module, args: KernelArgs, positions: int, device) -> None:
        """Refuse unless the requested pattern equals the kernel's over ``positions`` positions."""
        key = (args.window_size, args.chunk_lookback, positions)
        if key in self._verified:
            return
        if self.mask_function is None:
            refuse(module, "attention_mask", "mask creation passed no mask function; the pattern is unknown")
        try:
            requested = self.pattern(positions, device)
        except Exception as exc:  # noqa: BLE001
            refuse(module, "attention_mask", f"the requested mask is not a function of positions alone ({exc!r})")
        from reference.masks import visibility

        computed = visibility(positions, positions, True, args.window_size, device, chunk_lookback=args.chunk_lookback)
        diff = (requested != computed).nonzero()
        if diff.numel():
            q, k = diff[0].tolist()
            kind = f"causal with window {args.window_size}" if args.window_size[0] >= 0 else "plain causal"
            if args.chunk_lookback >= 0:
                kind = f"chunks of {args.window_size[0] + 1}"
            refuse(module, "attention_mask",
                   f"the model requests a mask the kernel cannot express from these arguments (kernel: {kind}); "
                   f"first difference at query {q}, key {k}: model says {'visible' if requested[q, k] else 'hidden'} "
                   "(chunked, bidirectional or windowed mask not stated by sliding_window)")
        self._verified[key] = None


def mask_request(batch_size=None, q_length=None, kv_length=None, q_offset=0, kv_offset=0, mask_function=None,
                 attention_mask=None, **kwargs) -> MaskRequest:
    """Mask function registered for the paged backends (transformers' AttentionMaskInterface)."""
    padding = None
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise UnsupportedAttention(f"attention_mask: paged attention expects the 2D padding mask, got shape "
                                       f"{tuple(attention_mask.shape)}")
        padding = attention_mask.to(torch.bool)
    return MaskRequest(padding, mask_function)
