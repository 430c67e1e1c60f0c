"""gsm8k accuracy job: a real model's answers with our kernels vs a trusted attention.

``python -m eval.gsm8k`` runs it; see ``eval/gsm8k.py``. Importing this package imports nothing
heavy, so commands parse their arguments first; ``setup()`` then chooses the device before
anything imports triton (transformers and lm-eval import it as a side effect): without a CUDA
GPU that turns on the Triton interpreter, and ``TRITON_INTERPRET`` only takes effect if it is
set before triton is imported.
"""

import importlib.machinery
import os
import sys

_COMPAT = os.path.join(os.path.dirname(__file__), "_compat")


class _DatasetsStandIn:
    """Finds ``datasets`` in ``_compat`` when no other finder can: last on ``sys.meta_path``.

    lm-eval imports Hugging Face `datasets` unconditionally; on a machine provisioned from
    carried wheels it is absent, and this stand-in lets the offline task run. Looked up only
    when something imports ``datasets``, so a real installation always wins.
    """

    @staticmethod
    def find_spec(name, path=None, target=None):
        return importlib.machinery.PathFinder.find_spec(name, [_COMPAT]) if name == "datasets" else None


sys.meta_path.append(_DatasetsStandIn())


def setup() -> str:
    """Choose the device once per process ("cpu": the Triton interpreter, or "cuda"); call it
    before importing triton, transformers or lm_eval. Later calls return the same device."""
    from attention_suite import device as suite_device

    return suite_device.ensure()
