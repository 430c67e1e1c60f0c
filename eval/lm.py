"""lm-eval models: a Hugging Face causal LM on one attention backend, and a gold-answer oracle.

``paged-attention`` (``PagedAttentionLM``) is usable wherever lm-eval takes a model name, e.g.
``python -m eval.harness run --model paged-attention --model_args backend=kernel,pretrained=...``
(lm-eval's own CLI with this package imported) or ``lm_eval.simple_evaluate(model=...)``.
``gsm8k-oracle`` answers every gsm8k question with its gold solution; it exists to prove that the
data, prompt and filters are wired right (it must score 1.0 on both filters).
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict

from . import setup

setup()  # the device, before lm_eval imports triton (through transformers)

import torch  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402
from tqdm import tqdm  # noqa: E402

from . import attention  # noqa: E402
from .device import default_device, resolve_dtype  # noqa: E402
from .engine import Engine  # noqa: E402

log = logging.getLogger(__name__)

TINY = "tiny"


def _truthy(value) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on")


def load_train_docs(data_dir: str | None) -> list[dict]:
    """gsm8k's training split, from a local folder when one is given, else the standard dataset."""
    from .tasks import gsm8k_data

    if data_dir or os.environ.get(gsm8k_data.DATA_DIR_ENV):
        return gsm8k_data.read_split(gsm8k_data.resolve_data_dir(data_dir), "train")
    import datasets

    return [dict(row) for row in datasets.load_dataset("openai/gsm8k", "main", split="train")]


def load_model_and_tokenizer(pretrained: str, dtype: torch.dtype, device: str, data_dir: str | None = None,
                             attn_implementation: str = "sdpa", trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .tiny_model import ensure_tiny_model

    path = str(ensure_tiny_model(load_train_docs(data_dir))) if pretrained == TINY else pretrained
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code
    )
    model.to(device).eval()
    return model, tokenizer, path


set_backend = attention.set_backend


@register_model("paged-attention")
class PagedAttentionLM(LM):
    """Greedy generation and teacher-forced scoring through ``eval.engine.Engine``.

    model_args: ``pretrained`` (``tiny`` = the embedded default model, or a name/path),
    ``backend`` (kernel | reference | sdpa), ``dtype`` (auto | float32 | float16 | bfloat16),
    ``device``, ``batch_size``, ``block_size``, ``max_gen_toks``, ``max_length``, ``seed``,
    ``data_dir`` (training split for the tiny model's tokenizer), ``reference_precision``
    (float64 | native), ``break_kernel`` (none | scale | drop-last-block, debug only) and
    ``break_mapping`` (none | sinks | softcap | window, debug only).
    """

    def __init__(self, pretrained=TINY, backend: str = "kernel", dtype="auto", device=None, batch_size=8,
                 block_size: int = 16, max_gen_toks: int = 256, max_length: int | None = None, seed: int = 0,
                 data_dir: str | None = None, reference_precision: str = "float64", break_kernel: str = "none",
                 break_mapping: str = "none", tokenizer=None, trust_remote_code=False, **unused):
        super().__init__()
        for key in ("max_batch_size",):
            unused.pop(key, None)
        if unused:
            log.info("paged-attention: ignoring model args %s", sorted(unused))
        if backend not in attention.BACKENDS:
            raise ValueError(f"backend must be one of {attention.BACKENDS}, got {backend!r}")
        device = str(device or default_device())
        if device.startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's CLI passes device=cuda unless told otherwise.
            log.warning("paged-attention: no CUDA device, running on cpu")
            device = "cpu"
        if isinstance(pretrained, str):
            # eager loads for every architecture (sdpa is refused by e.g. Gemma 2 and gpt-oss);
            # the backend is switched right after.
            model, tokenizer, self.model_path = load_model_and_tokenizer(
                pretrained, resolve_dtype(dtype, device), device, data_dir,
                attn_implementation="sdpa" if backend == "sdpa" else "eager",
                trust_remote_code=_truthy(trust_remote_code),
            )
        else:  # an already loaded model (the CLI loads once and switches backends)
            model, self.model_path = pretrained, getattr(pretrained, "name_or_path", "<model>")
            if tokenizer is None:
                raise ValueError("pass tokenizer= together with a loaded model")
        self.model, self.tokenizer, self.backend = model, tokenizer, backend
        attention.configure(reference_precision=reference_precision, break_mode=break_kernel,
                            break_mapping=break_mapping)
        set_backend(model, backend)
        self._device = torch.device(device)
        self.batch_size = int(str(batch_size).split(":")[0]) if str(batch_size) != "auto" else 8
        self.max_gen_toks = int(max_gen_toks)
        cfg_len = getattr(model.config, "max_position_embeddings", 2048)
        self.max_length = int(max_length) if max_length else int(cfg_len)
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.engine = Engine(model, backend, block_size=int(block_size), seed=int(seed), pad_id=pad_id)
        # context text -> its greedy Generation (tokens, log-probs, choices, margins)
        self.generations: dict = {}

    # -- tokenization (mirrors lm-eval's HFLM so prompts tokenize the way lm-eval users expect)

    @property
    def eot_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    def tok_encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=False)

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "tokenizer").replace("/", "__")

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # Trailing context whitespace belongs to the continuation, as in lm-eval's HFLM.
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        if not context:
            ctx = [self.prefix_token_id]
            cont = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            return ctx, cont
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return ctx, whole[len(ctx):]

    def _truncate(self, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        budget = self.max_length + 1
        if len(ctx) + len(cont) > budget:
            keep = budget - len(cont)
            if keep < 1:
                raise ValueError("continuation longer than the model's context")
            ctx = ctx[-keep:]
        return ctx, cont

    # -- scoring

    def score_pairs(self, pairs: list[tuple[str, str]], desc: str = "scoring") -> list[tuple[torch.Tensor, bool]]:
        """Per-token log-probs and greedy flag of each ``(context, continuation)`` text pair."""
        encoded = [self._truncate(*self._encode_pair(c, x)) for c, x in pairs]
        order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
        results: list = [None] * len(encoded)
        with tqdm(total=len(order), desc=f"{desc} [{self.backend}]", disable=not order) as bar:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                scored = self.engine.score([encoded[i] for i in chunk])
                for i, res in zip(chunk, scored):
                    results[i] = res
                bar.update(len(chunk))
        return results

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        scored = self.score_pairs([req.args for req in requests], desc="loglikelihood")
        out = []
        for req, (lp, greedy) in zip(requests, scored):
            value = (float(lp.sum()), greedy)
            self.cache_hook.add_partial("loglikelihood", req.args, value)
            out.append(value)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for req in requests:
            (text,) = req.args
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tokenizer(text, add_special_tokens=False)["input_ids"],
                    prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1,
                )
            ]
            scored = self.engine.score([(list(c), list(x)) for c, x in windows])
            out.append(float(sum(float(lp.sum()) for lp, _ in scored)))
        return out

    # -- generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            groups[json.dumps(req.args[1], sort_keys=True, default=str)].append(i)
        results: list = [None] * len(requests)
        with tqdm(total=len(requests), desc=f"generate [{self.backend}]", disable=disable_tqdm) as bar:
            for indices in groups.values():
                self._generate_group(requests, indices, results, bar)
        return results

    def _generate_group(self, requests, indices, results, bar) -> None:
        kwargs = dict(requests[indices[0]].args[1] or {})
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        eos_text = self.tok_decode([self.eot_token_id]) if self.eot_token_id is not None else None
        if eos_text and eos_text not in until:
            until.append(eos_text)
        max_gen = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
        if kwargs.pop("do_sample", False) or float(kwargs.pop("temperature", 0.0) or 0.0) > 0:
            raise ValueError("paged-attention generates greedily only (do_sample=False, temperature=0)")
        prompts = {}
        for i in indices:
            ctx = self.tok_encode(requests[i].args[0])
            prompts[i] = ctx[-max(1, self.max_length - max_gen):]
        order = sorted(indices, key=lambda i: -len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]

            def finished(row: int, generated: list[int]) -> bool:
                if self.eot_token_id is not None and generated[-1] == self.eot_token_id:
                    return True
                tail = self.tok_decode(generated[-32:])
                return any(stop in tail for stop in until)

            gens = self.engine.generate([prompts[i] for i in chunk], max_gen, finished)
            for i, gen in zip(chunk, gens):
                text = self.tok_decode(gen.tokens)
                for stop in until:
                    text = text.split(stop)[0]
                results[i] = text
                self.generations[requests[i].args[0]] = gen
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
            bar.update(len(chunk))

    def force(self, contexts: list[str], token_lists: list[list[int]], desc: str = "forced decode"):
        """Feed each context's given tokens through prefill + decode steps; ``Generation`` per row.

        This is how another backend's generation is replayed through this one: the same
        serving path (split-KV decode), but every step's input is fixed, so the two backends'
        log-probs and greedy choices can be compared token by token even where a near-tie made
        their free generations part ways.
        """
        prompts = [self.tok_encode(c) for c in contexts]
        prompts = [p[-max(1, self.max_length - len(t)):] for p, t in zip(prompts, token_lists)]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list = [None] * len(prompts)
        with tqdm(total=len(order), desc=f"{desc} [{self.backend}]", disable=not order) as bar:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                gens = self.engine.generate([prompts[i] for i in chunk], 0, forced=[token_lists[i] for i in chunk])
                for i, gen in zip(chunk, gens):
                    results[i] = gen
                bar.update(len(chunk))
        return results

    def attention_calls(self) -> dict[str, int]:
        """How often the paged backend ran each kernel path (empty for sdpa)."""
        return dict(self.engine.call_counts)


@register_model("gsm8k-oracle")
class GoldOracleLM(LM):
    """Answers each gsm8k prompt with the gold solution of its (last) question.

    model_args: ``data_dir`` (local gsm8k folder; else the standard dataset is used).
    """

    def __init__(self, data_dir: str | None = None, **unused):
        super().__init__()
        from .tasks import gsm8k_data

        if data_dir or os.environ.get(gsm8k_data.DATA_DIR_ENV):
            docs = gsm8k_data.read_split(gsm8k_data.resolve_data_dir(data_dir), "test")
        else:
            import datasets

            docs = [dict(r) for r in datasets.load_dataset("openai/gsm8k", "main", split="test")]
        self.gold = {d["question"].strip(): d["answer"] for d in docs}

    def _answer(self, context: str) -> str:
        question = context.rsplit("Question:", 1)[-1].rsplit("\nAnswer:", 1)[0].strip()
        if question not in self.gold:
            raise KeyError(f"oracle: prompt's last question is not in the gold data: {question[:80]!r}")
        # The prompt ends with "Answer:", so the model's continuation starts with a space.
        return " " + self.gold[question]

    def generate_until(self, requests, disable_tqdm: bool = False):
        out = []
        for req in requests:
            text = self._answer(req.args[0])
            for stop in (req.args[1] or {}).get("until", []) or []:
                text = text.split(stop)[0]
            out.append(text)
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return [(0.0 if self._answer(r.args[0]).strip() == r.args[1].strip() else -1e9, True) for r in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("the oracle only answers gsm8k questions")
