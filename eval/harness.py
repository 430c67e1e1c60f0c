"""lm-eval's own command line, with this package's models registered.

lm-eval discovers models only through its registry, which nothing outside lm-eval fills
unless imported; this entry point imports ``eval.lm`` and hands over to lm-eval's CLI::

    python -m eval.harness run --model paged-attention \\
        --model_args pretrained=tiny,backend=kernel,data_dir=../shared/data/gsm8k \\
        --include_path eval/tasks --tasks gsm8k_offline \\
        --metadata '{"data_dir": "../shared/data/gsm8k"}' --limit 4 --num_fewshot 1
"""

from __future__ import annotations

import eval as _pkg  # noqa: F401  (first: Triton interpreter switch on GPU-less machines)

from . import lm as _models  # noqa: F401  (registers paged-attention and gsm8k-oracle)


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
