"""Pytest glue for the suite: device selection, tiers, seeds, GPU pinning, the implementation under test.

Device: ``ATTN_TEST_DEVICE=cpu|gpu|auto`` (default auto: GPU when CUDA is available). On CPU the
kernels run through the Triton interpreter, which Triton decides on when a kernel is
decorated, so the device is set up here, before anything imports triton. The machinery
itself lives in the ``attention_suite`` package.
"""

from __future__ import annotations

import json
import os
import zlib

from attention_suite import device as suite_device

DEVICE = suite_device.setup(os.environ.get("ATTN_TEST_DEVICE", "auto"))

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import Phase, settings  # noqa: E402

# Fuzz budgets: derandomized and fixed in CI; --hypothesis-profile=nightly for the big run.
settings.register_profile("cpu", max_examples=10, derandomize=True, database=None, deadline=None)
settings.register_profile("gpu", max_examples=20, derandomize=True, database=None, deadline=None)
settings.register_profile("nightly", max_examples=1000, deadline=None)
# For mutation runs: a failure is enough, shrinking it under the interpreter is not needed.
settings.register_profile("noshrink", max_examples=10, derandomize=True, database=None, deadline=None,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile("cpu" if DEVICE == "cpu" else "gpu")

from attention_suite import Context, DEFAULT_SPEC, Implementation, ImplSpecError  # noqa: E402
from attention_suite import gpus  # noqa: E402

TIERS = {
    "quick": "a one-minute smoke subset of every tier (CPU CI runs it first)",
    "cross_section": "multi-feature cases, the quick tier's candidates (quick runs those triage/kill_matrix.json selects)",
    "reference": "self-tests of the pure-PyTorch reference",
    "numerics": "dtype x head size x GQA x block size x batch composition, every path",
    "edge": "segment boundaries, empty segments, fully masked rows, q_len 0, extreme logits, dominant sinks",
    "poison": "NaN/Inf in every byte the result must not depend on; result must be bit-identical",
    "layout": "non-contiguous q/out, combined and head-major caches, strided block tables, >2^31-element caches",
    "dispatch": "the planner's documented choices; forced paths agree",
    "determinism": "bit-identical repeats; batch-invariant mode",
    "graph": "3D path with a preallocated workspace captured in a CUDA graph and replayed (GPU)",
    "bad_input": "every invalid argument raises the documented error naming it, out untouched",
    "bad_metadata": "invalid metadata values: checked mode and reference raise naming the argument, unchecked survives",
    "fuzz": "property-based random batches (hypothesis), shrunk to a minimal failing case",
    "stress": "large caches and long sequences (GPU)",
    "accuracy": "gsm8k parity job through lm-eval (slow)",
    "harness": "self-tests of the suite's own machinery (pinning, interpreter fix, tolerance rule)",
    "mutation": "nightly: seeded kernel bugs must each be caught by the quick tiers",
    "memsafety": "(GPU) compute-sanitizer memcheck/initcheck over every kernel path, exactly-sized tensors",
}
GPU_ONLY_TIERS = ("graph", "stress", "memsafety")


def pytest_addoption(parser):
    group = parser.getgroup("attention suite")
    group.addoption("--attn-impl", default=DEFAULT_SPEC,
                    help="implementation under test, MODULE:FUNC or path/to/file.py:FUNC (default %(default)s)")
    group.addoption("--repro-dir", nargs="?", const="artifacts/repro", default=None,
                    help="write a reproducer file for every failing numerics case here (alone: artifacts/repro, "
                         "which git ignores)")
    group.addoption("--error-report", nargs="?", const="artifacts/error_report.json", default=None,
                    help="write every case's error ratio (error / allowed) as JSON (alone: "
                         "artifacts/error_report.json, which git ignores)")


def pytest_configure(config):
    for name, text in TIERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    spec = config.getoption("--attn-impl")
    try:
        config._attn_impl = Implementation.load(spec)
    except ImplSpecError as exc:
        raise pytest.UsageError(f"--attn-impl {spec}: {exc}") from None
    if DEVICE == "cuda":
        config._attn_gpu = gpus.pin_current_worker()


def pytest_report_header(config):
    lines = [f"attention suite: device={DEVICE}, impl={config.getoption('--attn-impl')}", f"interpreter: {suite_device.interpreter_status()}"]
    if DEVICE == "cuda":
        count = torch.cuda.device_count()
        lines.append(f"GPU pinning: xdist workers round-robin over {count} GPU(s); controller on GPU "
                     f"{torch.cuda.current_device()} ({torch.cuda.get_device_name()})")
    return lines


def pytest_collection_modifyitems(config, items):
    for item in items:
        if DEVICE == "cpu":
            for tier in GPU_ONLY_TIERS:
                if tier in item.keywords:
                    item.add_marker(pytest.mark.skip(reason=f"'{tier}' tier needs a CUDA GPU"))
        case = getattr(getattr(item, "callspec", None), "params", {}).get("case")
        if case is None or DEVICE != "cpu":
            continue
        for dtype in (case.dtype, case.out_dtype):
            if not suite_device.dtype_usable(dtype):
                item.add_marker(pytest.mark.skip(reason=f"{dtype} on the interpreter: "
                                                        f"{suite_device.interpreter_status()}"))


def pytest_runtest_setup(item):
    gpu = getattr(item.config, "_attn_gpu", None)
    if gpu is not None:
        item.user_properties.append(("gpu", gpu))


@pytest.fixture(scope="session")
def device() -> str:
    return DEVICE


@pytest.fixture(scope="session")
def impl(request) -> Implementation:
    return request.config._attn_impl


@pytest.fixture
def seed(request) -> int:
    """Derived from the test id: the same for a test whatever the order, worker or selection."""
    value = zlib.crc32(request.node.nodeid.encode()) & 0x7FFFFFFF
    torch.manual_seed(value)
    return value


@pytest.fixture(scope="session")
def data_dir():
    """The gsm8k data (``GSM8K_DATA_DIR``, else ``../shared/data/gsm8k`` beside the checkout); skips without it."""
    from pathlib import Path

    here = Path(__file__).resolve().parent
    for candidate in (os.environ.get("GSM8K_DATA_DIR"), here.parent / "shared" / "data" / "gsm8k"):
        if candidate and all((Path(candidate) / f"{split}.jsonl").is_file() for split in ("train", "test")):
            return Path(candidate).resolve()
    pytest.skip("gsm8k data not found: set GSM8K_DATA_DIR or provide ../shared/data/gsm8k beside the repo")


_records: list = []


@pytest.fixture
def ctx(request, device, seed, impl) -> Context:
    reason = impl.untested_tier(request.node.keywords)
    if reason:
        pytest.skip(reason)
    context = Context(request.node.nodeid, device, seed, impl, request.config.getoption("--repro-dir"))
    yield context
    for name, path, ratio in context.records:
        _records.append({"nodeid": request.node.nodeid, "case": name, "path": path, "ratio": ratio})


def pytest_sessionfinish(session, exitstatus):
    target = session.config.getoption("--error-report")
    if not target:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    path = f"{target}.{worker}" if worker else target
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump({"impl": session.config.getoption("--attn-impl"), "device": DEVICE, "cases": _records}, fh, indent=1)
    if worker is None:
        _merge_worker_reports(target)


def _merge_worker_reports(target: str) -> None:
    import glob

    parts = sorted(glob.glob(f"{target}.gw*"))
    if not parts:
        return
    with open(target) as fh:
        merged = json.load(fh)
    for part in parts:
        with open(part) as fh:
            merged["cases"].extend(json.load(fh)["cases"])
        os.remove(part)
    with open(target, "w") as fh:
        json.dump(merged, fh, indent=1)
