"""`run_training(...)`: one training run from its parsed arguments to the files of its --output_dir.

    args = parse_args(["--model_name_or_path", MODEL, "--task_name", "rte", "--output_dir", "out", ...])
    record = run_training(*args)           # the content of out/metrics.json

Three stages, one function each: `build_run` (task, data, model with its adapter, Trainer and history
callback), `train_run` (the Trainer's loop, then the final metrics) and `write_run` (adapter or model,
tokenizer / image processor, diagnostics.json and, last and atomically, metrics.json). The folder receives
history.jsonl while training (rmlora.training.history); metrics.json exists only for a run that finished.
`rmlora train`, `rmlora compare` (in-process cells and warm workers: `train_and_summarize`) and `rmlora demo` all
go through here.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import time
from dataclasses import dataclass
from functools import partial

import torch.distributed as dist
from transformers import set_seed

from rmlora.analysis.diagnostics import Diagnostics, diagnose_adapter, diagnose_model
from rmlora.config import LORA_METHODS, RMLoraConfig
from rmlora.errors import ConfigError
from rmlora.harness.arguments import num_training_steps, parse_args, rmlora_config, versions
from rmlora.harness.labels import variant_name
from rmlora.io import atomic
from rmlora.io.run_files import DIAGNOSTICS_NAME, HISTORY_NAME, METRICS_NAME
from rmlora.methods import prepare_model
from rmlora.tasks import Task, build_task
from rmlora.training.history import HistoryCallback, generalization_errors
from rmlora.training.trainer import RMLoraTrainer

# keys of a history record that are bookkeeping of the epoch, not metrics of the final model
_EPOCH_KEYS = ("epoch", "step", "elapsed_s", "diagnostics", "train_loss")


@dataclass
class Run:
    """What `build_run` assembles and the two later stages use."""

    task: Task
    trainer: RMLoraTrainer
    history: HistoryCallback
    config: RMLoraConfig
    output_dir: str
    model_name: str
    lora_r: int | None  # None for full fine-tuning
    target_modules: str | None
    variant: dict | None = None  # PEFT's LoRA variant flags that differ from plain LoRA


def run_training(model_args, data_args, method_args, lora_args, adalora_args, sora_args, training_args) -> dict:
    """Run one training and write its files; returns the content of metrics.json."""
    start = time.time()
    freeze_long_lived_objects()
    config = rmlora_config(method_args, training_args.seed)
    prepare_output_dir(training_args.output_dir)
    run = build_run(model_args, data_args, config, lora_args, adalora_args, sora_args, training_args)
    final = train_run(run)
    return write_run(run, final, start)


def train_and_summarize(argv: list[str]) -> int:
    """`rmlora train ARGV` in this process, printing what the command prints (`run_summary`, by rank 0 only under
    torchrun): the command itself, a `--jobs 1` sweep's cells and a warm worker's cells all run this."""
    args = parse_args(argv)
    try:
        record = run_training(*args)
    finally:
        end_distributed()
    if args[-1].process_index == 0:
        print(json.dumps(run_summary(record, args[-1].output_dir), indent=1, default=str))
    return 0


def freeze_long_lived_objects() -> None:
    """Leave what is alive now (the imported modules of torch, transformers, datasets: ~475,000 objects) out of every
    later cyclic garbage collection; once per process.

    The Trainer runs a full collection at the start of each training (accelerate's free_memory) and an in-process
    sweep another after each cell; each walks every tracked object, 0.3 s on 2 CPU cores: half of a smoke-scale
    cell (bench/smoke_cells.py). Objects made later (models, Trainers, datasets) are collected as before, and frozen
    ones are still freed by reference counting; the collection first frees the garbage already there.
    """
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()


def prepare_output_dir(out_dir: str | None) -> None:
    if not out_dir:
        raise ConfigError(
            "no --output_dir given: pass the folder that receives the adapter, metrics.json and history.jsonl"
        )
    os.makedirs(out_dir, exist_ok=True)
    metrics_path = os.path.join(out_dir, METRICS_NAME)
    if os.path.exists(metrics_path):  # a stale metrics.json would say this run finished
        with contextlib.suppress(FileNotFoundError):  # under torchrun every rank gets here: one of them removes it
            os.unlink(metrics_path)


def end_distributed() -> None:
    """Take down the process group that the Trainer's accelerate state set up under torchrun / accelerate launch.

    Nobody else does, and torch asks for it: left to interpreter exit, the gloo backend's threads can be torn down
    while still joinable, which aborts the process ("terminate called without an active exception", exit -6).
    destroy_process_group() alone does not prevent that: it only drops torch.distributed's own references, and the
    DistributedDataParallel wrapper (reducer and `process_group`) of a finished Trainer keeps the group alive — the
    Trainer, its accelerator and callbacks reference each other, so only the cyclic collector frees them, which may
    first run at exit. Collecting first makes destroy_process_group() drop the last reference, so the group is torn
    down here, while the interpreter is whole.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def build_run(model_args, data_args, config, lora_args, adalora_args, sora_args, training_args) -> Run:
    """The task with its data, the model wrapped for the method, and the Trainer with its history callback."""
    set_seed(training_args.seed)  # before the model is built: a new head's initialisation follows --seed
    task = build_task(model_args, data_args, seed=training_args.seed)
    task.batch_size, task.device = training_args.per_device_eval_batch_size, training_args.device
    task.load_data()
    base = task.place_lora(task.load_model(), lora_args, config.method)
    task.prepare_datasets()

    # the task decides what the Trainer feeds the model; TrainingArguments has no other place for it
    if training_args.label_names is None:
        training_args.label_names = list(task.trainer_label_names)
    if not task.remove_unused_columns:
        training_args.remove_unused_columns = False
    settings = {
        "adalora": adalora_args,
        "sora": sora_args,
        "total_steps": num_training_steps(len(task.train_dataset), training_args),
        "learning_rate": training_args.learning_rate,
    }
    model = prepare_model(base, config, lora_args, task_type=task.peft_task_type(), **settings)
    trainer = RMLoraTrainer(
        model=model,
        args=training_args,
        train_dataset=task.train_dataset,
        eval_dataset=task.eval_datasets.get("validation"),  # for a user's own --eval_strategy; the history has its own
        data_collator=task.data_collator,
        processing_class=task.processing_class,
        compute_metrics=task.trainer_metrics(),
        rmlora_config=config,
        method_settings=settings,
        loraplus_lr_ratio=lora_args.loraplus_lr_ratio,
    )
    history = HistoryCallback(
        os.path.join(training_args.output_dir, HISTORY_NAME),
        partial(evaluate_all, task, trainer),
        task.primary_metric,
        partial(_diagnostics_summary, trainer, config.method),
        every_epochs=data_args.eval_every_epochs,
    )
    trainer.add_callback(history)
    full = config.method == "full"
    return Run(
        task,
        trainer,
        history,
        config,
        output_dir=training_args.output_dir,
        model_name=model_args.model_name_or_path,
        lora_r=None if full else lora_args.lora_r,
        target_modules=None if full else lora_args.target_modules,
        variant=None if full else lora_args.variant(),
    )


def evaluate_all(task: Task, trainer) -> dict:
    """The prefixed metrics of the model as it is now on the fixed train subset and every evaluation split."""
    metrics = {}
    for split in ["train_eval", *task.evaluation_splits]:
        metrics.update(task.evaluate(trainer, split))
    return metrics


def diagnose_training(model, method: str) -> Diagnostics | None:
    """ΔW diagnostics of a model in training: the LoRA variants and AdaLoRA (ΔW = B (A ⊙ E) · scaling / ranknum).

    SoRA's ΔW includes its gates, which rmlora.analysis.diagnostics does not read from a model in training; SoRA's
    exported adapter (gates folded into B) is diagnosed after export instead.
    """
    if method not in LORA_METHODS and method != "adalora":
        return None
    return diagnose_model(model)


def _diagnostics_summary(trainer, method: str) -> dict | None:
    diag = diagnose_training(trainer.model, method)
    return diag.summary if diag is not None else None


def train_run(run: Run) -> dict:
    """Train, then the final metrics: the last epoch's record, or a fresh evaluation if the run stopped mid-epoch."""
    trainer = run.trainer
    result = trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    last = run.history.records[-1] if run.history.records else None
    if last is not None and last["step"] == trainer.state.global_step:
        final = {k: v for k, v in last.items() if k not in _EPOCH_KEYS}
    else:  # the run stopped inside an epoch (max_steps): evaluate the final model
        final = evaluate_all(run.task, trainer)
        final.update(generalization_errors(final, run.task.primary_metric))
    final["train_loss"] = result.training_loss
    final["train_runtime"] = result.metrics.get("train_runtime")
    return final


def write_run(run: Run, final: dict, start: float) -> dict:
    """Export the adapter (or model) and the processor, write diagnostics.json, then metrics.json (returned)."""
    trainer, config, task, out_dir = run.trainer, run.config, run.task, run.output_dir
    diag = diagnose_training(trainer.model, config.method)
    if trainer.args.should_save:
        trainer.rmlora.export(out_dir)
        if task.processing_class is not None:
            task.processing_class.save_pretrained(out_dir)
        if config.method == "sora":
            diag = diagnose_adapter(out_dir)
        if diag is not None:
            atomic.write_json(os.path.join(out_dir, DIAGNOSTICS_NAME), diag.to_dict())
    record = {
        "task": task.name,
        "family": task.family,
        "model": run.model_name,
        "method": config.method,
        "lora_r": run.lora_r,
        "seed": trainer.args.seed,
        "primary_metric": task.primary_metric,
        "metrics": final,
        "param_counts": trainer.rmlora.param_counts(),
        "diagnostics": diag.summary if diag is not None else None,
        "wall_time_s": round(time.time() - start, 3),
        "total_steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "data": task.describe(),
        "target_modules": run.target_modules,
        "variant": run.variant,  # PEFT's LoRA variant flags that differ from plain LoRA (LoraArguments.variant)
        "variant_name": variant_name(run.variant) or None,  # "PiSSA + DoRA"; None for plain LoRA (rows, selection)
        "rmlora_config": config.to_dict(),
        "versions": versions(),
    }
    if getattr(task, "feature_head", None):
        record["feature_cache"] = {"head": task.feature_head, "hits": task.feature_cache_hits}
    if trainer.args.should_save:
        atomic.write_json(os.path.join(out_dir, METRICS_NAME), record)
    return record


def run_summary(record: dict, output_dir: str) -> dict:
    """What `rmlora train` prints of a finished run: its folder, method, held-out metrics and time."""
    shown = {
        k: v
        for k, v in record["metrics"].items()
        if k.startswith(("eval_", "test_")) or k.endswith("generalization_error")
    }
    return {"output_dir": output_dir, "method": record["method"], **shown, "wall_time_s": record["wall_time_s"]}
