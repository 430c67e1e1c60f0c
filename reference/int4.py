"""vLLM's INT4 per-token-head KV-cache format (``kv_quant_mode="int4_per_token_head"``), in plain PyTorch.

What a cache row means. Each cached (slot, KV head) row ``x`` of ``head_size`` values is stored
rotated and quantized:

* the rotation ``R = H D`` acts on aligned groups of ``b`` values, ``b`` the largest power of two
  dividing ``head_size`` (``rotation_block``): ``D`` multiplies by a fixed vector of +-1 signs
  (``rht_signs``), ``H`` is the unnormalized Sylvester-Hadamard matrix of order ``b``
  (``H @ H = b * I``), so ``R^-1 = D H / b``;
* ``y = R x`` is rounded to x's dtype, then quantized per row, asymmetrically, to nibbles ``u`` in
  ``[0, 15]``: ``scale = max((max(y) - min(y)) / 15, 1e-6)`` (float32), ``zero = clamp(round(-min(y) /
  scale), 0, 15)``, ``u = clamp(round(y / scale + zero), 0, 15)`` (rounding half away from zero);
* value ``2i`` goes to the low nibble of byte ``i``, value ``2i + 1`` to its high nibble: the cache is
  ``torch.uint8 [num_blocks, block_size, num_kv_heads, head_size // 2]``;
* the scale cache entry (float32 ``[num_blocks, block_size, num_kv_heads]``) is the scale with its
  4 low mantissa bits replaced by ``zero``.

A row stands for ``R^-1 ((u - zero) * s)`` with ``s`` the stored scale with those 4 bits cleared
(what vLLM's reader multiplies by): ``rows`` computes exactly that. Attention over such a cache is
ordinary attention over these rows, in the space of q and out; vLLM computes the same thing in the
rotated space (q rotated by ``R``, the scale divided by ``b``, the output rotated back by ``R^-1``),
which equals it because ``R^T R = b I``.

``quantize`` and ``reshape_and_cache`` are the writer: bit for bit what vLLM's
``reshape_and_cache_int4`` stores when run under the Triton interpreter (its GPU build may fuse
``y * (1 / scale) + zero`` into one FMA, which can move a value that lies within an ulp of a rounding
tie by one step). Rows whose values are not finite, or whose ``y / scale`` leaves the int32 range
(an almost constant row of magnitude above ~2147), are refused: vLLM's conversion is undefined there.
"""

from __future__ import annotations

import functools

import torch

MODE = "int4_per_token_head"
# Two 4-bit values per stored byte.
PACKING = 2
NIBBLE_MAX = 15
# The zero point rides in the scale's 4 lowest mantissa bits.
ZERO_POINT_MASK = 0xF
# The smallest scale the writer stores (a constant row would otherwise divide by zero), as float32.
SCALE_FLOOR = torch.tensor(1e-6, dtype=torch.float32)
# vLLM's seed for the rotation's signs (the format depends on it).
SIGN_SEED = 0x9E3779B9
INT32_LIMIT = 2.0 ** 31


def rotation_block(head_size: int) -> int:
    """``b``: the rotation's group size, the largest power of two dividing ``head_size``."""
    return head_size & -head_size


@functools.lru_cache(maxsize=None)
def _signs(block: int) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(SIGN_SEED)
    draws = torch.bernoulli(torch.full((block,), 0.5), generator=generator)
    return 2.0 * draws - 1.0


def rht_signs(block: int, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """The ``D`` of a ``block``-sized rotation group: +-1, as vLLM draws them (part of the format)."""
    return _signs(block).to(device=device, dtype=dtype)


def hadamard(x: torch.Tensor, block: int) -> torch.Tensor:
    """``H_block`` applied to each aligned group of ``block`` values of the last dim, in x's dtype.

    The butterfly's stages pair values 1, 2, 4, ... apart, the order vLLM's CPU transform uses, so a
    float32 rotation rounds as its does."""
    lead, width = x.shape[:-1], x.shape[-1]
    x = x.reshape(*lead, width // block, block)
    half = 1
    while half < block:
        pairs = x.reshape(*x.shape[:-1], block // (2 * half), 2, half)
        first, second = pairs[..., 0, :], pairs[..., 1, :]
        x = torch.stack([first + second, first - second], dim=-2).reshape(x.shape)
        half *= 2
    return x.reshape(*lead, width)


def _group_signs(x: torch.Tensor, block: int) -> torch.Tensor:
    """The signs repeated over every rotation group of x's last dim."""
    return rht_signs(block, x.device, x.dtype).repeat(x.shape[-1] // block)


def rotate(x: torch.Tensor) -> torch.Tensor:
    """``R x = H D x`` along the last dim, in x's dtype (what the writer stores, before quantizing)."""
    block = rotation_block(x.shape[-1])
    return hadamard(x * _group_signs(x, block), block)


def rotate_back(y: torch.Tensor) -> torch.Tensor:
    """``R^-1 y = D H y / b`` along the last dim, in y's dtype (exact in float64 for dequantized rows:
    every partial sum is an integer multiple of the row's scale below 2^13)."""
    block = rotation_block(y.shape[-1])
    return hadamard(y, block) * _group_signs(y, block) / block


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., head_size // 2]`` -> int32 nibbles ``[..., head_size]`` (low nibble first)."""
    low = (packed & 0xF).to(torch.int32)
    high = (packed >> 4).to(torch.int32)
    return torch.stack([low, high], dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * PACKING)


def split_scale(scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 stored scales -> (the scale with its zero-point bits cleared, the int32 zero point)."""
    bits = scale.contiguous().view(torch.int32)
    return (bits & ~ZERO_POINT_MASK).view(torch.float32), bits & ZERO_POINT_MASK


def dequantize(packed: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The rotated rows ``(u - zero) * s`` in ``dtype`` (exact in float64)."""
    clean, zero = split_scale(scale)
    centered = unpack(packed) - zero[..., None]  # integers in [-15, 15]: exact in every float dtype
    return centered.to(dtype) * clean.to(dtype)[..., None]


def rows(packed: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The rows a packed cache stands for, in the original space: ``R^-1 ((u - zero) * s)`` in ``dtype``."""
    return rotate_back(dequantize(packed, scale, dtype))


def _round_half_away(t: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer, ties away from zero (``int(t +- 0.5)`` truncating, as the writer does)."""
    return torch.where(t >= 0, torch.trunc(t + 0.5), torch.trunc(t - 0.5))


def quantize(x: torch.Tensor, arg: str = "x") -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``[..., head_size]`` (float16/bfloat16/float32) -> (uint8 ``[..., head_size // 2]``, float32
    ``[...]`` scales carrying the zero points): the cache entries vLLM's writer stores for them."""
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"{arg}: expected a float16/bfloat16/float32 tensor")
    if x.dim() < 1 or x.shape[-1] < PACKING or x.shape[-1] % PACKING:
        raise ValueError(f"{arg}: head size must be even (two values per byte), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{arg}: rows must be finite (the writer's rounding is undefined otherwise)")
    # Rotated in float32 and rounded back to the input's dtype before quantizing, as vLLM does.
    y = rotate(x.float()).to(x.dtype).float()
    low, high = y.amin(dim=-1), y.amax(dim=-1)
    scale = torch.maximum((high - low) / 15.0, SCALE_FLOOR)
    zero = _round_half_away(-low / scale).clamp(0, NIBBLE_MAX)
    steps = y * (1.0 / scale)[..., None] + zero[..., None]
    if steps.abs().max() >= INT32_LIMIT or (low / scale).abs().max() >= INT32_LIMIT:
        raise ValueError(f"{arg}: a row's values divided by its scale leave the int32 range (vLLM's writer "
                         "converts them to int32)")
    nibbles = _round_half_away(steps).clamp(0, NIBBLE_MAX).to(torch.uint8)
    packed = nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)
    stored = (scale.view(torch.int32) & ~ZERO_POINT_MASK) | zero.to(torch.int32)
    return packed, stored.view(torch.float32)


def reshape_and_cache(key, value, key_cache, value_cache, slot_mapping, k_scale_cache, v_scale_cache) -> None:
    """Write ``key``/``value`` ``[num_tokens, num_kv_heads, head_size]`` into the packed caches at
    ``slot_mapping`` (int ``[num_tokens]``, slot = block * block_size + offset; negative: skipped),
    as vLLM's ``reshape_and_cache_int4`` does. Checks shapes first, writes nothing on an error."""
    for name, t in (("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"{name}: expected a [num_tokens, num_kv_heads, head_size] tensor")
    if value.shape != key.shape:
        raise ValueError(f"value: expected key's shape {tuple(key.shape)}, got {tuple(value.shape)}")
    num_tokens, num_kv_heads, head_size = key.shape
    for name, t in (("key_cache", key_cache), ("value_cache", value_cache)):
        if t.dtype != torch.uint8 or t.dim() != 4 or tuple(t.shape[2:]) != (num_kv_heads, head_size // PACKING):
            raise ValueError(f"{name}: expected uint8 [num_blocks, block_size, {num_kv_heads}, "
                             f"{head_size // PACKING}], got {t.dtype} {tuple(t.shape)}")
    for name, t in (("k_scale_cache", k_scale_cache), ("v_scale_cache", v_scale_cache)):
        if t.dtype != torch.float32 or tuple(t.shape) != tuple(key_cache.shape[:3]):
            raise ValueError(f"{name}: expected float32 {tuple(key_cache.shape[:3])}, got {t.dtype} {tuple(t.shape)}")
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] != num_tokens:
        raise ValueError(f"slot_mapping: expected {num_tokens} entries, got shape {tuple(slot_mapping.shape)}")
    block_size = key_cache.shape[1]
    slots = slot_mapping.long()
    if (slots >= key_cache.shape[0] * block_size).any():
        raise ValueError("slot_mapping: a slot lies past the cache")
    k_packed, k_scale = quantize(key, "key")
    v_packed, v_scale = quantize(value, "value")
    keep = slots >= 0
    blocks, offsets = slots[keep] // block_size, slots[keep] % block_size
    key_cache[blocks, offsets] = k_packed[keep]
    value_cache[blocks, offsets] = v_packed[keep]
    k_scale_cache[blocks, offsets] = k_scale[keep]
    v_scale_cache[blocks, offsets] = v_scale[keep]
