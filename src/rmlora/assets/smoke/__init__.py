"""Smoke-scale assets: tiny random models of the paper's families and tiny datasets in the hub's layouts.

    from rmlora.assets.smoke import smoke_asset
    model = smoke_asset("deberta-v3")        # ~/.cache/rmlora/smoke/v1/deberta-v3, built on first use
    glue = smoke_asset("glue")               # rmlora train --model_name_or_path $model --dataset_name $glue ...

They stand in for microsoft/deberta-v3-base, openai-community/gpt2, google/vit-base-patch16-224, nyu-mll/glue,
rajpurkar/squad, uoft-cs/cifar100 and ethz/food101 where the hub cannot be reached: each folder loads through the
same code as the hub id (transformers' Auto classes, `datasets.load_dataset(folder, config)`), so a smoke run takes
the whole training path in seconds. The weights are random and the rows made up: they test the pipeline, not the
method. Built deterministically (fixed seeds: the same bytes on every build with the same library versions).
"""

from __future__ import annotations

import os

from rmlora.assets.smoke.glue import write_glue
from rmlora.assets.smoke.images import write_cifar100, write_food101
from rmlora.assets.smoke.models import build_deberta_v3, build_gpt2, build_vit
from rmlora.assets.smoke.squad import write_squad
from rmlora.errors import AssetError
from rmlora.io.atomic import build_folder_once

VERSION = "v1"  # raised whenever a builder's output changes, so that an old cache is not reused

# name -> (builder, the hub repository it stands for)
BUILDERS = {
    "deberta-v3": (build_deberta_v3, "microsoft/deberta-v3-base"),
    "gpt2": (build_gpt2, "openai-community/gpt2"),
    "vit": (build_vit, "google/vit-base-patch16-224"),
    "glue": (write_glue, "nyu-mll/glue"),
    "squad": (write_squad, "rajpurkar/squad"),
    "cifar100": (write_cifar100, "uoft-cs/cifar100"),
    "food101": (write_food101, "ethz/food101"),
}
SMOKE_ASSETS = tuple(BUILDERS)
STANDS_FOR = {name: repo for name, (_, repo) in BUILDERS.items()}


def default_root() -> str:
    """$XDG_CACHE_HOME/rmlora/smoke/<VERSION> (~/.cache/... without XDG_CACHE_HOME)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rmlora", "smoke", VERSION)


def smoke_asset_path(name: str, root: str | None = None) -> str:
    """Where smoke asset `name` is (or will be) under `root` (default: default_root()); builds nothing."""
    if name not in BUILDERS:
        raise AssetError(f"no smoke asset {name!r}: pass one of {', '.join(SMOKE_ASSETS)}")
    return os.path.join(root or default_root(), name)


def smoke_asset(name: str, root: str | None = None) -> str:
    """The folder of smoke asset `name` under `root` (default: default_root()), built there on first use (atomically:
    safe when several processes ask at once)."""
    return build_folder_once(smoke_asset_path(name, root), BUILDERS[name][0])


__all__ = ["SMOKE_ASSETS", "STANDS_FOR", "VERSION", "default_root", "smoke_asset", "smoke_asset_path"]
