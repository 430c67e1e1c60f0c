#!/usr/bin/env bash
# Download lm-eval and the dependencies the GPU machine lacks as wheels into .whl/ (git-ignored),
# so the accuracy job can run there with no network:
#
#   bash eval/gpu_wheels.sh            # on a machine with PyPI access
#   (carry .whl to the GPU machine)
#   python -m pip install --no-index --no-deps .whl/*.whl
#
# The GPU machine has Python 3.12 with torch, triton, transformers, tokenizers, numpy,
# safetensors, huggingface_hub, pyyaml, tqdm and jinja2 preinstalled. What lm-eval imports
# beyond those on the path this job uses (checked with `python -X importtime`):
#   lm_eval -> sacrebleu (portalocker, tabulate, colorama, lxml), dill, pandas (python-dateutil,
#   six), requests (urllib3, certifi, charset-normalizer, idna), pytablewriter (DataProperty,
#   mbstrdecoder, chardet, pathvalidate, tabledata, tcolorpy, typepy, pytz), jinja2/markupsafe.
# Hugging Face `datasets` is deliberately NOT carried: it needs pyarrow (~45 MB). lm-eval only
# imports it; the offline task never calls it, and eval/_compat stands in for it (see there).
# Unused lm-eval requirements (evaluate, scikit-learn, rouge-score, nltk, sqlitedict,
# word2number, more-itertools) are left out for the same reason: --no-deps install.
#
# PYVER=3.11 fetches the same versions for this machine's interpreter, to test the set here.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${PYVER:-3.12}"
DEST="${DEST:-.whl}"
mkdir -p "$DEST"
PACKAGES=(
  lm_eval==0.4.13
  sacrebleu==2.6.0 portalocker==4.4.2 tabulate==0.10.0 colorama==0.4.6 lxml==6.1.3
  dill==0.4.1
  pandas==3.1.1 python-dateutil==2.9.0.post0 six==1.17.0 pytz==2026.6
  requests==2.34.2 urllib3==2.7.0 certifi==2026.5.20 charset-normalizer==3.4.7 idna==3.20
  pytablewriter==1.2.1 DataProperty==1.1.1 mbstrdecoder==1.1.5 chardet==6.0.0.post1
  pathvalidate==3.3.1 tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5
  jinja2==3.1.6 markupsafe==3.0.3
)
for pkg in "${PACKAGES[@]}"; do
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$DEST" "$pkg"
done
ls -1 "$DEST"
du -sh "$DEST"
