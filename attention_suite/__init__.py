"""The suite's engine: case tables, the input builder, the tolerance rule, the reference pair,
the pluggable-implementation adapter, reproducers, and the two commands built on them
(``python -m attention_suite.verify``, the main job; ``python -m attention_suite.memsafety``).

Every tool imports these public names: the tests, ``triage``, ``eval`` and ``benchmarks``.
It imports ``paged_kernels`` and ``reference``; nothing here imports ``tests``.

Triton decides when a kernel is decorated whether it is interpreted, so the device must be
chosen (``attention_suite.device.setup``) before anything imports triton. Importing this
package imports nothing heavy: the names below load their module on first use.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    # cases: one call as data, and the builder of its tensors
    "Case": "cases", "Inputs": "cases", "build": "cases", "visible_slots": "cases", "slice_sequence": "cases",
    "scatter_block_table": "cases", "case_from_dict": "cases", "DTYPES": "cases", "LAYOUTS": "cases",
    "per_tensor_fp8_descale": "cases", "per_token_head_quantize": "cases", "vllm_int4_module": "cases",
    # the rule and the reference pair
    "Verdict": "tolerance", "judge": "tolerance", "as_values": "tolerance",
    "Context": "check", "reference_outputs": "check", "reference_pair": "check", "compare": "check",
    "run_case": "check", "check_against_reference": "check", "check_poison_free": "check", "same_bits": "check",
    "skip_if_unsupported": "check", "split_workspace": "check", "assert_untouched_padding": "check",
    # the implementation under test
    "Implementation": "impl", "ImplSpecError": "impl", "DEFAULT_SPEC": "impl", "load_function": "impl", "VllmKVQuantMode": "impl",
    "vllm_peer_dir": "impl", "vllm_peer_module": "impl", "vllm_peer_absent": "impl", "VLLM_DIR_ENV": "impl", "VLLM_FUNC": "impl",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'attention_suite' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
