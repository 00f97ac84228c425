"""Writing a dataset folder in a hub repository's layout, so that `datasets.load_dataset(folder, config)` reads it the
way it reads the hub id: parquet shards `<folder>/<split>-00000-of-00001.parquet` and a README.md whose YAML front
matter holds `dataset_info` (features, split sizes) and the `configs:` block (config name -> split -> shard paths).

The front matter is made by the classes `push_to_hub` itself uses (datasets' DatasetInfosDict and MetadataConfigs,
huggingface_hub's DatasetCardData), so it reads as a hub repository's card does, configs in the hub's sorted order.

    repo = HubRepo(path)
    repo.add("rte", "rte", {"train": rows, "validation": rows}, features)   # rte/train-00000-of-00001.parquet
    repo.finish("GLUE")                                                    # README.md
"""

from __future__ import annotations

import os

from datasets import Dataset, DatasetInfo, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCardData

NOTE = "A tiny copy in the hub repository's layout and feature types, made by rmlora (random rows, not the data)."


def _quiet_to_parquet(ds, path: str) -> None:
    """ds.to_parquet(path) without its progress bar (quiet console: a bar per shard of a few rows)."""
    shown = not are_progress_bars_disabled()
    disable_progress_bars()
    try:
        ds.to_parquet(path)
    finally:
        if shown:
            enable_progress_bars()


class HubRepo:
    """One hub dataset repository being written into `path` (an empty or new folder)."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(path, exist_ok=True)
        self.infos = DatasetInfosDict()
        self.configs = MetadataConfigs()

    def add(self, config: str, folder: str, splits: dict[str, dict], features) -> None:
        """Config `config` with one parquet shard per split under `folder/` (rows: column -> values)."""
        os.makedirs(os.path.join(self.path, folder), exist_ok=True)
        info = DatasetInfo(config_name=config, features=features, splits=SplitDict(), download_size=0, dataset_size=0)
        files = []
        for split, rows in splits.items():
            ds = Dataset.from_dict(rows, features=features)
            shard = os.path.join(self.path, folder, f"{split}-00000-of-00001.parquet")
            _quiet_to_parquet(ds, shard)
            info.splits.add(SplitInfo(name=split, num_bytes=ds.data.nbytes, num_examples=len(ds)))
            info.download_size += os.path.getsize(shard)
            info.dataset_size += ds.data.nbytes
            files.append({"split": split, "path": f"{folder}/{split}-*"})
        self.infos[config] = info
        self.configs[config] = {"data_files": files}

    def finish(self, title: str, note: str = NOTE) -> None:
        """Write README.md: the YAML front matter `load_dataset` reads, then a title and a note."""
        card = DatasetCardData()
        self.infos.to_dataset_card_data(card)
        self.configs.to_dataset_card_data(card)
        with open(os.path.join(self.path, "README.md"), "w", encoding="utf-8", newline="\n") as f:
            f.write(f"---\n{card}\n---\n\n# {title}\n\n{note}\n")
