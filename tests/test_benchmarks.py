"""harness tier: the benchmark sweep on CPU: quantized points, targets, inputs and the results records."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from benchmarks import records, report, shapes
from benchmarks.inputs import build_inputs
from benchmarks.records import PointInfo, PointRecord, Result, Run

pytestmark = pytest.mark.harness


def _point(name):
    return next(p for p in shapes.POINTS if p.name == name)


def test_bench_quantized_floor_bytes():
    slots = 131_072 * 8  # (token, KV head) pairs at bs1 L131072
    assert _point("decode-bs1-L131072").kv_bytes() == slots * 128 * 2 * 2
    assert _point("decode-fp8kv-bs1-L131072").kv_bytes() == slots * 128 * 1 * 2
    assert _point("decode-int8pth-bs1-L131072").kv_bytes() == slots * (128 + 4) * 2  # + a float32 scale each
    assert _point("decode-int4pth-bs1-L131072").kv_bytes() == slots * (64 + 4) * 2  # two values per byte
    fp8q = _point("prefill-fp8q-fp8kv-4x2048")
    assert fp8q.qo_bytes() == 8192 * 32 * 128 * (1 + 2)  # fp8 q in, bf16 out
    assert fp8q.floor_bytes() == fp8q.kv_bytes() + fp8q.qo_bytes() == 2 * 8192 * 8 * 128 + 8192 * 32 * 128 * 3


def test_bench_quantized_points_quick_and_selection():
    for name, bf16 in (("decode-fp8kv-bs16-L4096", "decode-bs16-L4096"),
                       ("decode-int8pth-bs1-L131072", "decode-bs1-L131072"),
                       ("decode-int4pth-bs16-L4096", "decode-bs16-L4096"),
                       ("prefill-fp8q-fp8kv-4x2048", "prefill-4x2048")):
        assert _point(name).quick == _point(bf16).quick
    chosen = [p.name for p in shapes.select("prefill-fp8q-fp8kv-4x2048")]
    assert chosen == ["prefill-4x2048", "prefill-fp8q-fp8kv-4x2048"]  # the relative target's reference
    with pytest.raises(ValueError):
        shapes.Point("x", "decode", "bs1", ((1, 16),), kv_format="int8-pth", q_format="fp8")


def _rec(name, us, floor_us=None, flops=None, target=None):
    info = dataclasses.replace(PointInfo.of(_point("decode-bs1-L510"), 3000.0), name=name, floor_us=floor_us,
                               flops=flops, target=target)
    return PointRecord(point=info, copies=1, results={"heuristic": Result(us=us)})


def test_bench_floor_and_relative_targets():
    floor = shapes.Target("pct_floor", 90.0)
    assert report.target_status(_rec("a", 100.0, floor_us=95.0, target=floor))[1] is True
    text, met = report.target_status(_rec("a", 100.0, floor_us=80.0, target=floor))
    assert met is False and "80.0% of floor" in text
    rel = shapes.Target("tflops", 1.5, relative_to="base")
    base = _rec("base", 1.0, flops=200e6)  # 200 TFLOP/s
    run = Run(points=[base, _rec("q", 1.0, flops=290e6, target=rel)])
    assert report.target_status(run.points[1], run)[1] is False  # 290 < 1.5 x 200
    run.points[1].point.flops = 310e6
    assert report.target_status(run.points[1], run)[1] is True
    assert "not measured" in report.target_status(run.points[1], Run(points=run.points[1:]))[0]


RESULTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "results").glob("*.json"))


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_bench_committed_results_survive_a_round_trip(path):
    """Every committed results file loads into records; written in the records' JSON and read back it
    is the same run and renders the same report."""
    run = records.load(path)
    assert run.points or run.tune
    again = Run.from_json(json.loads(json.dumps(run.to_json(), default=str)))
    assert again == run
    assert report.render_markdown(again) == report.render_markdown(run)


def test_bench_a_misspelled_field_fails_on_load():
    with pytest.raises(TypeError, match="eror"):
        Result.from_json({"us": None, "eror": "typo"})


def test_bench_old_check_keys_land_on_each_result():
    """A file from before the records keeps its output check per point (one tolerance for all, or
    one per implementation); loading puts each implementation's part on its result."""
    point = json.loads(json.dumps(PointInfo.of(_point("decode-bs1-L510"), 3000.0).to_json()))
    point["describe"] = point.pop("description")
    old = {"mode": "sweep", "points": [{
        **point, "copies": 2, "above_floor": ["2d"], "heuristic_path": "2d",
        "results": {"heuristic": {"us": 1.0},
                    "2d": {"us": 0.1, "mismatch": "vs sdpa-flash: 3 of 8 outputs are NaN/inf"},
                    "sdpa-flash": {"us": 2.0, "config": "enable_gqa=True"}},
        "check": {"reference": "sdpa-flash", "tolerance": 0.05, "max_abs_diff": {"heuristic": 0.07, "2d": None},
                  "mismatch": {"2d": "3 of 8 outputs are NaN/inf"}}}]}
    rec = Run.from_json(old).points[0]
    assert rec.reference == "sdpa-flash" and rec.above_floor == ["2d"] and rec.point.name == "decode-bs1-L510"
    assert rec.results["2d"].mismatch == "3 of 8 outputs are NaN/inf" and rec.mismatched("2d")
    assert (rec.results["heuristic"].tolerance, rec.results["heuristic"].max_abs_diff) == (0.05, 0.07)
    assert set(rec.checked()) == {"heuristic", "2d"}
    notes = report.checks_text(Run(points=[rec]))
    assert "decode-bs1-L510 / heuristic: output differs from sdpa-flash by 0.07 (tolerance 0.05)" in notes
    assert "decode-bs1-L510 / 2d: OUTPUT MISMATCH vs sdpa-flash: 3 of 8 outputs are NaN/inf" in notes


@pytest.mark.parametrize("name", ["decode-fp8kv-bs16-L4096", "decode-int8pth-bs16-L4096", "decode-int4pth-bs16-L4096",
                                  "prefill-fp8q-fp8kv-4x2048"])
def test_bench_quantized_inputs_dequantize_to_the_bf16_values(name):
    point = _point(name).scaled(64)
    plain = build_inputs(dataclasses.replace(point, kv_format="bf16", q_format="bf16"), 1, "cpu", torch.float32)
    quant = build_inputs(point, 1, "cpu", torch.float32)  # same seed: the same values, then quantized
    ids = list(range(point.num_seqs))
    for x, ref in zip(quant.dense_kv(0, ids), plain.dense_kv(0, ids)):
        if point.kv_format == "fp8":
            assert torch.allclose(x, ref, rtol=2 ** -4, atol=quant.k_descale.item() * 2 ** -6)
        elif point.kv_format == "int4-pth":
            # Half a step per rotated value; rotating back divides a row's error norm by sqrt(b) (b = 128).
            steps = torch.cat([quant.k_scale_cache.flatten(), quant.v_scale_cache.flatten()]).max()
            assert ((x - ref).norm(dim=-1) <= 0.5001 * steps * (point.head_size / 128) ** 0.5 + 1e-5).all()
            assert (x - ref).abs().max() > 1e-3  # 4 bits: lossy, so the values did go through the format
        else:  # int8: half a step of its (slot, head) scale
            assert ((x - ref).abs() <= ref.abs().amax(-1, keepdim=True) / 254 + 1e-6).all()
    assert torch.allclose(quant.q_values(0), plain.q[0], rtol=2 ** -4, atol=1e-2)
    kw = quant.quant_kwargs()
    if point.kv_format == "int8-pth":
        assert kw["kv_quant_mode"] == "int8_per_token_head" and kw["k_descale"] is None
        assert kw["k_scale_cache"].shape == quant.k_cache.shape[:3] and quant.k_cache.dtype == torch.int8
    elif point.kv_format == "int4-pth":
        assert kw["kv_quant_mode"] == "int4_per_token_head" and kw["k_descale"] is None
        assert quant.k_cache.dtype == torch.uint8 and quant.k_cache.shape[-1] == point.head_size // 2
        assert kw["k_scale_cache"].shape == quant.k_cache.shape[:3]
    else:
        assert kw["kv_quant_mode"] == "fp8_per_tensor" and kw["k_descale"].shape == (1,)
    assert (kw["q_descale"] is None) == (point.q_format == "bf16")


@pytest.mark.parametrize("block_m,tile", [(32, 16), (32, 32)])
def test_bench_ceiling_flash_kernel_matches_causal_attention(device, block_m, tile):
    """The prefill yardstick (``benchmarks.ceiling``) is a ceiling only if it computes attention:
    causal, grouped heads, two sequences, against float32 SDPA. Fails on a diagonal walk that
    skips its masked tile or a mask that lets a query see the next key."""
    from benchmarks.flash_kernel import flash_causal

    seqs, seq_len, heads, kv_heads, head = 2, 64, 4, 2, 32
    torch.manual_seed(0)
    q, k, v = (torch.randn(seqs * seq_len, h, head, device=device).to(torch.float16)
               for h in (heads, kv_heads, kv_heads))
    out = torch.full_like(q, float("nan"))
    flash_causal(q, k, v, out, seq_len, block_m=block_m, tile=tile, num_warps=4, num_stages=2)()
    bhsd = [t.float().view(seqs, seq_len, -1, head).transpose(1, 2) for t in (q, k, v)]
    kg, vg = (t.repeat_interleave(heads // kv_heads, 1) for t in bhsd[1:])
    ref = torch.nn.functional.scaled_dot_product_attention(bhsd[0], kg, vg, is_causal=True)
    err = (out.float() - ref.transpose(1, 2).reshape(out.shape)).abs().max().item()
    assert err < 2e-3, err  # f16 P and output: a few units of 2^-11


@pytest.mark.parametrize("argv", [["--block-sizes", "16,x"], ["--seq-len", "2000"], ["--block-sizes", "48"],
                                  ["--impl", "heuristic=paged_kernels:unified_attention"]])
def test_bench_ceiling_refuses_bad_arguments(argv, capsys):
    from benchmarks.ceiling import parse_args

    with pytest.raises(SystemExit):
        parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_bench_ceiling_runs_every_column_on_the_same_values(device, monkeypatch, capsys):
    """``python -m benchmarks.ceiling`` end to end at a small size, timing stubbed (CPU: the
    interpreter computes, nothing is timed): every column it prints, the minimal kernel (pointer
    and TMA loads) and ours on each page size, agrees with SDPA flash on the same q/K/V."""
    if device != "cpu":
        pytest.skip("the GPU runs the real thing: python -m benchmarks.ceiling")
    from benchmarks import ceiling, timing

    class OneCall:  # stands in for a captured CUDA graph: the call runs once, eagerly
        def __init__(self, calls, **_):
            calls[0]()

    monkeypatch.setattr(timing, "require_cuda", lambda: torch.device("cpu"))
    monkeypatch.setattr(timing, "Replayer", OneCall)
    monkeypatch.setattr(timing, "time_interleaved", lambda reps, **_: {
        n: timing.summarize([1.0], calls_per_replay=1, copies=1, mode="eager") for n in reps})
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "cpu")
    monkeypatch.setattr(ceiling, "FLASH_SHAPES", ((128, 64, 8, 2),))
    assert ceiling.main(["--seqs", "1", "--seq-len", "128", "--block-sizes", "16,0"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("flash-", "ours-"))]
    names = [r[0] for r in rows]
    assert names == ["flash-contiguous-ptr-m128-t64-w8-s2", "flash-contiguous-tma-m128-t64-w8-s2",
                     "ours-paged-block16", "ours-paged-block128"], names
    from benchmarks.sweep import CHECK_TOLERANCE

    assert all(float(r[-1]) < CHECK_TOLERANCE for r in rows), rows  # bf16 outputs, as the sweep checks them


def test_bench_split_kv_peer_gets_its_own_preallocated_workspace():
    """A copy of our kernels timed as a peer (``--impl NAME=kernels_x:unified_attention``) runs with
    a workspace of its own package, built before timing, as the heuristic column does: without one
    each timed call would allocate its partials and zero its merge counters."""
    import paged_kernels
    from benchmarks.peers import Peer, parse_impl

    peer = Peer.load(parse_impl("copy=paged_kernels:unified_attention"))
    assert peer.style == "split_kv"
    inputs = build_inputs(_point("decode-bs16-L4096").scaled(64), 2, "cpu", torch.float32, fill=False)
    calls = peer.build(inputs)
    workspace = calls.buffers.get("workspace")
    assert isinstance(workspace, paged_kernels.Workspace), calls.buffers
    plan = paged_kernels.make_plan(inputs.q[0], inputs.k_cache, inputs.cu_seqlens_q, inputs.max_seqlen_q,
                             inputs.max_seqlen_k)
    assert workspace.num_segments == plan.num_segments and workspace.max_num_tokens == inputs.q[0].shape[0]
    assert "preallocated workspace" in calls.config


@pytest.mark.parametrize("name", ["verify-q4-bs8-L8192", f"verify-tree{len(shapes.VERIFY_TREE)}-bs8-L8192"])
def test_bench_flex_mask_and_baseline_mask_agree(name):
    """flex's mask function and the SDPA baseline's boolean mask let the same (query, key) pairs through,
    per sequence; the baseline mask is tied to the qq_bias by the test below."""
    from benchmarks.baselines import bottom_right_mask
    from benchmarks.flex import bottom_right_mask_mod

    point = _point(name).scaled(256)
    kv_lens = torch.tensor([kv + 3 * s for s, (_, kv) in enumerate(point.seqs)])  # lengths differ per sequence
    q_len = point.seqs[0][0]
    mask_mod = bottom_right_mask_mod(point, q_len, kv_lens)
    for s, kv_len in enumerate(kv_lens.tolist()):
        q_idx, kv_idx = torch.meshgrid(torch.arange(q_len), torch.arange(kv_len), indexing="ij")
        flex = mask_mod(torch.full_like(q_idx, s), torch.zeros_like(q_idx), q_idx, kv_idx)
        torch.testing.assert_close(flex, bottom_right_mask(point, q_len, kv_len, "cpu"))


def test_bench_tree_point_bias_and_baseline_mask_agree():
    """The tree verify point's qq_bias (ours, vLLM) and the boolean mask its SDPA baseline gets hide the
    same keys: the reference with the bias equals dense attention under the mask, per sequence."""
    import reference
    from benchmarks.baselines import bottom_right_mask

    point = _point(f"verify-tree{len(shapes.VERIFY_TREE)}-bs8-L8192").scaled(256)
    x = build_inputs(point, 1, "cpu", torch.float32)
    out = reference.unified_attention(x.q[0], x.k_cache, x.v_cache, torch.empty_like(x.q[0]), x.cu_seqlens_q,
                                      x.max_seqlen_q, x.seqused_k, x.max_seqlen_k, x.softmax_scale, True, (-1, -1),
                                      x.block_tables[0], 0.0, None, None, None, qq_bias=x.qq_bias)
    q_len, kv_len = point.seqs[0]
    mask = bottom_right_mask(point, q_len, kv_len, "cpu")
    assert not mask[:, kv_len - q_len:].tril().all(), "the tree hides no new token: the point tests no tree"
    k, v = x.dense_kv(0, list(range(point.num_seqs)))
    group = point.num_q_heads // point.num_kv_heads
    for s, (start, end) in enumerate(x.token_ranges()):
        q = x.q[0][start:end].transpose(0, 1)  # [heads, q_len, d]
        ks, vs = (t[s].transpose(0, 1).repeat_interleave(group, 0) for t in (k, v))
        dense = torch.nn.functional.scaled_dot_product_attention(q, ks, vs, attn_mask=mask, scale=x.softmax_scale)
        torch.testing.assert_close(out[start:end], dense.transpose(0, 1), rtol=1e-5, atol=1e-5)
