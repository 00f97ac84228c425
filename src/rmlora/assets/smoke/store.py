"""Where the smoke assets live, and building one exactly once: in a temporary folder beside its final place, then
moved there with one rename, so that a reader never sees a half-built folder and two processes building the same
asset at once both end with the same complete folder (the second rename fails, its copy is dropped).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable

VERSION = "v1"  # raised whenever a builder's output changes, so that an old cache is not reused


def default_root() -> str:
    """$XDG_CACHE_HOME/rmlora/smoke/<VERSION> (~/.cache/... without XDG_CACHE_HOME)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rmlora", "smoke", VERSION)


def build_once(folder: str, build: Callable[[str], object]) -> str:
    """`folder`, calling build(tmp) into a fresh temporary folder first if it does not exist yet."""
    if os.path.isdir(folder):
        return folder
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.", suffix=".tmp", dir=parent)
    try:
        build(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp's folder is private (0700); a cache folder reads as any other
        try:
            os.replace(tmp, folder)  # atomic; fails if another process put a complete folder there first
        except OSError:
            if not os.path.isdir(folder):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
