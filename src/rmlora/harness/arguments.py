"""The flags of one training run, as HfArgumentParser dataclasses (run_glue.py-style).

ModelArguments and DataArguments (rmlora.tasks), MethodArguments (RMLoraConfig's fields), LoraArguments,
AdaLoraArguments, SoraArguments and transformers' TrainingArguments; `parse_args(argv)` returns one
instance of each, in that order, and `rmlora_config` builds the run's RMLoraConfig from them.

--seed is TrainingArguments' (data order, carving, subsets, initialisation); the direction draws of the
masks use the same seed unless --rmlora_seed sets another, so RMLoraConfig.seed = rmlora_seed or seed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing

import peft
import torch
import transformers
from transformers import HfArgumentParser, TrainingArguments

from rmlora import __version__
from rmlora.config import (
    MASK_MODES,
    MASK_SAMPLINGS,
    METHODS,
    REG_FORMS,
    REG_REDUCTIONS,
    STEP_COMPENSATIONS,
    RMLoraConfig,
)
from rmlora.errors import ConfigError, RMLoraError
from rmlora.methods import AdaLoraArguments, LoraArguments, SoraArguments
from rmlora.methods.lora import check_variants
from rmlora.tasks import DataArguments, ModelArguments

PROG = "rmlora train"
DESCRIPTION = "Fine-tune a model on a task with one of the seven methods, run_glue.py-style flags."

_CHOICES = {
    "method": METHODS,
    "reg_form": REG_FORMS,
    "reg_reduction": REG_REDUCTIONS,
    "mask_sampling": MASK_SAMPLINGS,
    "mask_mode": MASK_MODES,
    "step_compensation": STEP_COMPENSATIONS,
}


def _method_arguments_class():
    """RMLoraConfig's fields as CLI flags, generated so their help cannot drift from the config's.

    Two differ: `seed` is left to TrainingArguments (--rmlora_seed overrides it for the masks only), and
    `r_hat` is read as text, because HfArgumentParser cannot parse RMLoraConfig's Union[int, float]:
    "4" means 4 directions, "0.5" half of R.
    """
    hints = typing.get_type_hints(RMLoraConfig)
    fields = []
    for f in dataclasses.fields(RMLoraConfig):
        metadata = dict(f.metadata)
        if f.name in _CHOICES:
            metadata["choices"] = list(_CHOICES[f.name])
        if f.name == "seed":
            continue
        if f.name == "r_hat":
            fields.append(("r_hat", str, dataclasses.field(default=str(f.default), metadata=metadata)))
        else:
            fields.append((f.name, hints[f.name], dataclasses.field(default=f.default, metadata=metadata)))
    fields.append(
        (
            "rmlora_seed",
            int | None,
            dataclasses.field(default=None, metadata={"help": "Seed of the mask directions only (default: --seed)."}),
        )
    )
    cls = dataclasses.make_dataclass("MethodArguments", fields)
    cls.__module__ = __name__
    return cls


MethodArguments = _method_arguments_class()

ARGUMENT_CLASSES = (
    ModelArguments,
    DataArguments,
    MethodArguments,
    LoraArguments,
    AdaLoraArguments,
    SoraArguments,
    TrainingArguments,
)


def parse_r_hat(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--r_hat must be an int (directions) or a fraction in (0, 1], got {text!r}") from None
    return int(value) if value.is_integer() and "." not in text else value


def rmlora_config(method_args, seed: int) -> RMLoraConfig:
    values = {f.name: getattr(method_args, f.name) for f in dataclasses.fields(RMLoraConfig) if f.name != "seed"}
    values["r_hat"] = parse_r_hat(method_args.r_hat)
    values["seed"] = method_args.rmlora_seed if method_args.rmlora_seed is not None else seed
    return RMLoraConfig(**values)


class TrainArgumentParser(HfArgumentParser):
    """HfArgumentParser whose error message opens with a two-line usage instead of argparse's.

    argparse prints the usage before an error; generated from ~200 TrainingArguments flags it runs to hundreds
    of lines and buries the one line that says what was wrong. --help still prints every flag.
    """

    def format_usage(self) -> str:
        return (
            f"usage: {self.prog} [--help] --model_name_or_path MODEL --output_dir DIR [--FLAG VALUE ...] | ARGS.json\n"
            f"       ({self.prog} --help lists every flag)\n"
        )


def build_parser() -> TrainArgumentParser:
    return TrainArgumentParser(ARGUMENT_CLASSES, prog=PROG, description=DESCRIPTION)


def parse_args(argv: list[str]) -> tuple:
    """(model, data, method, lora, adalora, sora, training) arguments of an argv, or of one ARGS.json file."""
    parser = build_parser()
    try:
        if len(argv) == 1 and argv[0].endswith(".json"):
            args = parser.parse_json_file(os.path.abspath(argv[0]))
        else:
            args = parser.parse_args_into_dataclasses(args=argv)
    except (ValueError, TypeError) as e:  # dataclass validation (e.g. lora_r < 1) and TrainingArguments' checks
        if isinstance(e, RMLoraError):
            raise
        raise ConfigError(str(e).strip().splitlines()[0]) from None
    check_variants(args[2].method, args[3])  # a PEFT variant the method cannot take, refused before any training
    return args


def num_training_steps(num_examples: int, training_args) -> int:
    """Optimizer steps of the run, computed as transformers' Trainer does (set_initial_training_values)."""
    if training_args.max_steps > 0:
        return int(training_args.max_steps)
    per_step = (
        training_args.per_device_train_batch_size * max(1, training_args.n_gpu) * max(1, training_args.world_size)
    )
    batches = num_examples // per_step if training_args.dataloader_drop_last else math.ceil(num_examples / per_step)
    ga = training_args.gradient_accumulation_steps
    per_epoch = max(batches // ga + int(batches % ga > 0), 1)
    return math.ceil(training_args.num_train_epochs * per_epoch)


def versions() -> dict:
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "rmlora": __version__,
    }
