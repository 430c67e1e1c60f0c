"""Drives a Hugging Face causal LM step by step, as a serving engine would, on one backend.

The same driver serves all three backends so that they differ only in attention:

- ``sdpa``: the model's stock attention with transformers' own ``DynamicCache``;
- ``kernel`` / ``reference``: attention through ``eval.attention`` on our paged cache; the model
  runs with no transformers cache and only this step's tokens.

Every batch is padded (left for generation, right for scoring) and the padding mask is the
only thing telling the attention which positions are real. A generation starts with one prefill
step over the prompts (the 2D kernel path), then decode steps of one token per live sequence
(the split-KV path); finished sequences leave the batch and give their blocks back.
"""

from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from . import attention
from .paged_cache import PagedKVCache


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, S] this step's tokens (padded)
    mask: torch.Tensor  # [B, P + S] 1 for real tokens over the whole history
    positions: torch.Tensor  # [B, S]


def _positions(mask: torch.Tensor, q_len: int) -> torch.Tensor:
    pos = mask.long().cumsum(dim=1) - 1
    return pos[:, -q_len:].clamp(min=0)


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, left: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(list(r), dtype=torch.long)
        mask[i, sl] = 1
    return ids.to(device), mask.to(device)


class Engine:
    def __init__(self, model, backend: str, *, block_size: int = 16, seed: int = 0, pad_id: int = 0):
        if backend not in attention.BACKENDS:
            raise ValueError(f"backend must be one of {attention.BACKENDS}, got {backend!r}")
        self.model, self.backend, self.block_size, self.seed, self.pad_id = model, backend, block_size, seed, pad_id
        cfg = model.config
        self.num_layers = cfg.num_hidden_layers
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        # transformers renamed the cache argument (past_key_values -> cache) in 5.2x.
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._batches = 0
        self.call_counts: Counter = Counter()
        self.last_session: attention.PagedSession | None = None

    @property
    def paged(self) -> bool:
        return self.backend in attention.PAGED_BACKENDS

    def _new_state(self, final_lengths: Sequence[int]):
        if not self.paged:
            from transformers import DynamicCache

            try:
                return DynamicCache(config=self.model.config)
            except TypeError:  # older signature
                return DynamicCache()
        num_blocks = sum(PagedKVCache.blocks_needed(n, self.block_size) for n in final_lengths)
        # A few spare blocks so the free list is a real shuffle even for a single sequence.
        cache = PagedKVCache(
            self.num_layers, self.num_kv_heads, self.head_dim, self.block_size, num_blocks + 4,
            self.dtype, self.device, seed=self.seed + self._batches,
        )
        self._batches += 1
        session = attention.PagedSession(cache, calls=self.call_counts)
        self.last_session = session
        return session

    @torch.inference_mode()
    def _forward(self, state, batch: Batch, seq_ids, is_decode: bool) -> torch.Tensor:
        # Engines of different backends may share one model (loaded once): claim it each step.
        attention.set_backend(self.model, self.backend)
        real = batch.mask[:, -batch.input_ids.shape[1]:].bool()
        if not self.paged:
            out = self.model(
                input_ids=batch.input_ids, attention_mask=batch.mask, position_ids=batch.positions,
                use_cache=True, **{self._cache_arg: state},
            )
            return out.logits
        q_lens = real.sum(dim=1).tolist()
        plan = state.cache.plan_step(seq_ids, q_lens, is_decode)
        with state.step(plan):
            out = self.model(
                input_ids=batch.input_ids, attention_mask=batch.mask, position_ids=batch.positions, use_cache=False,
            )
        return out.logits

    def score(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[torch.Tensor, bool]]:
        """Teacher-forced log-probs of each continuation given its context, in one prefill step.

        Returns, per pair, float32 ``[len(continuation)]`` log-probs and whether the continuation
        is the greedy one. Rows are right-padded.
        """
        for ctx, cont in pairs:
            if not ctx or not cont:
                raise ValueError("score needs a non-empty context and continuation")
        rows = [list(ctx) + list(cont) for ctx, cont in pairs]
        inputs = [r[:-1] for r in rows]
        ids, mask = pad_batch(inputs, self.pad_id, left=False, device=self.device)
        batch = Batch(ids, mask, _positions(mask, ids.shape[1]))
        state = self._new_state([len(r) for r in inputs])
        seq_ids = [state.cache.new_sequence() for _ in inputs] if self.paged else None
        logits = self._forward(state, batch, seq_ids, is_decode=False)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        result = []
        for i, (ctx, cont) in enumerate(pairs):
            n_in, n_cont = len(inputs[i]), len(cont)
            targets = torch.tensor(list(cont), device=self.device)
            window = logprobs[i, n_in - n_cont: n_in]
            lp = window.gather(-1, targets[:, None])[:, 0].cpu()
            greedy = bool((window.argmax(-1) == targets).all())
            result.append((lp, greedy))
        return result

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 is_finished: Callable[[int, list[int]], bool] | None = None,
                 forced: Sequence[Sequence[int]] | None = None) -> list["Generation"]:
        """Greedy continuation of each prompt, one prefill step then one decode step per token.

        ``is_finished(i, generated)`` stops row ``i`` early. With ``forced``, row ``i`` is fed
        ``forced[i]`` instead of its own choices (teacher forcing through the decode path) and
        runs for exactly ``len(forced[i])`` steps; what the model would have chosen, and how
        sure it was, is still recorded.
        """
        n = len(prompts)
        out = [Generation() for _ in range(n)]
        budget = [len(forced[i]) if forced is not None else max_new_tokens for i in range(n)]
        live = [i for i in range(n) if budget[i] > 0]  # batch row -> prompt index
        if not live:
            return out
        ids, mask = pad_batch([prompts[i] for i in live], self.pad_id, left=True, device=self.device)
        state = self._new_state([len(prompts[i]) + budget[i] for i in live])
        seq_ids = [state.cache.new_sequence() for _ in live] if self.paged else None
        batch = Batch(ids, mask, _positions(mask, ids.shape[1]))
        is_decode = False
        while True:
            logits = self._forward(state, batch, seq_ids, is_decode)
            logprobs = torch.log_softmax(logits[:, -1].float(), dim=-1)
            top = logprobs.topk(2, dim=-1)
            if forced is not None:
                chosen = torch.tensor([forced[i][len(out[i].tokens)] for i in live], device=self.device)
            else:
                chosen = top.indices[:, 0]
            chosen_lp = logprobs.gather(-1, chosen[:, None])[:, 0].tolist()
            margins = (top.values[:, 0] - top.values[:, 1]).tolist()
            argmax = top.indices[:, 0].tolist()
            next_tokens = chosen.tolist()
            keep = []
            for row, token in enumerate(next_tokens):
                idx = live[row]
                out[idx].add(token, chosen_lp[row], argmax[row], margins[row])
                done = len(out[idx].tokens) >= budget[idx]
                if not done and forced is None and is_finished is not None:
                    done = is_finished(idx, out[idx].tokens)
                if not done:
                    keep.append(row)
            if not keep:
                break
            if len(keep) < len(live):
                keep_t = torch.tensor(keep, device=self.device)
                if self.paged:
                    for row in range(len(live)):
                        if row not in keep:
                            state.cache.release(seq_ids[row])
                    seq_ids = [seq_ids[r] for r in keep]
                else:
                    state.batch_select_indices(keep_t)
                mask = mask[keep_t]
                next_tokens = [next_tokens[r] for r in keep]
                live = [live[r] for r in keep]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            step_ids = torch.tensor(next_tokens, dtype=torch.long, device=self.device)[:, None]
            batch = Batch(step_ids, mask, _positions(mask, 1))
            is_decode = True
        return out


@dataclass
class Generation:
    """One row's steps: the token fed back, its log-prob, the greedy choice and its margin."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    argmax: list[int] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)  # top-1 minus top-2 log-prob

    def add(self, token: int, logprob: float, argmax: int, margin: float) -> None:
        self.tokens.append(token)
        self.logprobs.append(logprob)
        self.argmax.append(argmax)
        self.margins.append(margin)
