"""Which gsm8k task lm-eval runs: the built-in one, or the same task on local jsonl files.

With a data folder (``--data-dir`` or ``$GSM8K_DATA_DIR``) the task is ``gsm8k_offline`` from
``eval/tasks/gsm8k_offline.yaml``: lm-eval's standard gsm8k config (prompt, target, stops,
strict-match and flexible-extract filters, exact_match) with a ``custom_dataset`` hook that
reads the folder. Without one it is lm-eval's own ``gsm8k`` on the standard dataset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .tasks import gsm8k_data

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
OFFLINE_TASK = "gsm8k_offline"
STANDARD_TASK = "gsm8k"
FILTERS = ("strict-match", "flexible-extract")


@dataclass
class TaskChoice:
    name: str
    data_dir: Path | None

    @property
    def source(self) -> str:
        return str(self.data_dir) if self.data_dir else "openai/gsm8k (Hugging Face hub)"


def choose(data_dir: str | os.PathLike | None = None) -> TaskChoice:
    chosen = data_dir or os.environ.get(gsm8k_data.DATA_DIR_ENV)
    if chosen:
        return TaskChoice(OFFLINE_TASK, gsm8k_data.resolve_data_dir(chosen))
    return TaskChoice(STANDARD_TASK, None)


def task_manager(choice: TaskChoice):
    from lm_eval.tasks import TaskManager

    if choice.data_dir is None:
        return TaskManager()
    # Only our folder is indexed: faster than scanning lm-eval's thousands of task files.
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                       metadata={"data_dir": str(choice.data_dir)})


def builtin_config_path() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent / "gsm8k" / "gsm8k.yaml"
