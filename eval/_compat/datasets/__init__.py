"""Import-time stand-in for Hugging Face ``datasets``; see eval/_compat/README.md."""

from __future__ import annotations

import enum

from . import config  # noqa: F401

__version__ = "0.0.0+pav-offline-stub"
IS_PAV_STUB = True


class DownloadMode(enum.Enum):
    REUSE_DATASET_IF_EXISTS = "reuse_dataset_if_exists"
    REUSE_CACHE_IF_EXISTS = "reuse_cache_if_exists"
    FORCE_REDOWNLOAD = "force_redownload"


class Dataset(list):
    """Only for type annotations; offline tasks hand lm-eval plain lists."""


class DatasetDict(dict):
    pass


def load_dataset(*args, **kwargs):
    raise RuntimeError(
        "Hugging Face `datasets` is not installed (this is the offline stand-in): "
        "run with --data-dir DIR / GSM8K_DATA_DIR, or install datasets"
    )
