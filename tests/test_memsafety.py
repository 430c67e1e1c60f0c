"""memsafety tier (GPU): compute-sanitizer memcheck and initcheck over every kernel path.

Runs the curated calls of ``attention_suite.memsafety`` in a sanitizer subprocess with the
caching allocator off and exactly-sized tensors; any report fails. Two catalog mutants (applied
to copies of the kernels, never the shipped ones) show the tier can see what numerics cannot.
"""

import shutil

import pytest

from attention_suite import memsafety
from triage import mutants

# Clean runs per tool, side by side under xdist: one sanitizer process per tool over every case did not
# finish in 138 s on an H100.
SHARDS = 4
PROBE_CASES = ["seg-boundaries-batch", "fewer-keys-than-segments", "quick-varlen", "kv-len-1-prefill"]
BAD_METADATA_PROBES = ["fault:block-id-past-end", "fault:block-id-minus-1", "fault:cu-past-tokens",
                       "fault:seqused-past-table"]
BREAKAGES = {  # catalog mutant: (tool, cases that must expose it)
    # The block-table load without its mask: reads entries past the last row's allocation.
    "bt-unmasked": ("memcheck", PROBE_CASES),
    # The reduction reading every segment, active or not: segments the 3D kernel never wrote.
    "reduce-all-segments": ("initcheck", PROBE_CASES),
    # Bad metadata, unchecked: an out-of-range block id dereferenced, token rows past q/out.
    "block-id-unchecked": ("memcheck", BAD_METADATA_PROBES),
    "token-rows-unclamped": ("memcheck", BAD_METADATA_PROBES),
    # Block-table ids read a tile past the end of an unmasked walk that ends at the table's last column.
    "table-ids-ahead-past-walk-end": ("memcheck", ["exact-table-unmasked-end"]),
}


@pytest.fixture(autouse=True)
def _needs_sanitizer():
    if shutil.which("compute-sanitizer") is None:
        pytest.skip("compute-sanitizer is not on PATH")


@pytest.mark.memsafety
@pytest.mark.parametrize("shard", range(SHARDS))
@pytest.mark.parametrize("tool", ["memcheck", "initcheck"])
def test_kernels_are_clean_under_sanitizer(tool, shard):
    ok, report, _ = memsafety.sanitize(tool, shard=(shard, SHARDS))
    assert ok, f"{tool} reported:\n{report}"


@pytest.mark.memsafety
@pytest.mark.parametrize("name", list(BREAKAGES))
def test_tier_reports_broken_kernels(name, tmp_path):
    tool, probes = BREAKAGES[name]
    target = mutants.materialize(mutants.BY_NAME[name], tmp_path) / "paged_kernels"
    ok, report, log = memsafety.sanitize(tool, kernels_dir=str(tmp_path), selected=probes)
    assert f"kernels from {target}" in log, "the broken copy was not the one imported"
    assert not ok, f"{tool} did not report the '{name}' breakage"
