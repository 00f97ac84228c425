"""The built-in recipes (TOML files shipped in rmlora/recipes/builtin/), and loading a recipe by name or path.

A built-in recipe's name is its path under builtin/ without `.toml` (`paper/table1`, `results/exp1_...`); a
user's recipe is any TOML file in the same format (rmlora.recipes.format), e.g. a copy of a built-in one:
`rmlora recipe show paper/table1 --toml > my.toml`. A recipe may start from another with `extends = "NAME"`:
its tables are merged over the other's (train, tasks, scales, estimate, paper_data key by key), its scalars
replace the other's, and its [[rows]] are appended to the other's.
"""

from __future__ import annotations

import os
from importlib import resources

from rmlora.errors import ConfigError
from rmlora.recipes.format import Recipe, parse_recipe, tomllib

BUILTIN_PACKAGE = "rmlora.recipes"
BUILTIN_DIR = "builtin"
MERGED = ("train", "tasks", "scales", "estimate", "paper_data", "tuning")


def _builtin_root():
    return resources.files(BUILTIN_PACKAGE).joinpath(BUILTIN_DIR)


def builtin_names() -> list[str]:
    """Every built-in recipe's name, sorted (paper/... first, then results/...)."""
    names = []

    def walk(node, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".toml"):
                names.append(prefix + child.name.removesuffix(".toml"))

    walk(_builtin_root(), "")
    return sorted(names, key=lambda n: (not n.startswith("paper/"), n))


def _read_raw(name_or_path: str) -> tuple[dict, str]:
    if name_or_path.endswith(".toml") or os.path.isfile(name_or_path):
        path = name_or_path
        try:
            with open(path, "rb") as f:
                return tomllib.load(f), path
        except OSError as e:
            raise ConfigError(f"cannot read recipe file {path}: {e.strerror or e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
    if name_or_path not in builtin_names():
        raise ConfigError(
            f"no recipe {name_or_path!r}: give a built-in name ({', '.join(builtin_names())}) or a .toml file "
            "(`rmlora recipe list`)"
        )
    node = _builtin_root().joinpath(*f"{name_or_path}.toml".split("/"))
    try:
        return tomllib.loads(node.read_text(encoding="utf-8")), f"{BUILTIN_DIR}/{name_or_path}.toml"
    except tomllib.TOMLDecodeError as e:  # a packaging mistake, not the user's
        raise ConfigError(f"built-in recipe {name_or_path} is not valid TOML: {e}") from None


def _merge(base: dict, child: dict) -> dict:
    out = dict(base)
    for key, value in child.items():
        if key == "extends":
            continue
        if key == "rows":
            out["rows"] = list(base.get("rows") or []) + list(value)
        elif key in MERGED and isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = _deep_merge(base[key], value)
        else:
            out[key] = value
    return out


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        # an inline `{ value, from }` replaces a value whole; other tables merge key by key
        if isinstance(v, dict) and isinstance(out.get(k), dict) and "value" not in v:
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def raw_recipe(name_or_path: str, seen: tuple[str, ...] = ()) -> tuple[dict, str]:
    """The recipe's TOML tables with `extends` resolved, and where it was read from."""
    data, where = _read_raw(name_or_path)
    parent = data.get("extends")
    if parent is None:
        return data, where
    if parent in seen + (name_or_path,):
        raise ConfigError(f"recipe {name_or_path}: `extends` makes a cycle through {parent!r}")
    base, _ = raw_recipe(parent, seen + (name_or_path,))
    return _merge(base, data), where


def load_recipe(name_or_path: str, scale: str | None = None) -> Recipe:
    """The recipe named (built-in) or in the file given, at `scale` ("paper" as written, or a [scales.NAME])."""
    data, where = raw_recipe(name_or_path)
    return parse_recipe(data, where).at_scale(scale)
