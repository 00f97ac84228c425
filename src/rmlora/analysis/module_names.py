"""Module paths: their layer type, whether they sit in a transformer block, PEFT's target_modules rule, and the
matching of weight names between two checkpoints whose paths differ by a prefix (bert., base_model.model., ...)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from peft import LoraConfig
from peft.tuners.tuners_utils import check_target_module_exists

from rmlora.errors import ConfigError
from rmlora.lists import split_list

_INDEX = re.compile(r"^\d+$")


def layer_type(module: str) -> str:
    """The part of a module path after its last block index: encoder.layer.3.attention.self.query ->
    attention.self.query, transformer.h.0.mlp.c_fc -> mlp.c_fc; the last component if there is no index."""
    parts = module.split(".")
    idx = [i for i, p in enumerate(parts) if _INDEX.match(p)]
    if idx and idx[-1] < len(parts) - 1:
        return ".".join(parts[idx[-1] + 1 :])
    return parts[-1]


def in_block(module: str) -> bool:
    """Inside a repeated block (a ModuleList index in the path): not an embedding, pooler or head."""
    return any(_INDEX.match(p) for p in module.split(".")[:-1])


def target_matcher(target_modules: Sequence[str]) -> Callable[[str], bool]:
    """module path -> whether PEFT would adapt it for this list of target_modules (PEFT's own test)."""
    config = LoraConfig(target_modules=list(target_modules))
    return lambda module: bool(check_target_module_exists(config, module))


def matches_target_modules(module: str, target_modules: Sequence[str]) -> bool:
    """PEFT's rule for a list of target_modules: the name equals an entry or ends with '.' + entry."""
    return target_matcher(target_modules)(module)


def parse_target_modules(value: str | Sequence[str] | None) -> list[str] | None:
    """A comma-separated string or a list of module name suffixes; None means "no filter"."""
    if value is None:
        return None
    items = split_list(value) if isinstance(value, str) else [t.strip() for t in value if t.strip()]
    if not items:
        raise ConfigError("target_modules is empty: pass comma-separated module name suffixes, e.g. query,value")
    return items


def match_names(wanted: Iterable[str], available: Iterable[str]) -> dict[str, str]:
    """Map each wanted dotted name to the available name sharing its longest dotted suffix, when exactly one
    does (the full name of one side may carry a prefix the other lacks: bert., base_model.model., ...)."""
    by_suffix: dict[str, set[str]] = {}
    for name in available:
        parts = name.split(".")
        for i in range(len(parts)):
            by_suffix.setdefault(".".join(parts[i:]), set()).add(name)
    out = {}
    for name in wanted:
        parts = name.split(".")
        for i in range(len(parts)):
            hits = by_suffix.get(".".join(parts[i:]))
            if hits is None:
                continue
            if len(hits) == 1:
                out[name] = next(iter(hits))
            break  # the longest suffix that exists decides; an ambiguous one leaves the name unmatched
    return out
