"""``python -m eval.gsm8k``: gsm8k through lm-eval on several attention backends, plus the parity gate.

Runs the pipeline self-check (gold-answer oracle must score 1.0), then the model once per
backend on the same problems and prompts, teacher-forces the gold solutions through each
backend, prints one table per backend and a parity section per (kernel, trusted backend)
pair, writes a JSON report, and exits non-zero when the self-check or the gate fails.

With ``--family NAME`` (or ``all``) the model is a random-weight checkpoint of each family in
``eval/families.py`` (built on first use, then loaded through the same path as ``--pretrained``);
one table row per family follows the per-family sections.

Exit status: 0 gate passed, 1 gate failed, 2 self-check failed (or bad usage), 3 crashed.

Arguments are parsed before torch, triton, transformers or lm-eval is imported: ``--help`` and
usage errors answer at once, and ``eval.setup`` picks the device before triton loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import families, setup, task
from .choices import BACKENDS, BREAK_MODES, MAPPING_BREAKS
from .tasks import gsm8k_data

if TYPE_CHECKING:  # annotations only: both import torch
    import torch

    from . import parity

EXIT_PASS, EXIT_GATE_FAILED, EXIT_SELF_CHECK_FAILED, EXIT_CRASHED = 0, 1, 2, 3
BREAK_ENV = "PAV_BREAK_KERNEL"
# "stock" in --backends: transformers' own attention for the model (its family's sdpa or eager).
STOCK = "stock"
BASELINE = "reference-native"  # the same-dtype baseline: measures the noise floor, judges nobody

# CPU runs go through the Triton interpreter (~10 ms per KV tile per program): the CPU defaults
# keep an end-to-end run of the tiny model within a few minutes; GPU defaults are the nightly's.
CPU_DEFAULTS = {"limit": 3, "max_gen_toks": 16, "batch_size": 4, "num_fewshot": 5}
GPU_DEFAULTS = {"limit": 500, "max_gen_toks": 256, "batch_size": 32, "num_fewshot": 5}
# Per family on GPU: 2 batches of 32 sequences, 8-shot prompts (~1.2k tokens) so decode runs
# 32 sequences at ~1.2k-1.5k tokens and every GPU window (128-512) bites.
# Per family on CPU: 0-shot prompts (~40-70 tokens) so the 32-token windows bite and each
# family's kernel run takes seconds, not minutes, in the interpreter.
CPU_FAMILY_DEFAULTS = {"limit": 2, "max_gen_toks": 12, "batch_size": 2, "num_fewshot": 0}
GPU_FAMILY_DEFAULTS = {"limit": 64, "max_gen_toks": 256, "batch_size": 32, "num_fewshot": 8}
PARITY_NOT_ACCURACY = ("random weights score 0 on gsm8k: the gate judges parity (kernel vs reference vs "
                       "transformers' attention), not accuracy")
MODEL_ACCURACY = "exact_match is the model's gsm8k accuracy on each backend; the gate judges parity between them"
# Files our random-weight checkpoints carry (tiny_model.build, families.build).
RANDOM_WEIGHT_MARKERS = ("tiny_spec.json", "family.json")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where the help does not already say it and X is not None."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or "") or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def per_device_help(key: str) -> str:
    """The defaults of ``key`` on CPU and GPU, with and without --family, as the help states them."""

    def pair(cpu: dict, gpu: dict) -> str:
        if cpu[key] == gpu[key]:
            return f"{cpu[key]} on CPU and GPU"
        return f"{cpu[key]} on CPU, {gpu[key]} on GPU"

    return (f"(default: {pair(CPU_DEFAULTS, GPU_DEFAULTS)}; "
            f"with --family {pair(CPU_FAMILY_DEFAULTS, GPU_FAMILY_DEFAULTS)})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.gsm8k", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--pretrained", default="tiny",
                   help="HF model name or folder; 'tiny' = the embedded seeded Llama (no network, no weights)")
    p.add_argument("--family", default=None, choices=(*families.FAMILIES, "all"), metavar="NAME",
                   help="random-weight checkpoint of a model family instead of --pretrained: "
                        f"{', '.join(families.FAMILIES)}, or all")
    p.add_argument("--backends", default=f"kernel,reference,{BASELINE},{STOCK}",
                   help=f"comma-separated subset of {BACKENDS}; '{STOCK}' = transformers' own attention for the "
                        "model (eager for families sdpa cannot run, else sdpa)")
    p.add_argument("--trusted", default=None,
                   help="backends the kernel is judged against (default: every non-kernel backend run)")
    p.add_argument("--limit", type=int_at_least(1), default=None,
                   help=f"problems per model {per_device_help('limit')}")
    p.add_argument("--num-fewshot", type=int_at_least(0), default=None,
                   help=f"solved examples in each prompt {per_device_help('num_fewshot')}")
    p.add_argument("--max-gen-toks", type=int_at_least(1), default=None,
                   help=f"generation budget per problem {per_device_help('max_gen_toks')}")
    p.add_argument("--dtype", default="auto", help="auto = bfloat16 on GPU, float32 on CPU (interpreter)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--batch-size", type=int_at_least(1), default=None,
                   help=f"sequences per prefill / decode batch {per_device_help('batch_size')}")
    p.add_argument("--block-size", type=int_at_least(1), default=16, help="paged KV cache block size")
    p.add_argument("--data-dir", default=None,
                   help=f"folder with gsm8k test.jsonl and train.jsonl (default: ${gsm8k_data.DATA_DIR_ENV}, "
                        f"else {gsm8k_data.SHARED_DATA_DIR})")
    p.add_argument("--seed", type=int, default=0, help="block-table shuffle seed")
    p.add_argument("--reference-precision", default="float64", choices=("float64", "native"),
                   help="precision of the reference backend: float64 golden, or the model dtype")
    p.add_argument("--break-kernel", default=os.environ.get(BREAK_ENV, "none"), choices=BREAK_MODES,
                   help=f"debug: corrupt the kernel backend to see the gate fail (or ${BREAK_ENV})")
    p.add_argument("--break-mapping", default="none", choices=MAPPING_BREAKS,
                   help=f"debug: drop one feature ({' / '.join(m for m in MAPPING_BREAKS if m != 'none')}) between "
                        "transformers' arguments and both paged backends, to see the gate fail for the families "
                        "that use it")
    p.add_argument("--self-check", default=True, action=argparse.BooleanOptionalAction,
                   help="first run the gold-answer oracle that proves the task and filters are wired right "
                        "(--no-self-check skips it)")
    p.add_argument("--output", default="artifacts/gsm8k_report.json", help="JSON report path")
    p.add_argument("--verbose", action="store_true", help="lm-eval's own logging")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in args.backends if b not in (*BACKENDS, STOCK)]
    if unknown or not args.backends:
        p.error(f"unknown backends {unknown}; choose from {(*BACKENDS, STOCK)}")
    if args.family and args.pretrained != "tiny":
        p.error("--family and --pretrained name different models; give one")
    try:
        args.data_dir = gsm8k_data.resolve_data_dir(args.data_dir)
    except FileNotFoundError as exc:
        p.exit(EXIT_SELF_CHECK_FAILED, f"{p.prog}: error: {exc}\n")
    from .device import default_device

    args.device = args.device or default_device()
    on_gpu = str(args.device).startswith("cuda")
    if args.family:
        defaults = GPU_FAMILY_DEFAULTS if on_gpu else CPU_FAMILY_DEFAULTS
    else:
        defaults = GPU_DEFAULTS if on_gpu else CPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _versions() -> dict:
    import torch
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
    import torch

    from .device import has_cuda

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

    oracle = GoldOracleLM(data_dir=str(choice.data_dir))
    res = _evaluate(oracle, choice, args)
    em = _em(res, choice.name)
    return {"metrics": {f: em[f][0] for f in task.FILTERS}, "passed": all(em[f][0] == 1.0 for f in task.FILTERS)}


def run_backend(model, tokenizer, backend: str, choice: task.TaskChoice, args):
    from . import parity
    from .lm import PagedAttentionLM

    lm = PagedAttentionLM(
        pretrained=model, tokenizer=tokenizer, backend=backend, device=args.device, batch_size=args.batch_size,
        block_size=args.block_size, max_gen_toks=args.max_gen_toks, seed=args.seed,
        reference_precision=args.reference_precision, break_kernel=args.break_kernel,
        break_mapping=args.break_mapping,
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


def render(report: dict, gate_label: str = "GATE", accuracy_note: bool = True) -> str:
    """The report as text; ``accuracy_note``: say under the table what its exact_match means."""
    from . import parity

    lines = []
    meta = report["run"]
    lines.append(f"gsm8k ({meta['task']}, {meta['num_fewshot']}-shot, limit {meta['limit']}, "
                 f"max_gen_toks {meta['max_gen_toks']}) | model {meta['model']} | {meta['dtype']} on {meta['device']}")
    if meta["break_kernel"] != "none":
        lines.append(f"!! kernel backend deliberately broken: {meta['break_kernel']}")
    if meta.get("break_mapping", "none") != "none":
        lines.append(f"!! attention mapping deliberately broken: {meta['break_mapping']} dropped (both paged backends)")
    sc = report.get("self_check")
    if sc:
        lines.append(f"self-check (gold oracle): strict {_fmt(sc['metrics']['strict-match'])} "
                     f"flexible {_fmt(sc['metrics']['flexible-extract'])} -> {'PASS' if sc['passed'] else 'FAIL'}")
    lines.append("")
    width = max(len("backend"), *map(len, report["backends"]))
    header = (f"{'backend':<{width}} {'exact_match strict':>22} {'exact_match flexible':>22} {'time':>8}  "
              "attention calls")
    lines.append(header)
    lines.append("-" * len(header))
    for name, b in report["backends"].items():
        cells = [f"{_fmt(b['metrics'][f][0])} ± {_fmt(b['metrics'][f][1])}" for f in task.FILTERS]
        calls = " ".join(f"{k}={v}" for k, v in sorted(b["attention_calls"].items())) or "(stock)"
        lines.append(f"{name:<{width}} {cells[0]:>22} {cells[1]:>22} {b['runtime_s']:>7.1f}s  {calls}")
    if accuracy_note:
        lines.append(PARITY_NOT_ACCURACY if meta.get("random_weights") else MODEL_ACCURACY)
    noise = report.get("noise_floor")
    if noise:
        lines.append("")
        lines.append(f"noise floor ({noise['pair']}): mean |dlogp|/token prefill {_fmt(noise['prefill'], '.3g')}, "
                     f"decode {_fmt(noise['decode'], '.3g')}; limits below are the larger of "
                     f"{parity.TOKEN_TOL_ULPS:g} eps_eff and {parity.NOISE_MULTIPLE:g}x these")
    if report.get("vs_reference"):
        lines.append("each backend vs the float64 reference, mean |dlogp|/token prefill / decode: " + "; ".join(
            f"{name} {_fmt(d['prefill'], '.3g')} / {_fmt(d['decode'], '.3g')}" for name, d in report["vs_reference"].items()))
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
    lines.append(f"{gate_label}: {report['verdict']}")
    return "\n".join(lines)


def _pairs(backends: list[str], trusted: list[str] | None) -> list[tuple[str, str]]:
    if "kernel" in backends:
        judges = [b for b in (trusted or backends) if b not in ("kernel", BASELINE) and b in backends]
        return [("kernel", t) for t in judges]
    # No kernel run: still compare what was run (e.g. reference vs sdpa) so the job says something.
    return [(backends[i], backends[j]) for i in range(len(backends)) for j in range(i + 1, len(backends))]


def select_noise_floor(floors: dict[str, parity.NoiseFloor]) -> parity.NoiseFloor | None:
    """The gate's floor from every backend's distance to the float64 reference: the nearest
    trusted one's, per measure (the kernel, being judged, never sets its own limit)."""
    from . import parity

    return parity.nearest_floor([f for name, f in floors.items() if name != "kernel"])


def is_random_weight(model_path: str) -> bool:
    """Whether the checkpoint is one of ours with seeded random weights (tiny model, families)."""
    return any((Path(model_path) / marker).is_file() for marker in RANDOM_WEIGHT_MARKERS)


def evaluate_model(args, choice: task.TaskChoice, dtype: torch.dtype, pretrained: str, stock: str,
                   label: str) -> dict:
    """One model through every backend, the replay and the gate: a report (no self-check)."""
    from . import parity
    from .lm import load_model_and_tokenizer

    backends = list(dict.fromkeys(stock if b == STOCK else b for b in args.backends))
    print(f"== loading {label} ({dtype}, {args.device})", flush=True)
    model, tokenizer, model_path = load_model_and_tokenizer(
        pretrained, dtype, args.device, str(choice.data_dir),
        attn_implementation="sdpa" if stock == "sdpa" else "eager")

    backend_results, backend_extra = {}, {}
    for backend in backends:
        print(f"== {label}: {backend}", flush=True)
        result, extra = run_backend(model, tokenizer, backend, choice, args)
        backend_results[backend], backend_extra[backend] = result, extra

    trusted = [stock if t.strip() == STOCK else t.strip() for t in args.trusted.split(",")] if args.trusted else None
    pairs = _pairs(backends, trusted)
    anchor = pairs[0][1] if pairs else backends[0]
    if pairs:
        print(f"== replaying {anchor}'s generations through the other backends", flush=True)
        replay_anchor(backend_results, backend_extra, anchor)
    # Every backend's distance from the float64 reference. The noise floor is the nearest trusted
    # backend's (reference-native, stock, ...; never the kernel's own), per measure; the kernel's
    # is a diagnostic.
    golden = backend_results.get("reference")
    floors = {name: parity.noise_floor(golden, r, dtype) for name, r in backend_results.items()
              if golden is not None and name != "reference"}
    noise = select_noise_floor(floors) if "kernel" in backends else None
    vs_golden = {name: {"prefill": f.prefill, "decode": f.decode} for name, f in floors.items()}
    pair_results = [parity.compare(backend_results[a], backend_results[b], dtype, noise) for a, b in pairs]
    gate_ok = all(p.passed for p in pair_results)
    del model
    return {
        "run": {"task": choice.name, "data": choice.source, "limit": args.limit, "num_fewshot": args.num_fewshot,
                "max_gen_toks": args.max_gen_toks, "model": label, "model_path": model_path,
                "random_weights": is_random_weight(model_path),
                "dtype": str(dtype).removeprefix("torch."), "device": _device_name(args.device),
                "batch_size": args.batch_size, "block_size": args.block_size, "seed": args.seed,
                "reference_precision": args.reference_precision, "break_kernel": args.break_kernel,
                "break_mapping": args.break_mapping, "replay_anchor": anchor, "stock_attention": stock},
        "backends": {
            name: {"metrics": r.metrics, "runtime_s": r.runtime_s, "attention_calls": r.attention_calls,
                   "samples": backend_extra[name]["samples"]}
            for name, r in backend_results.items()
        },
        "noise_floor": None if noise is None else dataclasses.asdict(noise),
        "vs_reference": vs_golden,
        "parity": [p.to_dict() for p in pair_results],
        "gate_passed": gate_ok if pair_results else None,
    }


def _verdict(gate_ok: bool | None, self_ok: bool) -> str:
    if not self_ok:
        return "FAIL (self-check)"
    if gate_ok is None:
        return "N/A (one backend: nothing to compare)"
    return "PASS" if gate_ok else "FAIL"


def _family_names(args) -> list[str]:
    return list(families.FAMILIES) if args.family == "all" else [args.family]


def _skip_reason(family: families.Family, on_gpu: bool) -> str | None:
    if family.pending:
        return f"PENDING: {family.pending}"
    if family.real_scale and not on_gpu:
        return "SKIP: real scale (8B parameters) runs on a GPU only; the Triton interpreter would take days"
    return None


def render_family_table(rows: list[dict]) -> str:
    """One row per family: geometry, the gate's numbers against each trusted backend, verdict."""
    header = (f"{'family':<12} {'q/kv x head':<13} {'stock':<6} {'vs reference: pre/dec mean|dlogp|':>34} "
              f"{'vs stock: pre/dec mean|dlogp|':>30} {'flips':>6} {'time':>7}  verdict")
    lines = [header, "-" * len(header)]
    for r in rows:
        if "skip" in r:
            lines.append(f"{r['family']:<12} {r['geometry']:<13} {'':<6} {r['skip']}")
            continue
        cells = {}
        for p in r["parity"]:
            key = "reference" if p["trusted"] == "reference" else "stock"
            cells[key] = f"{_fmt(p['mean_token_logprob_diff'], '.2e')} / {_fmt(p['decode_mean_logprob_diff'], '.2e')}"
        flips = sum(p["confident_flips"] for p in r["parity"])
        lines.append(f"{r['family']:<12} {r['geometry']:<13} {r['stock']:<6} {cells.get('reference', '-'):>34} "
                     f"{cells.get('stock', '-'):>30} {flips:>6} {r['time_s']:>6.0f}s  {r['verdict']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup()
    import torch

    from .device import resolve_dtype

    if not args.verbose:
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        logging.getLogger("lm-eval").setLevel(logging.ERROR)
        import transformers

        transformers.logging.set_verbosity_error()
    choice = task.choose(args.data_dir)
    dtype = resolve_dtype(args.dtype, args.device)
    if args.device == "cpu" and "kernel" in args.backends and dtype == torch.bfloat16:
        print("warning: bf16 under the Triton interpreter is unreliable (triton #11584); use float32/float16 on CPU",
              file=sys.stderr)

    report: dict = {"command": " ".join(shlex.quote(a) for a in [sys.executable, "-m", "eval.gsm8k", *sys.argv[1:]])
                    if argv is None else "python -m eval.gsm8k " + " ".join(shlex.quote(a) for a in argv),
                    "versions": _versions()}
    self_check = None
    if args.self_check:
        print("== self-check: gold-answer oracle through the same task and filters", flush=True)
        self_check = run_self_check(choice, args)
    self_ok = self_check is None or self_check["passed"]

    if args.family:
        gate_ok = _run_families(args, choice, dtype, report, self_check)
    else:
        stock = "sdpa"
        model_report = evaluate_model(args, choice, dtype, args.pretrained, stock, args.pretrained)
        gate_ok = model_report.pop("gate_passed")
        report.update(model_report)
        report["self_check"] = self_check
        report["verdict"] = _verdict(gate_ok, self_ok)
        print()
        print(render(report))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"report: {out}")
    if not self_ok:
        return EXIT_SELF_CHECK_FAILED
    return EXIT_PASS if gate_ok is not False else EXIT_GATE_FAILED


def _run_families(args, choice: task.TaskChoice, dtype: torch.dtype, report: dict, self_check) -> bool | None:
    """Every requested family through ``evaluate_model``; prints their sections and the table."""
    from .lm import load_train_docs

    on_gpu = str(args.device).startswith("cuda")
    scale = "gpu" if on_gpu else "cpu"
    train_docs = load_train_docs(str(choice.data_dir))
    rows, reports, sections = [], {}, []
    for name in _family_names(args):
        family = families.FAMILIES[name]
        skip = _skip_reason(family, on_gpu)
        q, kv = family.heads("gpu" if skip else scale)  # a family that does not run: its published heads
        geometry = f"{q}/{kv} x {family.head_dim}"
        if skip:
            rows.append({"family": name, "geometry": geometry, "skip": skip})
            reports[name] = {"skipped": skip}
            continue
        start = time.time()
        path = families.ensure_family_model(name, scale, train_docs)
        model_report = evaluate_model(args, choice, dtype, str(path), family.stock, f"family {name} ({scale})")
        gate = model_report.pop("gate_passed")
        model_report["verdict"] = _verdict(gate, True)
        model_report["family"] = {"name": name, "features": family.features, "published": family.published,
                                  "scale": scale, "geometry": geometry,
                                  "sliding_window": family.sliding_window(scale)}
        reports[name] = model_report
        sections.append(render(model_report, gate_label=f"gate [{name}]", accuracy_note=False))
        rows.append({"family": name, "geometry": geometry, "stock": family.stock, "parity": model_report["parity"],
                     "time_s": time.time() - start, "verdict": model_report["verdict"], "gate": gate})
    ran = [r["gate"] for r in rows if "gate" in r]
    if any(g is False for g in ran):
        gate_ok = False
    else:
        gate_ok = True if ran and all(ran) else None
    self_ok = self_check is None or self_check["passed"]
    report.update({"self_check": self_check, "families": reports, "verdict": _verdict(gate_ok, self_ok),
                   "run": {"family": args.family, "break_kernel": args.break_kernel,
                           "break_mapping": args.break_mapping, "limit": args.limit,
                           "num_fewshot": args.num_fewshot, "max_gen_toks": args.max_gen_toks,
                           "dtype": str(dtype).removeprefix("torch."), "device": _device_name(args.device)}})
    print()
    for text in sections:
        print(text)
        print()
    if self_check:
        print(f"self-check (gold oracle): strict {_fmt(self_check['metrics']['strict-match'])} "
              f"flexible {_fmt(self_check['metrics']['flexible-extract'])} -> {'PASS' if self_ok else 'FAIL'}")
    if args.break_kernel != "none" or args.break_mapping != "none":
        print(f"!! deliberately broken: kernel={args.break_kernel} mapping={args.break_mapping}")
    print(render_family_table(rows))
    print(PARITY_NOT_ACCURACY)
    print(f"GATE: {report['verdict']}")
    return gate_ok


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
