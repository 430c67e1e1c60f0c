"""harness tier: the suite can express every argument of vLLM's Triton unified attention.

For the peer in ``../shared/peers/vllm`` (skipped without it): every parameter of its
``unified_attention`` must get a non-default value from some case the suite runs against it
(through the vLLM dialect of ``attention_suite.impl``), or be listed below as having no
semantic effect, with the reason. A parameter vLLM adds later fails here by name until the
suite exercises it.
"""

from __future__ import annotations

import inspect

import pytest

from attention_suite import VLLM_FUNC, Implementation, build, tables, vllm_peer_absent, vllm_peer_module

# Arguments that change how a kernel runs, never what it computes.
NO_SEMANTIC_EFFECT = {
    "use_td": "tensor-descriptor (2D block) loads for Intel Xe2/Xe3 GPUs: a load strategy, same result",
}
# What a caller passes for "off" where the parameter has no default of its own.
TRIVIAL = {"causal": True, "window_size": (-1, -1), "softcap": 0.0, "q_descale": None, "k_descale": None,
           "v_descale": None}


def _is_trivial(param: inspect.Parameter, value) -> bool:
    if value is None:
        return True
    if param.name in TRIVIAL:
        expected = TRIVIAL[param.name]
        return value == expected if not hasattr(value, "shape") else False
    if param.default is inspect.Parameter.empty or hasattr(value, "shape"):
        return False
    return value == param.default


def exercised_parameters(impl: Implementation) -> dict[str, str]:
    """{parameter: the first case id that gives it a non-trivial value} over every table and path."""
    seen: dict[str, str] = {}
    params = impl.signature.parameters
    wanted = set(params) - set(NO_SEMANTIC_EFFECT)
    for case in tables.all_cases():
        paths = [p for p in tables.PATHS if not (impl.missing_feature(case) or impl.path_unsupported(p, case))]
        if not paths:
            continue
        inputs = build(case, "cpu", 0)  # one build per case: the inputs do not depend on the path
        for path in paths:
            args, kwargs = impl.call_arguments(inputs, path, inputs.out)
            for name, value in impl.signature.bind(*args, **kwargs).arguments.items():
                if name not in seen and not _is_trivial(params[name], value):
                    seen[name] = f"{case.name}-{path}"
        if wanted <= set(seen):  # every argument found: the rest of the tables cannot change the verdict
            break
    return seen


@pytest.fixture(scope="module")
def vllm_impl() -> Implementation:
    if vllm_peer_module(VLLM_FUNC.partition(":")[0]) is None:
        pytest.skip(vllm_peer_absent())
    return Implementation.load(VLLM_FUNC)


@pytest.mark.harness
@pytest.mark.quick
def test_suite_exercises_every_vllm_argument(vllm_impl):
    params = vllm_impl.signature.parameters
    assert set(NO_SEMANTIC_EFFECT) <= set(params), "NO_SEMANTIC_EFFECT lists an argument vLLM no longer has"
    seen = exercised_parameters(vllm_impl)
    missing = [name for name in params if name not in seen and name not in NO_SEMANTIC_EFFECT]
    assert not missing, (f"vLLM arguments no case gives a non-default value (add case fields and cases, or list "
                         f"them in NO_SEMANTIC_EFFECT with the reason): {missing}")
