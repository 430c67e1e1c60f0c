"""gsm8k accuracy job: a real model's answers with our kernels vs a trusted attention.

``python -m eval.gsm8k`` runs it; see ``eval/gsm8k.py``. Importing this package on a machine
without a CUDA GPU turns on the Triton interpreter (``TRITON_INTERPRET=1``) unless the
environment already says otherwise: the flag only takes effect if it is set before triton is
imported, and transformers and lm-eval import triton as a side effect.
"""

import importlib.util
import os
import sys

from .device import ensure_triton_mode

ensure_triton_mode()

# lm-eval imports Hugging Face `datasets` unconditionally; where it is not installed (a machine
# provisioned from carried wheels), an import-time stand-in lets the offline task run.
if importlib.util.find_spec("datasets") is None:
    sys.path.append(os.path.join(os.path.dirname(__file__), "_compat"))
