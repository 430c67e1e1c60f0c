"""``python -m eval.gsm8k``: gsm8k through lm-eval on several attention backends, plus the parity gate.

Runs the pipeline self-check (gold-answer oracle must score 1.0), then the model once per
backend on the same problems and prompts, teacher-forces the gold solutions through each
backend, prints one table per backend and a parity section per (kernel, trusted backend)
pair, writes a JSON report, and exits non-zero when the self-check or the gate fails.

Exit status: 0 gate passed, 1 gate failed, 2 self-check failed (or bad usage), 3 crashed.
"""

from __future__ import annotations

import eval as _pkg  # noqa: F401  (first: turns on the Triton interpreter when there is no GPU)

import argparse
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from . import parity, task
from .attention import BACKENDS, BREAK_MODES
from .device import default_device, has_cuda, resolve_dtype

EXIT_PASS, EXIT_GATE_FAILED, EXIT_SELF_CHECK_FAILED, EXIT_CRASHED = 0, 1, 2, 3
BREAK_ENV = "PAV_BREAK_KERNEL"

# CPU runs go through the Triton interpreter (~10 ms per KV tile per program): the CPU defaults
# keep an end-to-end run of the tiny model within a few minutes; GPU defaults are the nightly's.
CPU_DEFAULTS = {"limit": 3, "max_gen_toks": 16, "batch_size": 4}
GPU_DEFAULTS = {"limit": 500, "max_gen_toks": 256, "batch_size": 32}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.gsm8k", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pretrained", default="tiny",
                   help="HF model name or folder; 'tiny' = the embedded seeded Llama (no network, no weights)")
    p.add_argument("--backends", default="kernel,reference,sdpa", help=f"comma-separated subset of {BACKENDS}")
    p.add_argument("--trusted", default=None,
                   help="backends the kernel is judged against (default: every non-kernel backend run)")
    p.add_argument("--limit", type=int, default=None, help="problems (default: %s on CPU, %s on GPU)"
                   % (CPU_DEFAULTS["limit"], GPU_DEFAULTS["limit"]))
    p.add_argument("--num-fewshot", type=int, default=5)
    p.add_argument("--max-gen-toks", type=int, default=None, help="generation budget per problem (default: %s on "
                   "CPU, %s on GPU)" % (CPU_DEFAULTS["max_gen_toks"], GPU_DEFAULTS["max_gen_toks"]))
    p.add_argument("--dtype", default="auto", help="auto = bfloat16 on GPU, float32 on CPU (interpreter)")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--block-size", type=int, default=16, help="paged KV cache block size")
    p.add_argument("--data-dir", default=None,
                   help="folder with gsm8k test.jsonl/train.jsonl (or $GSM8K_DATA_DIR); default: the hub dataset")
    p.add_argument("--seed", type=int, default=0, help="block-table shuffle seed")
    p.add_argument("--reference-precision", default="float64", choices=("float64", "native"))
    p.add_argument("--break-kernel", default=os.environ.get(BREAK_ENV, "none"), choices=BREAK_MODES,
                   help=f"debug: corrupt the kernel backend to see the gate fail (or ${BREAK_ENV})")
    p.add_argument("--no-self-check", dest="self_check", action="store_false")
    p.add_argument("--output", default="artifacts/gsm8k_report.json", help="JSON report path")
    p.add_argument("--verbose", action="store_true", help="lm-eval's own logging")
    args = p.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown or not args.backends:
        p.error(f"unknown backends {unknown}; choose from {BACKENDS}")
    args.device = args.device or default_device()
    defaults = GPU_DEFAULTS if str(args.device).startswith("cuda") else CPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _versions() -> dict:
    import transformers
    import triton

    try:
        from importlib.metadata import version

        lm_eval_version = version("lm_eval")
    except Exception:  # noqa: BLE001
        lm_eval_version = "unknown"
    return {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
            "transformers": transformers.__version__, "lm_eval": lm_eval_version}


def _device_name(device: str) -> str:
    if str(device).startswith("cuda") and has_cuda():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, Triton interpreter)"


def _em(results: dict, task_name: str) -> dict[str, tuple[float, float]]:
    row = results["results"][task_name]
    out = {}
    for f in task.FILTERS:
        em = float(row[f"exact_match,{f}"])
        se = row.get(f"exact_match_stderr,{f}", float("nan"))
        out[f] = (em, float(se) if se not in (None, "N/A") else float("nan"))
    return out


def _evaluate(model, choice: task.TaskChoice, args) -> dict:
    import lm_eval

    return lm_eval.simple_evaluate(
        model=model, tasks=[choice.name], task_manager=task.task_manager(choice), limit=args.limit,
        num_fewshot=args.num_fewshot, log_samples=True, gen_kwargs={"max_gen_toks": args.max_gen_toks},
    )


def run_self_check(choice: task.TaskChoice, args) -> dict:
    from .lm import GoldOracleLM

    oracle = GoldOracleLM(data_dir=str(choice.data_dir) if choice.data_dir else None)
    res = _evaluate(oracle, choice, args)
    em = _em(res, choice.name)
    return {"metrics": {f: em[f][0] for f in task.FILTERS}, "passed": all(em[f][0] == 1.0 for f in task.FILTERS)}


def run_backend(model, tokenizer, backend: str, choice: task.TaskChoice, args):
    from .lm import PagedAttentionLM

    lm = PagedAttentionLM(
        pretrained=model, tokenizer=tokenizer, backend=backend, device=args.device, batch_size=args.batch_size,
        block_size=args.block_size, max_gen_toks=args.max_gen_toks, seed=args.seed,
        reference_precision=args.reference_precision, break_kernel=args.break_kernel,
    )
    start = time.time()
    res = _evaluate(lm, choice, args)
    samples = [s for s in res["samples"][choice.name]]
    generations, answers, prompts = {}, {f: {} for f in task.FILTERS}, {}
    for s in samples:
        doc = int(s["doc_id"])
        generations[doc] = s["resps"][0][0]
        answers[s["filter"]][doc] = s["filtered_resps"][0]
        prompts[doc] = (s["arguments"][0][0], s["target"])
    docs = sorted(prompts)
    # The gold solution follows "Answer:" after the task's one-space target delimiter.
    scored = lm.score_pairs([(prompts[d][0], " " + prompts[d][1]) for d in docs], desc="teacher-forced")
    result = parity.BackendResult(
        backend=backend, metrics=_em(res, choice.name), generations=generations, answers=answers,
        token_logprobs={d: lp.tolist() for d, (lp, _) in zip(docs, scored)}, runtime_s=time.time() - start,
        attention_calls=lm.attention_calls(),
    )
    own = {d: lm.generations.get(prompts[d][0]) for d in docs}
    samples_out = [{"doc_id": d, "generation": generations[d], **{f: answers[f].get(d) for f in task.FILTERS},
                    "gold_loglik": float(sum(result.token_logprobs[d]))} for d in docs]
    return result, {"samples": samples_out, "lm": lm, "prompts": prompts, "own": own}


def replay_anchor(results: dict, extra: dict, anchor: str) -> None:
    """Feed the anchor backend's generations through every other backend's decode path.

    Where a backend's own greedy generation already equals the anchor's, its own generation
    was exactly that replay (same prompt, same tokens fed back step by step), so it is reused;
    only the problems where the generations parted ways are run again.
    """
    prompts = extra[anchor]["prompts"]
    docs = [d for d in sorted(prompts) if extra[anchor]["own"].get(d) is not None]
    anchor_gen = {d: extra[anchor]["own"][d] for d in docs}
    results[anchor].forced = dict(anchor_gen)
    for name, result in results.items():
        if name == anchor:
            continue
        own = extra[name]["own"]
        forced = {d: own[d] for d in docs if own.get(d) is not None and own[d].tokens == anchor_gen[d].tokens}
        todo = [d for d in docs if d not in forced]
        if todo:
            start = time.time()
            gens = extra[name]["lm"].force([prompts[d][0] for d in todo], [anchor_gen[d].tokens for d in todo],
                                           desc=f"replay {anchor}")
            forced.update(zip(todo, gens))
            result.runtime_s += time.time() - start
            result.attention_calls = extra[name]["lm"].attention_calls()
        result.forced = forced


def _fmt(x: float, spec: str = ".4f") -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def render(report: dict) -> str:
    lines = []
    meta = report["run"]
    lines.append(f"gsm8k ({meta['task']}, {meta['num_fewshot']}-shot, limit {meta['limit']}, "
                 f"max_gen_toks {meta['max_gen_toks']}) | model {meta['model']} | {meta['dtype']} on {meta['device']}")
    if meta["break_kernel"] != "none":
        lines.append(f"!! kernel backend deliberately broken: {meta['break_kernel']}")
    sc = report.get("self_check")
    if sc:
        lines.append(f"self-check (gold oracle): strict {_fmt(sc['metrics']['strict-match'])} "
                     f"flexible {_fmt(sc['metrics']['flexible-extract'])} -> {'PASS' if sc['passed'] else 'FAIL'}")
    lines.append("")
    header = f"{'backend':<10} {'exact_match strict':>22} {'exact_match flexible':>22} {'time':>8}  attention calls"
    lines.append(header)
    lines.append("-" * len(header))
    for name, b in report["backends"].items():
        cells = [f"{_fmt(b['metrics'][f][0])} ± {_fmt(b['metrics'][f][1])}" for f in task.FILTERS]
        calls = " ".join(f"{k}={v}" for k, v in sorted(b["attention_calls"].items())) or "(stock)"
        lines.append(f"{name:<10} {cells[0]:>22} {cells[1]:>22} {b['runtime_s']:>7.1f}s  {calls}")
    for p in report["parity"]:
        lines.append("")
        lines.append(f"parity: {p['candidate']} vs {p['trusted']} ({p['num_problems']} problems)")
        lines.append(f"  identical generations           {_fmt(p['identical_generations'], '.3f')}")
        lines.append(f"  identical answers strict/flex   {_fmt(p['identical_answers']['strict-match'], '.3f')} / "
                     f"{_fmt(p['identical_answers']['flexible-extract'], '.3f')}")
        lines.append(f"  max |d loglik| per problem      {_fmt(p['max_seq_loglik_diff'], '.3g')}  (teacher-forced gold)")
        lines.append(f"  max |d logp| per token          {_fmt(p['max_token_logprob_diff'], '.3g')}  (prefill)")
        lines.append(f"  max |d logp| per token          {_fmt(p['decode_max_logprob_diff'], '.3g')}  "
                     f"(decode, {p['decode_tokens']} replayed steps)")
        for c in p["checks"]:
            op = ">=" if c["name"].startswith("identical") else "<="
            verdict = "ok" if c["passed"] else "FAIL"
            lines.append(f"  {c['name']:<31} {_fmt(c['value'], '.3g'):>9} {op} {_fmt(c['limit'], '.3g'):<9} "
                         f"{verdict:<4} ({c['note']})")
        lines.append(f"  => {'PASS' if p['passed'] else 'FAIL'}")
    lines.append("")
    lines.append(f"GATE: {report['verdict']}")
    return "\n".join(lines)


def _pairs(backends: list[str], trusted: list[str] | None) -> list[tuple[str, str]]:
    if "kernel" in backends:
        judges = [b for b in (trusted or backends) if b != "kernel" and b in backends]
        return [("kernel", t) for t in judges]
    # No kernel run: still compare what was run (e.g. reference vs sdpa) so the job says something.
    return [(backends[i], backends[j]) for i in range(len(backends)) for j in range(i + 1, len(backends))]


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.verbose:
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        logging.getLogger("lm-eval").setLevel(logging.ERROR)
        import transformers

        transformers.logging.set_verbosity_error()
    try:
        choice = task.choose(args.data_dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SELF_CHECK_FAILED
    dtype = resolve_dtype(args.dtype, args.device)
    if args.device == "cpu" and "kernel" in args.backends and dtype == torch.bfloat16:
        print("warning: bf16 under the Triton interpreter is unreliable (triton #11584); use float32/float16 on CPU",
              file=sys.stderr)

    from .lm import load_model_and_tokenizer

    report: dict = {"command": " ".join(shlex.quote(a) for a in [sys.executable, "-m", "eval.gsm8k", *sys.argv[1:]])
                    if argv is None else "python -m eval.gsm8k " + " ".join(shlex.quote(a) for a in argv),
                    "versions": _versions()}
    self_check = None
    if args.self_check:
        print("== self-check: gold-answer oracle through the same task and filters", flush=True)
        self_check = run_self_check(choice, args)
    print(f"== loading {args.pretrained} ({dtype}, {args.device})", flush=True)
    model, tokenizer, model_path = load_model_and_tokenizer(
        args.pretrained, dtype, args.device, str(choice.data_dir) if choice.data_dir else None)

    backend_results, backend_extra = {}, {}
    for backend in args.backends:
        print(f"== {backend}", flush=True)
        result, extra = run_backend(model, tokenizer, backend, choice, args)
        backend_results[backend], backend_extra[backend] = result, extra

    trusted = [t.strip() for t in args.trusted.split(",")] if args.trusted else None
    pairs = _pairs(args.backends, trusted)
    anchor = pairs[0][1] if pairs else args.backends[0]
    if pairs:
        print(f"== replaying {anchor}'s generations through the other backends", flush=True)
        replay_anchor(backend_results, backend_extra, anchor)
    pair_results = [parity.compare(backend_results[a], backend_results[b], dtype)
                    for a, b in pairs]
    gate_ok = all(p.passed for p in pair_results)
    self_ok = self_check is None or self_check["passed"]
    verdict = "PASS" if gate_ok and self_ok else ("FAIL (self-check)" if not self_ok else "FAIL")
    if not pair_results and self_ok:
        verdict = "N/A (one backend: nothing to compare)"
    report.update({
        "run": {"task": choice.name, "data": choice.source, "limit": args.limit, "num_fewshot": args.num_fewshot,
                "max_gen_toks": args.max_gen_toks, "model": args.pretrained, "model_path": model_path,
                "dtype": str(dtype).removeprefix("torch."), "device": _device_name(args.device),
                "batch_size": args.batch_size, "block_size": args.block_size, "seed": args.seed,
                "reference_precision": args.reference_precision, "break_kernel": args.break_kernel,
                "replay_anchor": anchor},
        "self_check": self_check,
        "backends": {
            name: {"metrics": r.metrics, "runtime_s": r.runtime_s, "attention_calls": r.attention_calls,
                   "samples": backend_extra[name]["samples"]}
            for name, r in backend_results.items()
        },
        "parity": [p.to_dict() for p in pair_results],
        "verdict": verdict,
    })
    text = render(report)
    print()
    print(text)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"report: {out}")
    if not self_ok:
        return EXIT_SELF_CHECK_FAILED
    return EXIT_PASS if gate_ok else EXIT_GATE_FAILED


def cli() -> None:
    # A crash must not read as "gate failed" (Python's own exit status for an exception is 1).
    try:
        code = main()
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        code = EXIT_CRASHED
    sys.exit(code)


if __name__ == "__main__":
    cli()
