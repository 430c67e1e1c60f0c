"""Load gsm8k from local ``test.jsonl``/``train.jsonl`` files, with no network and no HF datasets.

This file is referenced from ``gsm8k_offline.yaml`` (``!function gsm8k_data.load``), which lm-eval
imports by file path, so it must stay self-contained (no package-relative imports).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DATA_DIR_ENV = "GSM8K_DATA_DIR"
# The project's shared data beside the checkout: <checkout>/../shared/data/gsm8k.
SHARED_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "gsm8k"
SPLITS = ("train", "test")


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder given, else ``$GSM8K_DATA_DIR``, else ``SHARED_DATA_DIR``; it must hold
    ``test.jsonl`` and ``train.jsonl``."""
    path = Path(data_dir or os.environ.get(DATA_DIR_ENV) or SHARED_DATA_DIR).expanduser().resolve()
    missing = [f"{s}.jsonl" for s in SPLITS if not (path / f"{s}.jsonl").is_file()]
    if missing:
        raise FileNotFoundError(f"no gsm8k data at {path} (missing {', '.join(missing)}): pass --data-dir DIR "
                                f"(or metadata data_dir=DIR) or set {DATA_DIR_ENV}")
    return path


class DocList(list):
    """A list of docs with the one ``datasets.Dataset`` attribute lm-eval reads from a split.

    lm-eval looks up ``features`` to tell column names from templates; everything else it does
    with a split (indexing, iteration, ``len``) a list already does.
    """

    @property
    def features(self) -> dict[str, None]:
        return dict.fromkeys(self[0]) if self else {}


def read_split(path: Path, split: str) -> DocList:
    docs = DocList()
    with open(path / f"{split}.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                docs.append({"question": row["question"], "answer": row["answer"]})
    return docs


def load(data_dir: str | None = None, **_metadata) -> dict[str, DocList]:
    """lm-eval ``custom_dataset`` hook: ``{"train": [...], "test": [...]}`` as plain lists of dicts."""
    path = resolve_data_dir(data_dir)
    return {split: read_split(path, split) for split in SPLITS}
