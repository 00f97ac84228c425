"""`rmlora train`: fine-tune a model on a task with one of the seven methods, run_glue.py-style flags.

    rmlora train --model_name_or_path MODEL --task_name rte --train_file train.tsv --validation_file dev.tsv \
        --method rm-lora --lora_r 8 --r_hat 4 --reg_weight 0.1 --output_dir out/ --num_train_epochs 5

Flags come from dataclasses through HfArgumentParser: ModelArguments and DataArguments (rmlora.tasks),
MethodArguments (RMLoraConfig's fields), LoraArguments, AdaLoraArguments, SoraArguments and
transformers' TrainingArguments. `rmlora train ARGS.json` reads them from a JSON file instead.

--seed is TrainingArguments' (data order, carving, subsets, initialisation); the direction draws of the
masks use the same seed unless --rmlora_seed sets another, so RMLoraConfig.seed = rmlora_seed or seed.

--output_dir receives the adapter (PEFT format) or, for full fine-tuning, the model; the tokenizer /
image processor; history.jsonl (one record per epoch, rmlora.training.history); diagnostics.json (ΔW
rank, orthogonality loss and singular values per module); and, last and atomically, metrics.json —
so metrics.json exists only for a run that finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import time
import typing
from typing import Optional

from rmlora.config import LORA_METHODS, MASK_MODES, MASK_SAMPLINGS, METHODS, REG_FORMS, REG_REDUCTIONS, RMLoraConfig
from rmlora.errors import ConfigError, RMLoraError
from rmlora.io import atomic

HELP = "fine-tune a model on a GLUE / SQuAD / image / text task with RM-LoRA or a baseline (run_glue.py-style flags)"
METRICS_NAME = "metrics.json"
DIAGNOSTICS_NAME = "diagnostics.json"

logger = logging.getLogger(__name__)

_CHOICES = {
    "method": METHODS,
    "reg_form": REG_FORMS,
    "reg_reduction": REG_REDUCTIONS,
    "mask_sampling": MASK_SAMPLINGS,
    "mask_mode": MASK_MODES,
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
            Optional[int],
            dataclasses.field(default=None, metadata={"help": "Seed of the mask directions only (default: --seed)."}),
        )
    )
    cls = dataclasses.make_dataclass("MethodArguments", fields)
    cls.__module__ = __name__
    return cls


MethodArguments = _method_arguments_class()


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


def argument_classes() -> tuple:
    from transformers import TrainingArguments

    from rmlora.methods.adalora import AdaLoraArguments
    from rmlora.methods.base import LoraArguments
    from rmlora.methods.sora import SoraArguments
    from rmlora.tasks import DataArguments, ModelArguments

    return (
        ModelArguments,
        DataArguments,
        MethodArguments,
        LoraArguments,
        AdaLoraArguments,
        SoraArguments,
        TrainingArguments,
    )


def parse_args(argv: list[str]):
    from transformers import HfArgumentParser

    parser = HfArgumentParser(argument_classes(), prog="rmlora train", description=__doc__.split("\n\n")[0])
    try:
        if len(argv) == 1 and argv[0].endswith(".json"):
            return parser.parse_json_file(os.path.abspath(argv[0]))
        return parser.parse_args_into_dataclasses(args=argv)
    except (ValueError, TypeError) as e:  # dataclass validation (e.g. lora_r < 1) and TrainingArguments' checks
        if isinstance(e, RMLoraError):
            raise
        raise ConfigError(str(e).strip().splitlines()[0]) from None


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
    import peft
    import torch
    import transformers

    from rmlora import __version__

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "rmlora": __version__,
    }


def _diagnose(model, method: str):
    """ΔW diagnostics of a model in training: the LoRA variants and AdaLoRA (ΔW = B (A ⊙ E) · scaling / ranknum).

    SoRA's ΔW includes its gates, which rmlora.analysis.diagnostics does not read from a model in training; SoRA's
    exported adapter (gates folded into B) is diagnosed after export instead.
    """
    if method not in LORA_METHODS and method != "adalora":
        return None
    from rmlora.analysis.diagnostics import diagnose_model

    return diagnose_model(model)


def train(model_args, data_args, method_args, lora_args, adalora_args, sora_args, training_args) -> dict:
    """Run one training and write its files; returns the content of metrics.json."""
    from transformers import set_seed

    from rmlora.methods.base import prepare_model
    from rmlora.tasks import build_task
    from rmlora.training.history import HistoryCallback
    from rmlora.training.trainer import RMLoraTrainer

    start = time.time()
    config = rmlora_config(method_args, training_args.seed)
    out_dir = training_args.output_dir
    if not out_dir:
        raise ConfigError(
            "no --output_dir given: pass the folder that receives the adapter, metrics.json and history.jsonl"
        )
    os.makedirs(out_dir, exist_ok=True)
    metrics_path = os.path.join(out_dir, METRICS_NAME)
    if os.path.exists(metrics_path):  # a stale metrics.json would say this run finished
        with contextlib.suppress(FileNotFoundError):  # under torchrun every rank gets here: one of them removes it
            os.unlink(metrics_path)

    set_seed(training_args.seed)  # before the model is built: a new head's initialisation follows --seed
    task = build_task(model_args, data_args, seed=training_args.seed)
    task.batch_size, task.device = training_args.per_device_eval_batch_size, training_args.device
    task.load_data()
    base = task.load_model()
    base = task.place_lora(base, lora_args, config.method)
    task.prepare_datasets()

    if training_args.label_names is None:
        training_args.label_names = list(task.trainer_label_names)
    if not task.remove_unused_columns:
        training_args.remove_unused_columns = False
    total_steps = num_training_steps(len(task.train_dataset), training_args)
    settings = {
        "adalora": adalora_args,
        "sora": sora_args,
        "total_steps": total_steps,
        "learning_rate": training_args.learning_rate,
    }
    model = prepare_model(base, config, lora_args, task_type=task.peft_task_type(), **settings)

    trainer = RMLoraTrainer(
        model=model,
        args=training_args,
        train_dataset=task.train_dataset,
        eval_dataset=task.eval_datasets.get(
            "validation"
        ),  # for a user's own --eval_strategy; history.jsonl does not need it
        data_collator=task.data_collator,
        processing_class=task.processing_class,
        compute_metrics=task.trainer_metrics(),
        rmlora_config=config,
        method_settings=settings,
    )
    splits = ["train_eval", *task.evaluation_splits]

    def evaluate_all() -> dict:
        metrics = {}
        for split in splits:
            metrics.update(task.evaluate(trainer, split))
        return metrics

    def diagnostics_summary():
        diag = _diagnose(trainer.model, config.method)
        return diag.summary if diag is not None else None

    history = HistoryCallback(
        os.path.join(out_dir, "history.jsonl"), evaluate_all, task.primary_metric, diagnostics_summary
    )
    trainer.add_callback(history)

    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    last = history.records[-1] if history.records else None
    if last is not None and last["step"] == trainer.state.global_step:
        final = {k: v for k, v in last.items() if k not in ("epoch", "step", "elapsed_s", "diagnostics", "train_loss")}
    else:  # the run stopped inside an epoch (max_steps): evaluate the final model
        from rmlora.training.history import generalization_errors

        final = evaluate_all()
        final.update(generalization_errors(final, task.primary_metric))
    final["train_loss"] = train_result.training_loss
    final["train_runtime"] = train_result.metrics.get("train_runtime")

    diag = _diagnose(trainer.model, config.method)
    if trainer.args.should_save:
        trainer.rmlora.export(out_dir)
        if task.processing_class is not None:
            task.processing_class.save_pretrained(out_dir)
        if config.method == "sora":
            from rmlora.analysis.diagnostics import diagnose_adapter

            diag = diagnose_adapter(out_dir)
        if diag is not None:
            atomic.write_json(os.path.join(out_dir, DIAGNOSTICS_NAME), diag.to_dict())

    record = {
        "task": task.name,
        "family": task.family,
        "model": model_args.model_name_or_path,
        "method": config.method,
        "lora_r": None if config.method == "full" else lora_args.lora_r,
        "seed": training_args.seed,
        "primary_metric": task.primary_metric,
        "metrics": final,
        "param_counts": trainer.rmlora.param_counts(),
        "diagnostics": diag.summary if diag is not None else None,
        "wall_time_s": round(time.time() - start, 3),
        "total_steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "data": task.describe(),
        "target_modules": lora_args.target_modules if config.method != "full" else None,
        "rmlora_config": config.to_dict(),
        "versions": versions(),
    }
    if getattr(task, "feature_head", None):
        record["feature_cache"] = {"head": task.feature_head, "hits": task.feature_cache_hits}
    if trainer.args.should_save:
        atomic.write_json(metrics_path, record)
    return record


def _end_distributed() -> None:
    """Take down the process group that the Trainer's accelerate state set up under torchrun / accelerate launch.

    Nobody else does, and torch asks for it: left to interpreter exit, the gloo backend's threads can be torn down
    while still joinable, which aborts the process ("terminate called without an active exception", exit -6).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        from transformers import HfArgumentParser

        HfArgumentParser(argument_classes(), prog="rmlora train", description=__doc__.split("\n\n")[0]).print_help()
        return 0
    args = parse_args(argv)
    try:
        record = train(*args)
    finally:
        _end_distributed()
    if args[-1].process_index != 0:  # torchrun / accelerate launch: the record is printed by rank 0 only
        return 0
    m = record["metrics"]
    shown = {k: v for k, v in m.items() if k.startswith(("eval_", "test_")) or k.endswith("generalization_error")}
    print(
        json.dumps(
            {
                "output_dir": args[-1].output_dir,
                "method": record["method"],
                **shown,
                "wall_time_s": record["wall_time_s"],
            },
            indent=1,
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
