"""Model families: small random-weight checkpoints with each architecture's attention geometry.

Each family is a transformers config whose attention is the published model's (query heads
per KV head, head size, window pattern, softcap, sinks, rope) on a small width and depth, so
the parity gate exercises every attention feature those models need. Weights are random
(drawn from a seeded generator by ``tiny_model.seeded_state_dict``, not by transformers' init,
so they do not depend on the transformers version), the tokenizer is the tiny model's (vocab
sized to it), and the folder is written with ``save_pretrained`` into the tiny model's cache:
the job then loads it through ``--pretrained PATH`` exactly as a real checkpoint.

Two scales of one family share everything but a few sizes:

- ``cpu``: the kernels run in the Triton interpreter, whose cost grows with the number of KV
  heads (one program per KV head and tile); KV heads are cut to ``cpu_kv_heads`` while the
  queries per KV head (what GQA indexing depends on), head size and everything else stay;
- ``gpu``: the published query/KV head counts.

Windows are shortened to ``window`` (CPU) / ``gpu_window`` tokens where the published window
(noted in ``published``) is longer than the contexts this job produces: a window that never
bites tests nothing, and the kernel's code path is the same for any width.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT_VERSION = 1
HIDDEN, INTERMEDIATE = 64, 128
MAX_POSITIONS = 131072  # Llama 3.1 / gpt-oss rope scaling wants a long context to scale to
# Per-matrix std = GAIN / sqrt(fan_in): the tiny model's 0.3 at fan-in 64. Attention scores
# well away from uniform (a corrupted attention must move the logits), not saturated either.
GAIN = 2.4
SINK_STD = 1.0  # sinks are logits: of the order of the scores, so they take a real share


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str  # transformers config class key (AutoConfig.for_model)
    q_heads: int  # published
    kv_heads: int  # published
    head_dim: int
    layers: int
    features: str  # what of the attention this family exercises, for the table
    published: str  # the published model and its geometry, for the record
    stock: str = "sdpa"  # transformers' own attention it is judged against (sdpa or eager)
    cpu_kv_heads: int = 1
    window: int | None = None  # CPU scale
    gpu_window: int | None = None
    extra: dict = field(default_factory=dict)  # config fields of this architecture
    real_scale: bool = False  # GPU only: published width and depth too
    pending: str | None = None  # why it cannot run yet

    def heads(self, scale: str) -> tuple[int, int]:
        if scale == "gpu":
            return self.q_heads, self.kv_heads
        return self.cpu_kv_heads * (self.q_heads // self.kv_heads), self.cpu_kv_heads

    def sliding_window(self, scale: str) -> int | None:
        return self.gpu_window if scale == "gpu" else self.window


def _alternating(layers: int, every: int) -> list[str]:
    """``every - 1`` sliding layers, then a full one (2 = alternate, 6 = Gemma 3's 5:1)."""
    return ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(layers)]


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("llama3", "llama", 32, 8, 128, 2, "GQA 4:1, llama3 rope",
           "Llama-3.1-8B: 32 q / 8 kv heads, head 128, rope llama3 theta 5e5",
           extra={"rope_parameters": LLAMA3_ROPE}),
    Family("qwen2", "qwen2", 14, 2, 64, 2, "GQA 7:1, qkv bias",
           "Qwen2.5-0.5B: 14 q / 2 kv heads, head 64, theta 1e6", cpu_kv_heads=2,
           extra={"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}),
    Family("mistral", "mistral", 32, 8, 128, 2, "sliding window (every layer)",
           "Mistral-7B-v0.1: 32 q / 8 kv heads, head 128, window 4096, theta 1e4",
           window=32, gpu_window=256,
           extra={"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}),
    Family("gemma2", "gemma2", 8, 4, 256, 2, "attn softcap 50, alternating windows, q scalar",
           "gemma-2-2b: 8 q / 4 kv heads, head 256, window 4096 on alternate layers, softcap 50/30",
           stock="eager", window=32, gpu_window=256,
           extra={"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "query_pre_attn_scalar": 256}),
    Family("gemma3", "gemma3_text", 4, 1, 256, 6, "5:1 local/global, local rope 1e4, qk-norm",
           "gemma-3-1b: 4 q / 1 kv head, head 256, window 512 on 5 of 6 layers, rope 1e6 global / 1e4 local",
           window=32, gpu_window=512,
           extra={"query_pre_attn_scalar": 256,
                  "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                      "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}),
    Family("gpt-oss", "gpt_oss", 64, 8, 64, 2, "attention sinks, alternating windows, yarn rope, MoE",
           "gpt-oss-20b: 64 q / 8 kv heads, head 64, window 128 on alternate layers, sinks, yarn x32",
           stock="eager", window=32, gpu_window=128,
           extra={"num_local_experts": 4, "num_experts_per_tok": 2,
                  "rope_parameters": {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0,
                                      "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                                      "original_max_position_embeddings": 4096}}),
    # window / gpu_window are the attention chunk here (published 8192: longer than these contexts).
    Family("llama4", "llama4_text", 40, 8, 128, 4, "chunked attention (3 of 4 layers), NoPE layers, MoE",
           "Llama-4-Scout: 40 q / 8 kv heads, head 128, attention chunk 8192 on the RoPE layers",
           window=32, gpu_window=512,
           extra={"intermediate_size_mlp": INTERMEDIATE, "num_local_experts": 4, "num_experts_per_tok": 1,
                  "interleave_moe_layer_step": 2,
                  "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}),
    Family("llama3.1-8b", "llama", 32, 8, 128, 32, "real scale: 8B shapes, bf16",
           "Llama-3.1-8B published config: hidden 4096, 32 layers, 32 q / 8 kv heads, head 128",
           real_scale=True, extra={"rope_parameters": LLAMA3_ROPE, "hidden_size": 4096,
                                   "intermediate_size": 14336}),
)}

RUNNABLE = tuple(n for n, f in FAMILIES.items() if f.pending is None and not f.real_scale)
REAL_SCALE = tuple(n for n, f in FAMILIES.items() if f.real_scale)


def config_for(family: Family, scale: str, tokenizer):
    """The transformers config of ``family`` at ``scale`` (``cpu`` or ``gpu``)."""
    from transformers import AutoConfig

    q_heads, kv_heads = family.heads(scale)
    fields = dict(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_hidden_layers=family.layers, num_attention_heads=q_heads, num_key_value_heads=kv_heads,
        head_dim=family.head_dim, max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    fields.update(family.extra)
    window = family.sliding_window(scale)
    if family.model_type == "llama4_text":
        fields["attention_chunk_size"] = window  # chunked layers: those with RoPE (3 of 4)
    elif window is not None:
        fields["sliding_window"] = window
        if family.model_type in ("gemma2", "gpt_oss"):
            fields["layer_types"] = _alternating(family.layers, 2)
        elif family.model_type == "gemma3_text":
            fields["layer_types"] = _alternating(family.layers, 6)
    elif family.model_type in ("mistral", "qwen2"):
        fields["sliding_window"] = None
    if family.model_type == "qwen2":
        # Qwen2's head size is hidden / heads: width follows the head geometry.
        fields["hidden_size"] = q_heads * family.head_dim
    config = AutoConfig.for_model(family.model_type, **fields)
    config.architectures = None
    return config


def _fan_in(shape: tuple[int, ...]) -> int:
    # nn.Linear / embeddings store [out, in]; gpt-oss's expert banks are [experts, in, out].
    return shape[-1] if len(shape) == 2 else shape[-2]


@dataclass(frozen=True)
class WeightInit:
    """A family's random weights, drawn by ``tiny_model.seeded_state_dict``."""

    seed: int

    def std(self, name: str, shape: tuple[int, ...]) -> float:
        if len(shape) >= 2:
            return GAIN / math.sqrt(_fan_in(shape))
        return SINK_STD if name.endswith("sinks") else 0.3


def _fingerprint(family: Family, scale: str, tokenizer_dir: Path) -> str:
    h = hashlib.sha256(json.dumps([asdict(family), scale, FORMAT_VERSION, GAIN, SINK_STD], sort_keys=True).encode())
    h.update((tokenizer_dir / "tokenizer.json").read_bytes())
    return h.hexdigest()[:12]


def build(family: Family, scale: str, tokenizer_dir: Path, path: Path, seed: int = 1234) -> Path:
    """Write the family's checkpoint (config, random weights, the shared tokenizer) into ``path``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .tiny_model import seeded_state_dict

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = config_for(family, scale, tokenizer)
    device = "cuda" if family.real_scale and torch.cuda.is_available() else "cpu"
    # bf16 at real scale: 8B parameters in fp32 would be 32 GB to draw and write.
    dtype = torch.bfloat16 if family.real_scale else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(seeded_state_dict(model, WeightInit(seed), device))
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "family.json").write_text(json.dumps({"family": asdict(family), "scale": scale, "seed": seed}, indent=2))
    del model
    try:  # a rename makes the folder appear complete or not at all
        tmp.rename(path)
    except OSError:
        if not (path / "config.json").exists():
            raise
    return path


def ensure_family_model(name: str, scale: str, train_docs: list[dict], root: Path | None = None) -> Path:
    """Path of the cached checkpoint of family ``name`` at ``scale``, built on first use."""
    from .tiny_model import cache_root, ensure_tiny_model

    family = FAMILIES[name]
    if family.pending:
        raise ValueError(f"family {name} is pending: {family.pending}")
    root = cache_root() if root is None else Path(root)
    tokenizer_dir = ensure_tiny_model(train_docs, root=root)
    path = root / f"family-{name}-{scale}-{_fingerprint(family, scale, tokenizer_dir)}"
    if not (path / "config.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        build(family, scale, tokenizer_dir, path)
    return path
