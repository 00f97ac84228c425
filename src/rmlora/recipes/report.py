"""`rmlora recipe report DIR`: a recipe's results in the paper's layout, each cell "ours (paper)".

For the paper's tables (layouts glue, qa, table5) every cell reads `ours ± seed std (paper; Δ ours − paper)`, the
"# T / I" columns are computed from the runs and shown beside the paper's, and one sentence per table says which
of the paper's orderings hold here: RM-LoRA ≥ LoRA at equal R, per column, with the paired seed spread. Figures:
ours against the paper (one point per cell), and for the image recipes the paper's Figure-1 panels (curves) and
the ΔW spectra. Layout `compare` (the RESULTS.md experiments) is rmlora.harness.report's, per task. Only the final
stage's runs are reported: stage tune's choices are listed (they were made on validation, never on test).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from rmlora.errors import DataError
from rmlora.harness.aggregate import Stat, higher_is_better, mean_std, split_of
from rmlora.harness.plots.curves import plot_curves
from rmlora.harness.plots.save import save_figure
from rmlora.harness.plots.spectra import plot_spectra
from rmlora.harness.plots.versus_paper import versus_paper_figure
from rmlora.harness.report import format_count, markdown_table, render
from rmlora.io.atomic import write_text
from rmlora.io.run_files import FIGURES_DIR, REPORT_NAME, RESULTS_NAME, read_diagnostics, read_history, read_results
from rmlora.recipes.format import Column, Recipe, Row
from rmlora.recipes.map_report import map_tables, write_map_figures
from rmlora.recipes.runner import chosen_values, read_folder_recipe

SMOKE_WARNING = (
    "**Smoke scale**: tiny random models on project-made files, a few steps, one seed. These numbers test that "
    "every cell of the recipe runs and reports; they say nothing about the method. The paper's numbers are shown "
    "for the layout."
)


def final_records(records: Sequence[dict]) -> list[dict]:
    return [r for r in records if r.get("stage", "final") == "final"]


def records_of(records: Sequence[dict], row: Row, task: str | None) -> list[dict]:
    return [r for r in records if r.get("row") == row.id and (task is None or r.get("recipe_task") == task)]


def paper_value(row: Row, column: Column) -> tuple[float | None, float | None]:
    """(mean, std) of the paper's cell; (None, None) where the paper has no number."""
    value = row.paper.get(column.id)
    if isinstance(value, dict):
        return value.get("mean"), value.get("std")
    return (value, None) if isinstance(value, (int, float)) else (None, None)


def ours(records: Sequence[dict], column: Column) -> Stat:
    """Our mean and sample std over seeds of a column, on the paper's scale."""
    if column.diagnostic:
        values = [(r.get("diagnostics") or {}).get(column.diagnostic) for r in records]
    else:
        split = split_of(records) if records else "test"
        values = [(r.get("metrics") or {}).get(f"{split}_{column.metric}") for r in records]
    stat = mean_std(v * column.scale if v is not None else None for v in values)
    return stat


def digits_for(column: Column, paper: float | None) -> int:
    if column.diagnostic == "mean_rank":
        return 1
    if paper is not None and abs(paper) <= 1.0:
        return 3
    return 2


def cell_text(stat: Stat, paper: float | None, paper_std: float | None, digits: int) -> str:
    if stat.n == 0:
        mine = "—"
    else:
        mine = f"{stat.mean:.{digits}f}" + (f" ± {stat.std:.{digits}f}" if stat.std is not None else "")
    if paper is None:
        return mine
    # the paper's number as it prints it: a rank is an integer there
    theirs = str(paper) if isinstance(paper, int) else f"{paper:.{digits}f}"
    theirs += f" ± {paper_std:.{digits}f}" if paper_std is not None else ""
    if stat.n == 0 or not math.isfinite(stat.mean):
        return f"{mine} ({theirs})"
    return f"{mine} ({theirs}; Δ {stat.mean - paper:+.{digits}f})"


def _counts(records: Sequence[dict], key: str) -> str:
    values = [(r.get("param_counts") or {}).get(key) for r in records]
    if not values or any(v is None for v in values):
        return "N/A"
    return format_count(sum(values) / len(values))


def params_text(records: Sequence[dict], row: Row) -> str:
    mine = f"{_counts(records, 'trainable')} / {_counts(records, 'inference')}" if records else "—"
    theirs = row.paper.get("params")
    return f"{mine} ({theirs})" if theirs else mine


def ranks_text(records: Sequence[dict], row: Row) -> str:
    if row.method == "full":
        mine = "N/A / N/A"
    elif records and records[0].get("ranks"):
        ranks = records[0]["ranks"]
        mine = f"{ranks.get('trainable')} / {ranks.get('inference')}"
    else:
        mine = "—"
    theirs = row.paper.get("ranks")
    return f"{mine} ({theirs})" if theirs else mine


def _seeds(records: Sequence[dict]) -> str:
    return str(len({r.get("seed") for r in records}))


def paper_table(recipe: Recipe, records: Sequence[dict]) -> tuple[str, list]:
    """The markdown table in the paper's layout, and the points of the ours-vs-paper figure."""
    headers = ["Method"]
    if recipe.layout == "qa":
        headers.append("# T / I rank")
    if recipe.layout in ("glue", "qa"):
        headers.append("# T / I params")
    headers += ["seeds"] + [c.label for c in recipe.columns]
    body, points = [], []
    for row in recipe.rows:
        mine = records_of(records, row, None)
        line = [row.label]
        if recipe.layout == "qa":
            line.append(ranks_text(mine, row))
        if recipe.layout in ("glue", "qa"):
            line.append(params_text(mine, row))
        line.append(_seeds(mine))
        for column in recipe.columns:
            stat = ours(records_of(records, row, column.task), column)
            paper, paper_std = paper_value(row, column)
            line.append(cell_text(stat, paper, paper_std, digits_for(column, paper)))
            if paper is not None and stat.n and math.isfinite(stat.mean):
                points.append((row.label, row.method, column.label, paper, stat.mean, stat.std))
        body.append(line)
    return markdown_table(headers, body), points


def _paired(records: Sequence[dict], a: Row, b: Row, column: Column) -> Stat:
    """a − b per seed (the seeds both have), mean and sample std."""

    def by_seed(row: Row) -> dict:
        out = {}
        for r in records_of(records, row, column.task):
            stat = ours([r], column)
            if stat.n and math.isfinite(stat.mean):
                out[r.get("seed")] = stat.mean
        return out

    xa, xb = by_seed(a), by_seed(b)
    return mean_std(xa[s] - xb[s] for s in xa if s in xb)


def ordering_sentence(recipe: Recipe, records: Sequence[dict], better: str = "rm-lora", base: str = "lora") -> str:
    """Which of the paper's orderings hold: `better` ≥ `base` at equal R, column by column."""
    ranks = sorted({int(r.rank.value) for r in recipe.rows if r.method in (better, base) and r.rank is not None})
    columns = recipe.columns  # Table 5's rank (higher) and orthogonality loss (lower) of ΔW count too
    paper_yes = ours_yes = beyond = below = n = n_spread = 0
    for rank in ranks:
        a = next((r for r in recipe.rows if r.method == better and r.rank and r.rank.value == rank), None)
        b = next((r for r in recipe.rows if r.method == base and r.rank and r.rank.value == rank), None)
        if a is None or b is None:
            continue
        for column in columns:
            diff = _paired(records, a, b, column)
            if diff.n == 0:
                continue
            n += 1
            sign = 1 if higher_is_better(column.diagnostic or column.metric) else -1
            pa, pb = paper_value(a, column)[0], paper_value(b, column)[0]
            paper_yes += pa is not None and pb is not None and sign * (pa - pb) >= 0
            ours_yes += sign * diff.mean >= 0
            if diff.std is not None and diff.std > 0:
                n_spread += 1
                beyond += sign * diff.mean > diff.std
                below += sign * diff.mean < -diff.std
    if n == 0:
        return f"No {better} / {base} pair at equal R has finished runs yet: no ordering to compare."
    names = {"rm-lora": "RM-LoRA", "lora": "LoRA", "r-lora": "R-LoRA", "gm-lora": "GM-LoRA"}
    text = (
        f"{names.get(better, better)} at least as good as {names.get(base, base)} at equal R (lower is better for a "
        f"loss): the paper has it in {paper_yes} of {n} (column, R) cells, ours in {ours_yes} of {n}"
    )
    if n_spread:
        text += (
            f"; by more than the paired seed std in {beyond}, below {names.get(base, base)} by more than it in {below}"
            f" (of {n_spread} cells with several seeds)"
        )
    else:
        text += " (one seed: no spread to compare against)"
    return text + "."


def _figures(output_dir: str, recipe: Recipe, records: Sequence[dict], points) -> list[str]:
    base = os.path.join(output_dir, FIGURES_DIR)
    files = []
    fig = versus_paper_figure(points, recipe.paper or recipe.name)
    if fig is not None:
        files += save_figure(fig, os.path.join(base, "versus-paper"))
    if recipe.layout == "table5":
        histories, spectra = {}, []
        for row in recipe.rows:
            for r in records_of(records, row, None):
                run_dir = os.path.join(output_dir, r.get("run_dir") or "")
                history = read_history(run_dir)
                if history:
                    histories.setdefault(row.label, []).append(history)
                diagnostics = read_diagnostics(run_dir) if row.method != "full" else None
                if diagnostics:
                    spectra.append((row.label, r.get("rank"), diagnostics))
        if histories:
            files += plot_curves(histories, os.path.join(base, "curves"), title=recipe.paper)
            for rank in sorted({r.rank.value for r in recipe.rows if r.rank is not None}):
                subset = {
                    row.label: histories[row.label]
                    for row in recipe.rows
                    if row.label in histories and (row.rank is None or row.rank.value == rank)
                }
                files += plot_curves(subset, os.path.join(base, f"curves-R{rank}"), title=f"{recipe.paper}, R = {rank}")
        files += plot_spectra(spectra, os.path.join(base, "spectra"))
    return files


def write_recipe_report(output_dir: str) -> dict:
    """report.md and figures/ of a recipe folder; {"report", "figures", "notes"}."""
    recipe = read_folder_recipe(output_dir)
    results = read_results(os.path.join(output_dir, RESULTS_NAME))
    everything = list(results.by_cell().values())
    records = final_records(everything)
    if not records:
        raise DataError(f"{output_dir} has no finished final-stage runs in {RESULTS_NAME}: run the recipe first")
    parts = [f"# {recipe.name}: {recipe.summary}", ""]
    if recipe.scale == "smoke":
        parts += [SMOKE_WARNING, ""]
    done = len(records)
    if recipe.layout == "map":  # no paper numbers: the tables say what their cells hold
        parts += [f"{done} finished runs.", ""]
    else:
        parts += [f"{done} finished runs. Cells: ours ± sample std over seeds (paper; Δ ours − paper).", ""]
    figures: list[str] = []
    if recipe.layout in ("glue", "qa", "table5"):
        table, points = paper_table(recipe, records)
        parts += [f"## {recipe.paper or 'Results'}", "", table, "", ordering_sentence(recipe, records), ""]
        if recipe.layout == "table5":
            parts += [ordering_sentence(recipe, records, "r-lora", "lora"), ""]
        figures = _figures(output_dir, recipe, records, points)
    elif recipe.layout == "map":
        tables, points = map_tables(recipe, records)
        parts += [tables, ""]
        figures = write_map_figures(points, os.path.join(output_dir, FIGURES_DIR, "map"))
    else:
        parts.append(render(records, title="Per task (rmlora compare's layout)").split("\n", 1)[1])
    chosen = chosen_values(recipe, everything)
    if chosen:
        parts += ["## Chosen on validation (stage tune)", ""]
        parts += [
            f"- {task} / {row}: {', '.join(f'{k}={v}' for k, v in c.items())}" for (task, row), c in chosen.items()
        ]
        parts.append("")
    if recipe.notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in recipe.notes] + [""]
    pngs = [os.path.relpath(p, output_dir) for p in figures if p.endswith(".png")]
    if pngs:
        parts += ["## Figures", ""] + [f"![{os.path.basename(p)}]({p})" for p in pngs] + [""]
    path = os.path.join(output_dir, REPORT_NAME)
    write_text(path, "\n".join(parts))
    return {"report": path, "figures": figures, "notes": list(results.skipped)}
