"""history.jsonl: one record per epoch, the data of the paper's Figure 1 curves.

Each record holds

- `epoch`, `step`, `elapsed_s` (seconds since training began);
- `train_loss`: the mean training objective over the epoch's optimizer steps, as the Trainer logs it (with
  `every_epochs` N > 1, records come every N epochs and after the last, and train_loss is the mean since the last)
  (task loss plus the orthogonality penalty for r-lora / rm-lora);
- `train_<metric>` and `train_subset_loss`: the model in eval mode on a fixed subset of the train split;
- `eval_<metric>`, `eval_loss` (validation) and `test_<metric>`, `test_loss` when those splits exist;
- `generalization_error` = train_<primary> − eval_<primary>, and `test_generalization_error` =
  train_<primary> − test_<primary> (the paper's train accuracy − test accuracy);
- `diagnostics`: the ΔW diagnostics summary (rank, orthogonality loss, ...) or null for full fine-tuning.

The Trainer logs the loss of the last steps of an epoch only after `on_epoch_end`, so the callback asks
for that log there and writes the record when it arrives. Records are appended atomically (a reader or a
kill never sees half a line); a fresh run starts a new file, a resumed run keeps the records up to its
checkpoint (rmlora.io.run_files.read_history reads them back, skipping a torn last line).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from transformers import TrainerCallback

from rmlora.errors import ConfigError
from rmlora.io import atomic
from rmlora.io.run_files import read_history


def generalization_errors(metrics: dict, primary_metric: str) -> dict:
    """train − eval and train − test of the primary metric, for the splits present in `metrics`."""
    train = metrics.get(f"train_{primary_metric}")
    out = {}
    if train is None:
        return out
    for split, key in (("eval", "generalization_error"), ("test", "test_generalization_error")):
        other = metrics.get(f"{split}_{primary_metric}")
        if other is not None:
            out[key] = float(train) - float(other)
    return out


class HistoryCallback(TrainerCallback):
    """`HistoryCallback(path, evaluate, primary_metric, diagnose)`.

    `evaluate()` returns the prefixed metrics of every split (train_*, eval_*, test_*) of the model as it
    is now; `diagnose()` returns the ΔW diagnostics summary or None. Both run on every process (evaluation
    may be collective); only the main process writes.
    """

    def __init__(
        self,
        path: str,
        evaluate: Callable[[], dict],
        primary_metric: str,
        diagnose: Callable[[], dict | None] | None = None,
        every_epochs: int = 1,
    ):
        self.path, self.evaluate, self.primary_metric, self.diagnose = path, evaluate, primary_metric, diagnose
        if int(every_epochs) < 1:
            raise ConfigError(f"eval_every_epochs must be at least 1, got {every_epochs}")
        self.every_epochs = int(every_epochs)
        self.records: list[dict] = []
        self._pending: dict | None = None
        self._loss_sum = 0.0
        self._loss_steps = 0
        self._last_logged_step = 0
        self._start = time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.time()
        self._last_logged_step = state.global_step
        if state.is_world_process_zero:
            kept = (
                [r for r in read_history(self.path) if r.get("step", 0) <= state.global_step]
                if state.global_step
                else []
            )
            atomic.write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
            self.records = kept

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            steps = state.global_step - self._last_logged_step
            self._loss_sum += float(logs["loss"]) * steps
            self._loss_steps += steps
            self._last_logged_step = state.global_step
            if self._pending is not None:
                self._write(state)

    def on_epoch_end(self, args, state, control, **kwargs):
        last = bool(state.max_steps) and state.global_step >= state.max_steps
        if round(float(state.epoch or 0.0)) % self.every_epochs and not last:
            return control  # a skipped epoch: its loss joins the next record's mean train_loss
        record = {"epoch": round(float(state.epoch or 0.0), 6), "step": state.global_step}
        metrics = self.evaluate()
        record.update(metrics)
        record.update(generalization_errors(metrics, self.primary_metric))
        record["diagnostics"] = self.diagnose() if self.diagnose is not None else None
        self._pending = record
        if self._last_logged_step == state.global_step:
            self._write(state)
        else:
            control.should_log = True  # flush the loss of the epoch's last steps into the next log
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._pending is not None:
            self._write(state)

    def _write(self, state) -> None:
        record = self._pending
        self._pending = None
        record["train_loss"] = self._loss_sum / self._loss_steps if self._loss_steps else None
        record["elapsed_s"] = round(time.time() - self._start, 3)
        self._loss_sum, self._loss_steps = 0.0, 0
        self.records.append(record)
        if state.is_world_process_zero:
            atomic.append_jsonl(self.path, record)
