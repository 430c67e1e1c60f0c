"""The embedded default model: a tiny seeded Llama plus a byte-level BPE trained on gsm8k.

It exists so the accuracy job runs on a machine with no network and no weights. Its accuracy
is ~0 by construction; what it checks is backend parity and the whole pipeline. The model is
written to a cache folder as an ordinary Hugging Face checkpoint on first use, so every later
run (and ``--pretrained <that folder>``) loads exactly the same weights and tokenizer.

Weights are drawn by this module from a seeded ``torch.Generator`` rather than by transformers'
own ``_init_weights``: that keeps them identical across transformers versions (the GPU machine
runs a different one than CI).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

TINY_MODEL_NAME = "tiny-llama"
CACHE_ENV = "PAV_CACHE_DIR"

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|pad|>"


@dataclass(frozen=True)
class TinySpec:
    """Everything that determines the tiny model's files; hashed into the cache folder name."""

    vocab_size: int = 4096
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    max_positions: int = 8192
    # Large enough that attention scores are far from uniform: with the 0.02 that real models
    # start from, every head averages its context and a corrupted attention barely moves the
    # logits, which would make the parity gate toothless on this model.
    init_std: float = 0.3
    seed: int = 1234
    format_version: int = 1

    def std(self, name: str, shape: tuple[int, ...]) -> float:
        return self.init_std


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "paged-attention-verify"


def _train_texts(train_docs: list[dict]) -> list[str]:
    # The prompt format's fixed words are included so they tokenize compactly.
    return [f"Question: {d['question']}\nAnswer: {d['answer']}\n\n" for d in train_docs]


def _fingerprint(spec: TinySpec, train_docs: list[dict]) -> str:
    h = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode())
    for text in _train_texts(train_docs):
        h.update(text.encode())
    return h.hexdigest()[:12]


def train_tokenizer(train_docs: list[dict], vocab_size: int):
    """Byte-level BPE: any text round-trips exactly, so extraction sees what the model wrote."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_train_texts(train_docs), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, clean_up_tokenization_spaces=False
    )


def _llama_config(spec: TinySpec, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def seeded_state_dict(model: torch.nn.Module, spec, device="cpu") -> dict[str, torch.Tensor]:
    """Weights from a generator seeded with ``spec.seed``: norm weights 1, every other float tensor
    normal with standard deviation ``spec.std(name, shape)`` (``TinySpec``, ``families.WeightInit``)."""
    gen = torch.Generator(device=device).manual_seed(spec.seed)
    state = {}
    for name, param in sorted(model.state_dict().items()):
        if not param.is_floating_point():
            state[name] = param
        elif name.endswith("norm.weight"):
            # 1 for x * w norms; Gemma's x * (1 + w) then doubles, harmless.
            state[name] = torch.ones_like(param)
        else:
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32, device=device)
            state[name] = (noise * spec.std(name, param.shape)).to(param.dtype)
    return state


def build(path: Path, train_docs: list[dict], spec: TinySpec = TinySpec()) -> Path:
    """Write the tiny checkpoint (config, safetensors, tokenizer) into ``path``."""
    from transformers import LlamaForCausalLM

    tokenizer = train_tokenizer(train_docs, spec.vocab_size)
    config = _llama_config(spec, tokenizer)
    model = LlamaForCausalLM(config)
    model.load_state_dict(seeded_state_dict(model, spec))
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "tiny_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    # A rename makes the folder appear complete or not at all, even with concurrent builders.
    try:
        tmp.rename(path)
    except OSError:
        if not (path / "config.json").exists():
            raise
    return path


def ensure_tiny_model(train_docs: list[dict], spec: TinySpec = TinySpec(), root: Path | None = None) -> Path:
    """Path of the cached tiny checkpoint, building it first if it is not there yet."""
    root = cache_root() if root is None else Path(root)
    path = root / f"{TINY_MODEL_NAME}-{_fingerprint(spec, train_docs)}"
    if not (path / "config.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        build(path, train_docs, spec)
    return path
