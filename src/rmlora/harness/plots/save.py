"""The one way this project writes a figure: a matplotlib Figure, saved atomically in each format.

Figures are built with the Figure API (`matplotlib.figure.Figure`), never through pyplot: no global figure
state to leak between runs, and no backend switch (`matplotlib.use("Agg")`) that would change a notebook
user's backend behind their back. Figure.savefig renders through its own canvas, headless.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

from rmlora.io.atomic import atomic_file

FORMATS = ("png", "svg")
DPI = 120


def save_figure(fig: Figure, path_without_ext: str, formats: Sequence[str] = FORMATS, **savefig_kwargs) -> list[str]:
    """Write `fig` as `path_without_ext.<fmt>` for each format; returns the paths.

    Each file goes to a temp file in the same folder and is renamed into place, so a reader (a report
    viewer, a sweep copied mid-run) never finds half an image. `savefig_kwargs` go to Figure.savefig
    (dpi defaults to 120).
    """
    savefig_kwargs.setdefault("dpi", DPI)
    written = []
    for fmt in formats:
        path = f"{path_without_ext}.{fmt}"
        with atomic_file(path, "wb") as f:
            fig.savefig(f, format=fmt, **savefig_kwargs)
        written.append(path)
    return written
