"""Prefill ceiling: where our paged prefill loses its time, measured on this card.

    python -m benchmarks.ceiling                                   # 4 x 2048 causal, Llama-3.1-8B heads
    python -m benchmarks.ceiling --seqs 1 --seq-len 8192 --impl mine=my_pkg.attention:unified_attention

On the same q/K/V values, in interleaved rounds of CUDA-graph replays (``benchmarks.timing``):
- SDPA cuDNN and flash on contiguous K/V (the sweep's baselines);
- a minimal causal flash kernel (``benchmarks.flash_kernel``) on contiguous K/V, with pointer
  loads (cp.async) or TMA descriptors, at a few tile / warp / stage shapes: what Triton reaches on
  this card without paging and without any of our features;
- ours (``paged_kernels.unified_attention``) and every ``--impl`` peer on paged caches of several block
  sizes (scattered blocks; the largest holds a whole sequence in one block): what paging costs.
Prints microseconds, TFLOP/s over the visible (query, key) pairs and max |diff| against SDPA flash.
"""

from __future__ import annotations

import argparse
import sys

PROG = "python -m benchmarks.ceiling"
# (rows per block, keys per tile, warps, stages) of the minimal kernel.
FLASH_SHAPES = ((128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3))


def _paged(point, k, v, q, block_size: int, device):
    """The point's paged inputs at ``block_size`` holding exactly ``k``/``v``/``q`` (one copy)."""
    import dataclasses

    from .inputs import build_inputs

    inputs = build_inputs(dataclasses.replace(point, block_size=block_size), 1, device)
    seq_len = point.seqs[0][1]
    blocks = seq_len // block_size
    for s in range(point.num_seqs):
        ids = inputs.block_tables[0][s, :blocks].long()
        rows = slice(s * seq_len, (s + 1) * seq_len)
        inputs.k_cache[ids] = k[rows].view(blocks, block_size, *k.shape[1:])
        inputs.v_cache[ids] = v[rows].view(blocks, block_size, *v.shape[1:])
    inputs.q[0].copy_(q)
    return inputs


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--seqs", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--block-sizes", default="16,64,256,0", help="cache block sizes for the paged runs (0: one "
                    "block per sequence)")
    ap.add_argument("--impl", action="append", default=[], metavar="NAME=MODULE:FUNC",
                    help="a peer timed on the paged caches beside ours, as the sweep takes it")
    ap.add_argument("--target-s", type=float, default=0.2, help="device seconds per timed column")
    args = ap.parse_args(argv)
    try:
        args.block_list = [int(b) or args.seq_len for b in args.block_sizes.split(",")]
    except ValueError:
        ap.error(f"--block-sizes: expected comma-separated integers, got {args.block_sizes!r}")
    bad = [b for b in args.block_list if b < 1 or args.seq_len % b]
    if bad or args.seqs < 1 or args.seq_len % 128:
        ap.error(f"--seq-len must be a multiple of 128 and of every block size (got {args.seq_len}, {bad})")
    from .peers import specs_or_exit

    args.impl_specs = specs_or_exit(ap, args.impl)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import triton

    from .baselines import BASELINES, BaselineUnavailable, build_sdpa
    from .flash_kernel import flash_causal
    from .peers import PeerSpec, load_or_exit
    from .shapes import LLAMA, Point
    from .timing import Replayer, require_cuda, time_interleaved

    peers = load_or_exit(PROG, [PeerSpec("ours", "paged_kernels:unified_attention"), *args.impl_specs])
    device = require_cuda()
    seqs, seq_len = args.seqs, args.seq_len
    heads, kv_heads, head = LLAMA["num_q_heads"], LLAMA["num_kv_heads"], LLAMA["head_size"]
    point = Point(name="ceiling", kind="prefill", series="prefill", seqs=((seq_len, seq_len),) * seqs)
    torch.manual_seed(0)
    q = torch.randn(seqs * seq_len, heads, head, device=device, dtype=torch.bfloat16)
    k = torch.randn(seqs * seq_len, kv_heads, head, device=device, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    paged = [_paged(point, k, v, q, block_size, device) for block_size in args.block_list]
    columns: dict[str, tuple] = {}  # name -> (call, output tensor or getter)
    # The sweep's baselines: SDPA on the same values laid out contiguously.
    for name in BASELINES:
        try:
            baseline = build_sdpa(name, paged[0], copies=1)
        except BaselineUnavailable as exc:
            print(f"{name}: {exc}")
            continue
        columns[name] = (baseline.calls()[0], baseline.output)
    for tma in (False, True):
        for block_m, tile, warps, stages in FLASH_SHAPES:
            out = torch.empty_like(q)
            name = f"flash-contiguous-{'tma' if tma else 'ptr'}-m{block_m}-t{tile}-w{warps}-s{stages}"
            columns[name] = (flash_causal(q, k, v, out, seq_len, block_m, tile, warps, stages, tma), out)
    keep = []
    for block_size, inputs in zip(args.block_list, paged):
        for peer in peers:
            name = peer.spec.name
            try:
                calls = peer.build(inputs)
            except Exception as exc:  # noqa: BLE001 - a peer that cannot run is reported, the rest go on
                print(f"{name} block {block_size}: {type(exc).__name__}: {exc}")
                continue
            keep.append(calls)
            columns[f"{name}-paged-block{block_size}"] = (calls.calls[0], inputs.out[0])

    replayers = {}
    for name, (call, _) in columns.items():
        try:
            replayers[name] = Replayer([call])
        except Exception as exc:  # noqa: BLE001 - a column that cannot run is reported, the rest go on
            text = str(exc).strip().splitlines()
            print(f"{name}: {type(exc).__name__}: {text[-1][:200] if text else ''}")
    timings = time_interleaved(replayers, target_s=args.target_s)
    # Outputs after the replays (SDPA's: one more eager call).
    outputs = {name: (out() if callable(out) else out).float() for name, (_, out) in columns.items()
               if name in timings}
    reference = outputs.get("sdpa-flash")
    flops = point.flops()
    dev = torch.cuda.get_device_name(device)
    print(f"\n{dev}: {seqs} x {seq_len} causal, {heads} / {kv_heads} heads of {head}, bf16; torch {torch.__version__}, "
          f"triton {triton.__version__}")
    print(f"{'column':<44} {'us':>9} {'TFLOP/s':>8} {'max|diff|':>10}")
    for name, timing in timings.items():
        diff = (outputs[name] - reference).abs().max().item() if reference is not None else float("nan")
        print(f"{name:<44} {timing.median_us:>9.1f} {flops / timing.median_us / 1e6:>8.1f} {diff:>10.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
