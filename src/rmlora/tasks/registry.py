"""Task names -> task families: what `--task_name` accepts."""

from __future__ import annotations

from rmlora.errors import ConfigError
from rmlora.tasks.glue import TASK_TO_KEYS, GlueTask
from rmlora.tasks.image import ImageClassificationTask
from rmlora.tasks.squad import QuestionAnsweringTask
from rmlora.tasks.text import TextClassificationTask

TASKS = {
    **{name: GlueTask for name in TASK_TO_KEYS},
    "squad": QuestionAnsweringTask,
    "image": ImageClassificationTask,
    "cifar100": ImageClassificationTask,
    "food101": ImageClassificationTask,
    "fashion_mnist": ImageClassificationTask,
    "text": TextClassificationTask,
}


def build_task(model_args, data_args, seed: int = 42):
    """The task object for `data_args.task_name`."""
    name = (data_args.task_name or "").lower().replace("-", "_")
    if name == "sst_2":
        name = "sst2"
    if name not in TASKS:
        given = f"unknown --task_name {data_args.task_name!r}" if data_args.task_name else "no --task_name given"
        raise ConfigError(f"{given}: choose one of {', '.join(TASKS)}")
    return TASKS[name](name, model_args, data_args, seed)
