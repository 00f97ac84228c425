"""Writes that never leave a half-written file: temp file in the same folder, fsync, rename; and folders built the
same way (a temp folder beside the final one, renamed into place)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import IO


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w") -> Iterator[IO]:
    """A file opened for writing ("w" text, "wb" binary) that replaces `path` in one rename when the block ends.

    The temp file sits in the same folder (a rename within one file system is atomic); if the block raises,
    or the process is killed before the rename, `path` keeps its old content and the temp file is removed.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def build_folder_once(folder: str, build: Callable[[str], object]) -> str:
    """`folder`, built by build(tmp) into a fresh temporary folder beside it and renamed into place, if it does not
    exist yet. A reader never sees a half-built folder, and two processes building the same folder at once both
    return one complete folder: the second rename fails (the target is a non-empty folder) and its copy is dropped.
    """
    if os.path.isdir(folder):
        return folder
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.", suffix=".tmp", dir=parent)
    try:
        build(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp's folder is private (0700); the built one reads as any other folder
        try:
            os.replace(tmp, folder)
        except OSError:
            if not os.path.isdir(folder):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def write_text(path: str, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=jsonable) + "\n")


def append_jsonl(path: str, record: dict) -> None:
    """Append one line so that a reader sees either the whole line or none of it.

    The file is rewritten to a temp file with the line added and renamed over the old one, so a kill at
    any moment leaves the previous complete file or the new complete file.
    """
    old = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = f.read()
        if old and not old.endswith("\n"):
            old += "\n"
    write_text(path, old + json.dumps(record, sort_keys=True, default=jsonable) + "\n")


def jsonable(x):
    """`default=` of json.dumps: arrays and tensors as lists, numpy / torch scalars as numbers, else str."""
    if hasattr(x, "tolist"):
        return x.tolist()
    if hasattr(x, "item"):
        return x.item()
    return str(x)
