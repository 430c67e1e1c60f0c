"""Pure-PyTorch paged attention: the golden every kernel is judged against.

Never imports ``paged_kernels``: the reference must stay independent of what it checks.
"""

from . import int4
from .checks import KV_QUANT_MODES
from .masks import chunk_size, visibility
from .paged import FP8_DTYPES, is_fp8, unified_attention
from .split import (
    Partials,
    merge_lse,
    merge_partials,
    segment_bounds,
    segment_partials,
    split_kv_attention,
)

__all__ = [
    "FP8_DTYPES",
    "KV_QUANT_MODES",
    "Partials",
    "chunk_size",
    "int4",
    "is_fp8",
    "merge_lse",
    "merge_partials",
    "segment_bounds",
    "segment_partials",
    "split_kv_attention",
    "unified_attention",
    "visibility",
]
