"""lm-eval's own command line, with this package's models registered.

lm-eval discovers models only through its registry, which nothing outside lm-eval fills
unless imported; this entry point lets lm-eval's CLI parse the arguments (its parser imports
neither torch nor transformers, so ``--help`` answers at once), then imports ``eval.lm`` and
runs the command::

    python -m eval.harness run --model paged-attention \\
        --model_args pretrained=tiny,backend=kernel,data_dir=../shared/data/gsm8k \\
        --include_path eval/tasks --tasks gsm8k_offline \\
        --metadata '{"data_dir": "../shared/data/gsm8k"}' --limit 4 --num_fewshot 1
"""

from __future__ import annotations


def main() -> None:
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    # lm-eval's cli_evaluate, with the registration between parsing and running.
    setup_logging()
    parser = HarnessCLI()
    args = parser.parse_args()
    from . import lm  # noqa: F401  (registers paged-attention and gsm8k-oracle)

    parser.execute(args)


if __name__ == "__main__":
    main()
