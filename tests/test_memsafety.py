"""memsafety tier (GPU): compute-sanitizer memcheck and initcheck over every kernel path.

Runs the curated calls of ``tests.harness.memsafety`` in a sanitizer subprocess with the
caching allocator off and exactly-sized tensors; any report fails. Two deliberately broken
copies of the kernels (never the shipped ones) show the tier can see what numerics cannot.
"""

import shutil

import pytest

from tests.harness import memsafety

BREAKAGES = {
    # The masked phase's block-table load without its mask: on the last tile it reads entries past
    # the sequence's last block, past the table's allocation for the table's last row.
    "unmasked-block-table": (
        "memcheck",
        "phys_block = tl.load(block_table_row + (key // BLOCK_SIZE) * stride_bt_blk, mask=key_valid, other=0)",
        "phys_block = tl.load(block_table_row + (key // BLOCK_SIZE) * stride_bt_blk)",
    ),
    # The reduction reading every segment, active or not: segments the 3D kernel never wrote.
    "reduction-reads-all-segments": (
        "initcheck",
        "valid = head_valid[:, None] & (segs < active)[None, :]",
        "valid = head_valid[:, None] & (segs < num_segments)[None, :]",
    ),
}
PROBE_CASES = ["seg-boundaries-batch", "fewer-keys-than-segments", "quick-mixed", "kv-len-1-prefill"]


@pytest.fixture(autouse=True)
def _needs_sanitizer():
    if shutil.which("compute-sanitizer") is None:
        pytest.skip("compute-sanitizer is not on PATH")


@pytest.mark.memsafety
@pytest.mark.parametrize("tool", ["memcheck", "initcheck"])
def test_kernels_are_clean_under_sanitizer(tool):
    ok, report, _ = memsafety.sanitize(tool)
    assert ok, f"{tool} reported:\n{report}"


@pytest.mark.memsafety
@pytest.mark.parametrize("name", list(BREAKAGES))
def test_tier_reports_broken_kernels(name, tmp_path):
    tool, original, broken = BREAKAGES[name]
    target = tmp_path / "kernels"
    shutil.copytree(memsafety.ROOT / "kernels", target, ignore=shutil.ignore_patterns("__pycache__"))
    source = (target / "_attention.py").read_text()
    assert source.count(original) == 1, f"breakage '{name}' no longer matches the kernel source"
    (target / "_attention.py").write_text(source.replace(original, broken))
    ok, report, log = memsafety.sanitize(tool, kernels_dir=str(tmp_path), selected=PROBE_CASES)
    assert f"kernels from {target}" in log, "the broken copy was not the one imported"
    assert not ok, f"{tool} did not report the '{name}' breakage"
