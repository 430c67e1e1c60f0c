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
from dataclasses import dataclass
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
                 is_finished: Callable[[int, list[int]], bool]) -> list[list[int]]:
        """Greedy continuation of each prompt; ``is_finished(i, generated)`` stops row ``i``."""
        n = len(prompts)
        generated: list[list[int]] = [[] for _ in range(n)]
        if max_new_tokens <= 0:
            return generated
        ids, mask = pad_batch(prompts, self.pad_id, left=True, device=self.device)
        state = self._new_state([len(p) + max_new_tokens for p in prompts])
        seq_ids = [state.cache.new_sequence() for _ in prompts] if self.paged else None
        live = list(range(n))  # batch row -> prompt index
        batch = Batch(ids, mask, _positions(mask, ids.shape[1]))
        is_decode = False
        while True:
            logits = self._forward(state, batch, seq_ids, is_decode)
            next_tokens = logits[:, -1].float().argmax(dim=-1).tolist()
            keep = []
            for row, token in enumerate(next_tokens):
                idx = live[row]
                generated[idx].append(token)
                if not (len(generated[idx]) >= max_new_tokens or is_finished(idx, generated[idx])):
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
        return generated
