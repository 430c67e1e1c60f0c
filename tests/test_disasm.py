"""harness tier: ``benchmarks.disasm`` (what the compiler makes of a sweep point, without a GPU) and
``benchmarks.sass`` (reading SASS: loops, instruction mix, programs per SM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import sass, shapes
from paged_kernels.plan import plan_launch

pytestmark = pytest.mark.harness
ROOT = Path(__file__).resolve().parents[1]


def _sass_text(body: list[tuple[int, str]], name: str = "k") -> str:
    """cuobjdump-style text for (address, instruction) pairs, with encoding comments as cuobjdump prints them."""
    lines = ["", "\tcode for sm_90a", f"\t\tFunction : {name}"]
    for address, inst in body:
        lines.append(f"        /*{address:04x}*/                   {inst} ;   /* 0x000000000000794d */")
        lines.append("                                                      /* 0x000fc80000000000 */")
    return "\n".join(lines)


def test_sass_finds_the_loop_between_a_backward_branch_and_its_target():
    body = [(0x00, "LDC R1, c[0x0][0x28]"), (0x10, "MOV R2, RZ"),
            (0x20, "HMMA.16816.F32.BF16 R4, R8, R12, R4"), (0x30, "LDG.E.128 R8, desc[UR4][R2.64]"),
            (0x40, "F2FP.F16.E4M3.UNPACK_B R9, R8"), (0x50, "@P0 BRA 0x20"),
            (0x60, "STG.E desc[UR4][R2.64], R4"), (0x70, "EXIT"), (0x80, "BRA 0x80")]
    instructions = sass.parse_sass(_sass_text(body))["k"]
    assert [i.address for i in instructions] == [a for a, _ in body]
    loops = sass.find_loops(instructions)
    assert [(lp.start, lp.end) for lp in loops] == [(0x20, 0x50)]  # the end-of-code self-branch is no loop
    loop = sass.main_loop(instructions)
    assert [i.family for i in loop.instructions] == ["HMMA", "LDG", "F2FP", "BRA"]
    assert loop.mix() == {"mma": 1, "gload": 1, "convert": 1, "branch": 1}


def test_sass_main_loop_is_the_one_with_the_matrix_work():
    body = [(0x00, "IADD3 R1, R1, 0x1, RZ"), (0x10, "@P0 BRA 0x0"),
            (0x20, "HMMA.16816.F32.BF16 R4, R8, R12, R4"), (0x30, "@P1 BRA 0x20")]
    loop = sass.main_loop(sass.parse_sass(_sass_text(body))["k"])
    assert (loop.start, loop.end) == (0x20, 0x30)


def test_sass_reads_how_many_copy_groups_a_loop_leaves_in_flight():
    def loop_of(*waits):
        body = [(0x00, "MOV R2, RZ")] + [(0x10 * (i + 1), f"DEPBAR.LE SB0, {w}") for i, w in enumerate(waits)]
        end = 0x10 * (len(waits) + 1)
        body += [(end, "HGMMA.64x64x16.F32.BF16 R88, gdesc[UR16], RZ, !UPT"), (end + 0x10, "@P0 BRA 0x10")]
        return sass.main_loop(sass.parse_sass(_sass_text(body))["k"])

    assert loop_of("0x4").copy_groups_in_flight() == 4
    assert loop_of("0x4", "0x0").copy_groups_in_flight() == 0  # the strictest wait decides
    assert loop_of().copy_groups_in_flight() is None


def test_ctas_per_sm_follows_the_occupancy_rule():
    h200 = sass.ARCH_LIMITS[90]
    # 255 registers: 8160 per warp, allocated as 8192; 4 warps take 32768 of 65536 -> 2 programs.
    assert sass.ctas_per_sm(h200, 255, 4, 41 * 1024) == (2, "registers")
    # 73 registers: 2336 per warp, allocated as 2560 (a 256 multiple); 4 warps take 10240 -> 6, not 7.
    assert sass.ctas_per_sm(h200, 73, 4, 0) == (6, "registers")
    # Few registers and warps: 32 programs at most; a big shared footprint bounds it instead.
    assert sass.ctas_per_sm(h200, 16, 1, 0) == (32, "ctas")
    assert sass.ctas_per_sm(h200, 32, 4, 100 * 1024) == (2, "shared")
    assert sass.ctas_per_sm(h200, 16, 32, 0) == (2, "warps")
    # Never more programs for more of any resource.
    for regs in range(8, 256, 8):
        assert sass.ctas_per_sm(h200, regs + 8, 4, 0)[0] <= sass.ctas_per_sm(h200, regs, 4, 0)[0]


def _run_disasm(*args, env_extra=None, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(env_extra or {})
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "benchmarks.disasm", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def _nvidia_tools_present() -> bool:
    try:
        import triton.backends.nvidia as nvidia
    except ImportError:
        return False
    return (Path(nvidia.__file__).parent / "bin" / "cuobjdump").exists()


@pytest.mark.skipif(not _nvidia_tools_present(), reason="Triton's NVIDIA backend tools (cuobjdump) are not installed")
def test_disasm_compiles_what_the_planner_launches(tmp_path):
    point = next(p for p in shapes.POINTS if p.name == "decode-bs1-L510")
    out = tmp_path / "disasm.json"
    res = _run_disasm("--points", point.name, "--columns", "heuristic", "--json", str(out), "--all-loops",
                      "--impl", "copy=paged_kernels:unified_attention")
    assert res.returncode == 0, res.stderr[-2000:]
    columns = json.loads(out.read_text())["points"][0]["columns"]
    launches = columns["heuristic"]["launches"]
    plan = plan_launch(num_tokens=point.num_tokens, num_seqs=point.num_seqs, max_seqlen_q=point.max_seqlen_q,
                       max_seqlen_k=point.max_seqlen_k, num_q_heads=point.num_q_heads,
                       num_kv_heads=point.num_kv_heads, head_size=point.head_size, num_sms=132, interpreter=False)
    expected = [("_paged_attention_kernel", list(plan.grid), plan.num_warps)]
    if plan.path == "3d":
        expected.append(("_reduce_segments_kernel", list(plan.reduce_grid), plan.reduce_num_warps))
    assert [(ln["kernel"], ln["grid"], ln["num_warps"]) for ln in launches] == expected
    # A peer plans for the target as well (its workspace is sized by its planner): our own package as a
    # peer launches what our column launches (this point splits by the SM count).
    assert [(ln["kernel"], ln["grid"], ln["num_warps"]) for ln in columns["copy"]["launches"]] == expected
    attention = launches[0]
    assert attention["registers"] > 0 and attention["sass_instructions"] > 0
    assert attention["loop"]["mix"].get("mma", 0) > 0  # the KV walk runs on the matrix units
    assert attention["ctas_per_sm"] >= 1
    # --all-loops: one line per loop of every launch, each with its own mix.
    loop_lines = [line for line in res.stdout.splitlines() if " loop " in line and " at 0x" in line]
    assert len(loop_lines) == sum(len(ln["loops"]) for column in columns.values() for ln in column["launches"]) >= 3, \
        res.stdout


@pytest.mark.skipif(not _nvidia_tools_present(), reason="Triton's NVIDIA backend tools (cuobjdump) are not installed")
def test_every_cache_format_compiles_for_sm90(tmp_path):
    """The interpreter runs Python: a kernel it runs can still fail to compile (it traced only the taken
    branch of a static if, where the compiler traces what follows a return too). Each cache format's
    2D and 3D kernels compile for sm_90 here, without a GPU."""
    points = ("decode-fp8kv-bs16-L4096", "decode-int8pth-bs16-L4096", "decode-int4pth-bs16-L4096",
              "prefill-fp8q-fp8kv-4x2048")
    out = tmp_path / "disasm.json"
    res = _run_disasm("--points", ",".join(points), "--columns", "2d,3d", "--json", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    failed = {(p["point"], column): record["error"] for p in json.loads(out.read_text())["points"]
              for column, record in p["columns"].items() if "error" in record}
    assert not failed, failed


def test_disasm_refuses_the_interpreter_and_bad_arguments():
    res = _run_disasm("--points", "decode-bs1-L510", env_extra={"TRITON_INTERPRET": "1"}, timeout=120)
    assert res.returncode == 2 and "TRITON_INTERPRET" in res.stderr
    for args, word in ((("--points", "nope"), "--points"), (("--columns", "4d"), "--columns"),
                       (("--sms", "0"), "--sms")):
        res = _run_disasm(*args, timeout=120)
        assert res.returncode == 2 and word in res.stderr, (args, res.stderr[-500:])


@pytest.mark.quick  # the catalog's prefill-pipeline-shallow shows in no output: this is its quick-tier kill
@pytest.mark.skipif(not _nvidia_tools_present(), reason="Triton's NVIDIA backend tools (cuobjdump) are not installed")
def test_prefill_keeps_kv_copies_in_flight_across_iterations(tmp_path, impl):
    """No prefill KV walk drains its copies each tile.

    With the block-table ids copied in the loop, a tile's K/V copies wait on them, so at three
    stages the loop's wait let nothing stay in flight; with the ids loaded a tile ahead (the plan's
    ``table_ahead``) three keep K/V copies in flight. Decision [Block-table ids a tile ahead].
    """
    if not impl.is_ours:
        pytest.skip("compiles paged_kernels.unified_attention's prefill: not the implementation under test")
    out = tmp_path / "disasm.json"
    res = _run_disasm("--points", "prefill-4x2048", "--columns", "2d", "--json", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    wide = json.loads(out.read_text())["points"][0]["columns"]["2d"]["launches"][0]
    walks = [lp for lp in wide["loops"] if lp["mix"].get("mma", 0) > 0]
    assert len(walks) == 3, wide["loops"]  # masked, unmasked, masked
    assert all(lp["copies_in_flight"] for lp in walks), [lp["copies_in_flight"] for lp in walks]


@pytest.mark.quick  # the catalog's metadata-load-sunk shows in no output: this is its quick-tier kill
@pytest.mark.skipif(not _nvidia_tools_present(), reason="Triton's NVIDIA backend tools (cuobjdump) are not installed")
def test_decode_reads_all_its_metadata_before_its_first_exit(tmp_path, impl):
    """A decode program issues its three metadata loads (cu_seqlens_q twice, seqused_k) together.

    Sunk below the early exit on the query length, seqused_k's load waited for cu_seqlens_q's,
    one more dependent round trip before the block table and the first K/V copy. Decision
    [Volatile seqused_k load].
    """
    if not impl.is_ours:
        pytest.skip("compiles paged_kernels.unified_attention's decode: not the implementation under test")
    res = _run_disasm("--points", "decode-bs1-L13300", "--columns", "heuristic", "--dump", str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    (path,) = tmp_path.glob("*_paged_attention_kernel.sass")
    (instructions,) = sass.parse_sass(path.read_text()).values()
    first_exit = next(i for i, inst in enumerate(instructions) if inst.family == "EXIT")
    loads = [inst.opcode for inst in instructions[:first_exit] if inst.family == "LDG"]
    assert len(loads) >= 3, loads
