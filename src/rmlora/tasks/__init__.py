"""Task families of `rmlora train`: GLUE, SQuAD v1.1, image classification, text classification.

Each family (glue.py, squad.py, image.py, text.py) turns its data into model inputs and its model's
outputs into metrics behind the interface of base.Task; registry.py maps `--task_name` to a family.
"""

from .arguments import DataArguments, ModelArguments
from .base import Task
from .registry import TASKS, build_task

__all__ = ["DataArguments", "ModelArguments", "Task", "TASKS", "build_task"]
