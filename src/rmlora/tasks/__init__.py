"""Task families of `rmlora train`: GLUE, SQuAD v1.1, image classification, text classification.

Each family (glue.py, squad.py, image.py, text.py) turns its data into model inputs and its model's
outputs into metrics behind the interface of base.Task; registry.py maps `--task_name` to a family.
"""

from rmlora.tasks.arguments import DataArguments, ModelArguments
from rmlora.tasks.base import Task
from rmlora.tasks.registry import TASKS, build_task

__all__ = ["DataArguments", "ModelArguments", "Task", "TASKS", "build_task"]
