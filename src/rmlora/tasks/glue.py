"""GLUE: the nine tasks of the benchmark, from the hub ("nyu-mll/glue") or local files in its columns.

Columns and labels are those of the hub dataset (as in transformers' run_glue.py): a local file has the
task's text columns below and a `label` column holding either the label id or its name (RTE's own
tsv files say "entailment" / "not_entailment"). STS-B is a regression (num_labels = 1, scores 0-5).

The protocol, the same for all nine tasks: GLUE's dev set (the hub's `validation`, MNLI's
`validation_matched` / `validation_mismatched`) is the set results are reported on, as in the paper and
run_glue.py; the hub's test splits are never read (their labels are hidden, -1, except MRPC's, which
would otherwise make MRPC the one task scored on another set). Without --validation_split_percentage the
dev set is the validation split (eval_*); with it, the validation split is carved from train for
model selection and the dev set becomes the test split (test_*, MNLI's mismatched test_*_mm).
"""

from __future__ import annotations

import logging

from rmlora.errors import DataError
from rmlora.tasks.classification import SequenceClassificationTask
from rmlora.tasks.data import load_hub_dataset, load_local_splits, pick_splits
from rmlora.tasks.metrics import glue_metrics

logger = logging.getLogger(__name__)

TASK_TO_KEYS = {
    "cola": ("sentence", None),
    "mnli": ("premise", "hypothesis"),
    "mrpc": ("sentence1", "sentence2"),
    "qnli": ("question", "sentence"),
    "qqp": ("question1", "question2"),
    "rte": ("sentence1", "sentence2"),
    "sst2": ("sentence", None),
    "stsb": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}
# label names in id order, as in the hub dataset's ClassLabel features
TASK_TO_LABELS = {
    "cola": ["unacceptable", "acceptable"],
    "mnli": ["entailment", "neutral", "contradiction"],
    "mrpc": ["not_equivalent", "equivalent"],
    "qnli": ["entailment", "not_entailment"],
    "qqp": ["not_duplicate", "duplicate"],
    "rte": ["entailment", "not_entailment"],
    "sst2": ["negative", "positive"],
    "stsb": None,
    "wnli": ["not_entailment", "entailment"],
}
PRIMARY_METRIC = {"cola": "matthews_correlation", "stsb": "pearson"}
HUB_DATASET = "nyu-mll/glue"


class GlueTask(SequenceClassificationTask):
    family = "glue"

    def __init__(self, name, model_args, data_args, seed=42):
        super().__init__(name, model_args, data_args, seed)
        self.text_column, self.text_pair_column = TASK_TO_KEYS[name]
        self.label_column = data_args.label_column or "label"
        self.is_regression = name == "stsb"
        self.label_list = TASK_TO_LABELS[name]
        self.primary_metric = PRIMARY_METRIC.get(name, "accuracy")

    def _load_splits(self) -> dict:
        d = self.data_args
        if d.train_file:
            return load_local_splits(d)
        if d.validation_file or d.test_file:
            raise DataError("--validation_file / --test_file given without --train_file: pass the training file too")
        return self._load_hub()

    def _load_hub(self) -> dict:
        d = self.data_args
        name = d.dataset_name or HUB_DATASET
        hub = load_hub_dataset(
            name,
            d.dataset_config_name or self.name,
            self.model_args.cache_dir,
            "without internet pass --train_file and --validation_file in GLUE's columns",
        )
        mapping = {"train": "train", "validation": "validation"}
        if self.name == "mnli":
            mapping = {"train": "train", "validation": "validation_matched", "validation_mm": "validation_mismatched"}
        # the protocol (module docstring): GLUE's test splits are never used, labelled (MRPC) or not
        skipped = [s for s in hub if s.startswith("test")]
        if skipped:
            logger.info("GLUE %s: %s not used (the dev set is the reported set)", self.name, ", ".join(skipped))
        return pick_splits(hub, mapping, name, required=("train", "validation"))

    def compute_metrics(self, eval_pred) -> dict:
        return glue_metrics(self.name, self.predictions(eval_pred.predictions), eval_pred.label_ids)
