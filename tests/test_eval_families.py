"""Model families (``eval/families.py``) and the attention mapping (``eval/mapping.py``).

Per family, on the same random weights: our paged backends (kernel, reference) against
transformers' own attention (the family's sdpa or eager), log-prob per token, through a
prefill and through replayed decode steps. Each feature the mapping carries (sinks, softcap,
window) is shown to matter: dropping it breaks parity for the family that uses it. Every
refusal (unknown keyword, chunked / bidirectional / unstated window mask) is shown to fire.

CPU sizes: 0-shot-length prompts, 2 rows, a few decode steps; the gsm8k training split
(``../shared/data/gsm8k`` or ``$GSM8K_DATA_DIR``) trains the shared tokenizer, else skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e .[eval])")
pytest.importorskip("transformers", reason="transformers is not installed (pip install -e .[eval])")

pytestmark = pytest.mark.accuracy

REPO = Path(__file__).resolve().parents[1]
# fp32 on CPU: correct backends agree to ~1e-4 nats per token (measured <= 7e-5); a dropped
# feature moves them by 0.1 to several nats.
TOKEN_TOL = 1e-3


@pytest.fixture(scope="session")
def train_docs(data_dir):
    from eval.tasks import gsm8k_data

    return gsm8k_data.read_split(data_dir, "train")


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pav-families")


_MODELS: dict = {}


def _family(name, train_docs, cache_root):
    """(model, tokenizer) of family ``name`` at CPU scale, loaded through its saved folder."""
    if name not in _MODELS:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from eval import attention, families

        attention.register()
        path = families.ensure_family_model(name, "cpu", train_docs, root=cache_root)
        stock = families.FAMILIES[name].stock
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=stock).eval()
        _MODELS[name] = (model, AutoTokenizer.from_pretrained(path))
    return _MODELS[name]


def _pairs(tok, train_docs):
    # Contexts longer than every family's 32-token CPU window, so the window bites.
    rows = []
    for doc, n_ctx, n_cont in ((train_docs[0], 200, 60), (train_docs[3], 140, 40)):
        ctx = tok("Question: " + doc["question"][:n_ctx] + "\nAnswer:")["input_ids"]
        cont = tok(" " + doc["answer"][:n_cont], add_special_tokens=False)["input_ids"]
        rows.append((ctx, cont))
    return rows


def _logprobs(model, tok, backend: str, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the continuations: teacher-forced prefill, then replayed decode."""
    from eval.engine import Engine

    engine = Engine(model, backend, pad_id=tok.pad_token_id)
    prefill = torch.cat([lp for lp, _ in engine.score(pairs)])
    forced = [cont[:6] for _, cont in pairs]
    gens = engine.generate([ctx for ctx, _ in pairs], 0, forced=forced)
    decode = torch.tensor([lp for g in gens for lp in g.logprobs])
    return prefill, decode


_STOCK_LOGPROBS: dict = {}


def _gap(model, tok, backend, stock, pairs) -> float:
    """Largest per-token |d log p| between ``backend`` and ``stock``, prefill and decode."""
    if id(model) not in _STOCK_LOGPROBS:  # transformers' attention is never broken: compute it once
        _STOCK_LOGPROBS[id(model)] = _logprobs(model, tok, stock, pairs)
    a, b = _logprobs(model, tok, backend, pairs), _STOCK_LOGPROBS[id(model)]
    return max(float((a[i] - b[i]).abs().max()) for i in range(2))


RUNNABLE = ("llama3", "qwen2", "mistral", "gemma2", "gemma3", "gpt-oss", "llama4")


@pytest.mark.parametrize("backend", ["reference", "kernel"])
@pytest.mark.parametrize("name", RUNNABLE)
def test_family_parity_with_transformers_attention(name, backend, train_docs, cache_root):
    from eval import families

    model, tok = _family(name, train_docs, cache_root)
    gap = _gap(model, tok, backend, families.FAMILIES[name].stock, _pairs(tok, train_docs))
    assert gap <= TOKEN_TOL, f"{name}: {backend} vs {families.FAMILIES[name].stock}: max |dlogp| {gap:.3g}"


# Which family needs which feature: dropping it must break parity there.
FEATURE_USERS = [("gpt-oss", "sinks"), ("gemma2", "softcap"), ("mistral", "window"), ("gemma2", "window"),
                 ("gemma3", "window"), ("gpt-oss", "window"), ("llama4", "chunk")]


@pytest.mark.parametrize(("name", "mode"), FEATURE_USERS, ids=[f"{n}-{m}" for n, m in FEATURE_USERS])
def test_dropping_a_feature_breaks_parity(name, mode, train_docs, cache_root):
    """The parity check above fails when the mapping loses the feature (the s_aux bug, etc.)."""
    from eval import attention, families

    model, tok = _family(name, train_docs, cache_root)
    attention.configure(break_mapping=mode)
    try:
        gap = _gap(model, tok, "reference", families.FAMILIES[name].stock, _pairs(tok, train_docs))
    finally:
        attention.configure(break_mapping="none")
    assert gap > 10 * TOKEN_TOL, f"{name}: dropping {mode} moved log-probs by only {gap:.3g}"


def test_families_have_their_published_geometry(train_docs, cache_root):
    from eval import families

    expect = {  # name: (queries per KV head, head size, layer pattern, softcap, sinks)
        "llama3": (4, 128, None, None, False), "qwen2": (7, 64, None, None, False),
        "mistral": (4, 128, "all-sliding", None, False), "gemma2": (2, 256, "S F", 50.0, False),
        "gemma3": (4, 256, "S S S S S F", None, False), "gpt-oss": (8, 64, "S F", None, True),
        "llama4": (5, 128, "C C C F", None, False),
    }
    short = {"sliding_attention": "S", "full_attention": "F", "chunked_attention": "C"}
    for name, (ratio, head, pattern, softcap, sinks) in expect.items():
        model, _ = _family(name, train_docs, cache_root)
        cfg = model.config
        assert cfg.num_attention_heads // cfg.num_key_value_heads == ratio, name
        assert cfg.head_dim == head, name
        types = getattr(cfg, "layer_types", None)
        if pattern == "all-sliding":
            assert cfg.sliding_window == families.FAMILIES[name].window
        elif pattern and "C" in pattern:
            assert " ".join(short[t] for t in types) == pattern, name
            assert cfg.attention_chunk_size == families.FAMILIES[name].window, name
        elif pattern:
            assert " ".join(short[t] for t in types) == pattern, name
            assert cfg.sliding_window == families.FAMILIES[name].window
        else:
            assert getattr(cfg, "sliding_window", None) is None, name
        assert getattr(cfg, "attn_logit_softcapping", None) == softcap, name
        assert any(n.endswith("sinks") for n, _ in model.named_parameters()) == sinks, name
    # GPU scale keeps the published head counts.
    assert families.FAMILIES["gpt-oss"].heads("gpu") == (64, 8)
    assert families.FAMILIES["qwen2"].heads("cpu") == (14, 2)


def test_family_weights_are_seeded(train_docs, cache_root):
    from eval.families import WeightInit
    from eval.tiny_model import seeded_state_dict

    model, _ = _family("gpt-oss", train_docs, cache_root)
    a, b = seeded_state_dict(model, WeightInit(1234)), seeded_state_dict(model, WeightInit(1234))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(seeded_state_dict(model, WeightInit(1235))["model.layers.0.self_attn.sinks"],
                           a["model.layers.0.self_attn.sinks"])


# -- refusals: what the kernel cannot express is an error naming model, layer and argument


class _Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from transformers import LlamaConfig

        self.config = LlamaConfig(num_attention_heads=4)
        self.layer_idx, self.scaling, self.is_causal = 3, 0.25, True


def test_every_keyword_is_carried():
    from eval.mapping import map_arguments

    sinks = torch.arange(4, dtype=torch.bfloat16)
    args = map_arguments(_Layer(), 4, 16, scaling=0.5, softcap=50.0, sliding_window=128, s_aux=sinks,
                         position_ids=torch.zeros(1), use_cache=False, output_attentions=False)
    assert args.softmax_scale == 0.5 and args.softcap == 50.0 and args.window_size == (127, 0)
    assert args.sinks.dtype == torch.float32 and torch.equal(args.sinks, sinks.float())
    assert map_arguments(_Layer(), 4, 16).softmax_scale == 0.25  # scaling=None: the layer's own


@pytest.mark.parametrize(("kwargs", "argument"), [
    ({"chunk_size": 8192}, "chunk_size"),  # a keyword nobody maps
    ({"s_aux": torch.zeros(3)}, "s_aux"),  # wrong sink count
    ({"dropout": 0.1}, "dropout"),
    ({"is_causal": False}, "is_causal"),
    ({"output_attentions": True}, "output_attentions"),
    ({"sliding_window": 0}, "sliding_window"),
    ({"softcap": -1.0}, "softcap"),
])
def test_unexpressible_keywords_are_refused(kwargs, argument):
    from eval.mapping import UnsupportedAttention, map_arguments

    with pytest.raises(UnsupportedAttention, match=rf"^llama layer 3: {argument}: "):
        map_arguments(_Layer(), 4, 16, **kwargs)


def _request(fn):
    from eval.mapping import MaskRequest

    return MaskRequest(None, fn)


def test_mask_request_accepts_what_the_kernel_computes():
    from transformers.masking_utils import causal_mask_function, sliding_window_causal_mask_function

    from eval.mapping import KernelArgs

    _request(causal_mask_function).check(_Layer(), KernelArgs(1.0, (-1, -1), 0.0, None), 40, "cpu")
    _request(sliding_window_causal_mask_function(8)).check(_Layer(), KernelArgs(1.0, (7, 0), 0.0, None), 40, "cpu")


@pytest.mark.parametrize("kind", ["window-unstated", "window-off-by-one", "chunked", "bidirectional"])
def test_mask_request_refuses_other_patterns(kind):
    from transformers import masking_utils as mu

    from eval.mapping import KernelArgs, UnsupportedAttention

    fn, window = {
        "window-unstated": (mu.sliding_window_causal_mask_function(8), (-1, -1)),
        "window-off-by-one": (mu.sliding_window_causal_mask_function(8), (8, 0)),
        "chunked": (mu.chunked_causal_mask_function(8, torch.zeros(1, dtype=torch.long)), (-1, -1)),
        "bidirectional": (mu.bidirectional_mask_function, (-1, -1)),
    }[kind]
    with pytest.raises(UnsupportedAttention, match=r"^llama layer 3: attention_mask: "):
        _request(fn).check(_Layer(), KernelArgs(1.0, window, 0.0, None), 40, "cpu")


def _tiny_random(model_type: str, **fields):
    from transformers import AutoConfig, AutoModelForCausalLM

    from eval import attention

    attention.register()
    cfg = AutoConfig.for_model(model_type, vocab_size=300, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=fields.pop("num_hidden_layers", 2), num_attention_heads=4,
                               num_key_value_heads=1, head_dim=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                               **fields)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()


@pytest.mark.parametrize("model_case", ["llama4-wrong-chunk", "gemma3-bidirectional"])
def test_models_needing_other_masks_are_refused(model_case, monkeypatch):
    """A bidirectional Gemma 3 ends in an error, not plain causal; so does a Llama 4 layer whose
    chunks the mapping gets wrong (the mask check compares them with the model's mask)."""
    from eval import mapping
    from eval.engine import Engine
    from eval.mapping import UnsupportedAttention

    if model_case.startswith("llama4"):
        model = _tiny_random("llama4_text", num_hidden_layers=4, attention_chunk_size=8, intermediate_size_mlp=128,
                             num_local_experts=1)
        chunk_of = mapping.attention_chunk
        monkeypatch.setattr(mapping, "attention_chunk", lambda module: None if chunk_of(module) is None else 9)
        match = r"llama4_text layer 0: attention_mask: .*kernel: chunks of 9.*first difference at query 8, key 0"
    else:
        model = _tiny_random("gemma3_text", sliding_window=8, use_bidirectional_attention=True)
        match = r"gemma3_text layer 0: is_causal: "
    with pytest.raises(UnsupportedAttention, match=match):
        Engine(model, "reference", pad_id=0).score([(list(range(3, 23)), [5, 6, 7])])


def test_llama4_chunked_layers_match_transformers_attention():
    """Chunks of 8: a right-padded scoring batch and a left-padded generation whose first row is
    the padded one (chunks count from a row's first real token): the paged reference equals eager."""
    from eval.engine import Engine

    model = _tiny_random("llama4_text", num_hidden_layers=4, attention_chunk_size=8, intermediate_size_mlp=128,
                         num_local_experts=1)
    pairs = [(list(range(30, 37)), [8, 9, 10, 11]), (list(range(3, 23)), [5, 6, 7, 8])]

    def logprobs(backend):
        engine = Engine(model, backend, pad_id=0)
        prefill = torch.cat([lp for lp, _ in engine.score(pairs)])
        gens = engine.generate([ctx for ctx, _ in pairs], 0, forced=[cont for _, cont in pairs])
        return prefill, torch.tensor([lp for g in gens for lp in g.logprobs])

    for ours, stock in zip(logprobs("reference"), logprobs("eager")):
        assert float((ours - stock).abs().max()) <= TOKEN_TOL


def test_mask_without_request_is_refused():
    """A mask that bypassed the registered mask function cannot say its pattern: refused."""
    from eval import attention
    from eval.mapping import UnsupportedAttention
    from eval.paged_cache import PagedKVCache

    cache = PagedKVCache(1, 1, 16, 4, 8, torch.float32, "cpu")
    session = attention.PagedSession(cache)
    q = torch.zeros(1, 4, 3, 16)
    with session.step(cache.plan_step([cache.new_sequence()], [3], False)):
        with pytest.raises(UnsupportedAttention, match="attention_mask: expected the paged mask request"):
            attention.paged_attention_forward("reference", _Layer(), q, q[:, :1], q[:, :1], torch.ones(1, 3))


# -- the CLI


def _cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "eval.gsm8k", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_help_documents_every_option_once():
    from eval import gsm8k

    text = _cli("--help").stdout
    assert "(default: None)" not in text
    for action in gsm8k.build_parser()._actions:
        assert action.help, f"{action.option_strings} has no help"
    for option in ("--limit", "--num-fewshot", "--max-gen-toks", "--batch-size", "--device"):
        block = text.split("\n  " + option, 1)[1].split("\n  --", 1)[0]
        assert block.count("default") == 1, f"{option}: {block}"


@pytest.mark.parametrize("argv", [["--limit", "-1"], ["--limit", "0"], ["--batch-size", "x"], ["--num-fewshot", "-2"]])
def test_bad_numbers_are_usage_errors(argv):
    proc = _cli(*argv)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"argument {argv[0]}" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("mode", ["none", "sinks"])
def test_family_gate_end_to_end(mode, data_dir, cache_root, tmp_path, monkeypatch):
    """``--family gpt-oss`` through lm-eval: passes as is, fails (exit 1) with its sinks dropped.

    The kernel backend's call is the reference here to keep CPU time short; the real kernel's
    parity per family is the test above.
    """
    from eval import attention, gsm8k

    monkeypatch.setenv("PAV_CACHE_DIR", str(cache_root))
    monkeypatch.setattr(attention, "_kernel_fn", lambda: attention._reference_fn("native"))
    report_path = tmp_path / "report.json"
    try:
        rc = gsm8k.main(["--data-dir", str(data_dir), "--family", "gpt-oss", "--limit", "2", "--max-gen-toks", "8",
                         "--no-self-check", "--break-mapping", mode, "--output", str(report_path)])
    finally:
        attention.configure(break_mapping="none")
    report = json.loads(report_path.read_text())
    fam = report["families"]["gpt-oss"]
    assert fam["run"]["stock_attention"] == "eager"
    verdicts = {p["trusted"]: p["passed"] for p in fam["parity"]}
    if mode == "none":
        assert rc == gsm8k.EXIT_PASS and verdicts == {"reference": True, "eager": True}
    else:
        # Both paged backends lose the sinks: they agree with each other, only eager catches it.
        assert rc == gsm8k.EXIT_GATE_FAILED and verdicts == {"reference": True, "eager": False}
        assert report["verdict"] == "FAIL"
