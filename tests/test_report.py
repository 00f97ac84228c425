"""report.md tables (rows, columns, mean ± std, bold best) and the spectra figure, on hand-made records."""

from __future__ import annotations

import json
import os

import pytest

from rmlora.errors import DataError
from rmlora.harness.plots.spectra import plot_spectra, run_spectrum, spectra_figure
from rmlora.harness.report import format_count, render, table1, table5, table_qa, write_report
from rmlora.io.run_files import append_result


def record(
    method, rank, seed, metrics, params=(1_260_000, 1_260_000), mean_rank=None, orth=None, task="rte", ranks=None
):
    r = {
        "cell": f"{method}_s{seed}" if rank is None else f"{method}_r{rank}_s{seed}",
        "method": method,
        "rank": rank,
        "lora_r": rank,
        "seed": seed,
        "task": task,
        "model": "tiny-bert",
        "primary_metric": "accuracy",
        "metrics": metrics,
        "param_counts": {"trainable": params[0], "inference": params[1]},
    }
    if mean_rank is not None:
        r["diagnostics"] = {"mean_rank": mean_rank, "mean_orthogonality_loss": orth}
    if ranks:
        r["ranks"] = ranks
    return r


def parse_table(text: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """Header cells and body rows of the markdown table that follows `heading`."""
    lines = text[text.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip().strip("|").split("|")])
    return table[0], table[2:]


@pytest.fixture
def glue_records():
    recs = []
    for seed, acc in enumerate([0.82, 0.84]):
        recs.append(
            record("full", None, seed, {"test_accuracy": acc, "test_loss": 0.5}, params=(184_000_000, 184_000_000))
        )
    for seed, (acc, rank, orth) in enumerate([(0.80, 7, 410.0), (0.84, 7, 400.0), (0.86, 8, 390.0)]):
        recs.append(record("lora", 8, seed, {"test_accuracy": acc, "eval_accuracy": 0.9}, mean_rank=rank, orth=orth))
    for seed, (acc, rank, orth) in enumerate([(0.85, 8, 60.0), (0.87, 8, 58.0), (0.89, 8, 56.0)]):
        recs.append(record("rm-lora", 8, seed, {"test_accuracy": acc}, mean_rank=rank, orth=orth))
    recs.append(record("lora", 4, 0, {"test_accuracy": 0.80}, params=(670_000, 670_000), mean_rank=4, orth=500.0))
    return recs


def test_format_count_like_the_paper():
    assert format_count(184_000_000) == "184M"
    assert format_count(1_260_000) == "1.26M"
    assert format_count(22_700_000) == "22.7M"
    assert format_count(12_345) == "12.3K"
    assert format_count(512) == "512"
    assert format_count(None) == "N/A"


def test_table1_rows_columns_mean_std_and_bold(glue_records):
    text = table1(glue_records)
    headers, rows = parse_table(text, "| Method")
    assert headers == ["Method", "# T / I params", "seeds", "Acc (test)"]
    # full FT first, then ranks ascending, methods in the paper's order
    assert [r[0] for r in rows] == ["Full FT", "LoRA R=4", "LoRA R=8", "RM-LoRA R=8"]
    table = {r[0]: r for r in rows}
    assert table["Full FT"][1:3] == ["184M / 184M", "2"]
    assert table["Full FT"][3] == "0.830 ± 0.014"  # 0.82, 0.84: std sqrt(0.0002) = 0.0141
    assert table["LoRA R=8"][3] == "0.833 ± 0.031"  # 0.80, 0.84, 0.86: std 0.0306
    assert table["LoRA R=4"][3] == "0.800"  # one seed: no std
    assert table["RM-LoRA R=8"][3] == "**0.870 ± 0.020**"  # 0.85, 0.87, 0.89: the best mean
    assert text.count("**") == 2


def test_table5_rank_orthogonality_and_metric(glue_records):
    headers, rows = parse_table(table5(glue_records), "| Method")
    assert headers == ["Method", "Rank of ΔW", "Orthogonality loss of ΔW", "Acc (test) (mean ± std)"]
    table = {r[0]: r[1:] for r in rows}
    assert "Full FT" not in table  # full fine-tuning has no low-rank ΔW
    # LoRA R=8: ranks 7, 7, 8 -> 7.3 (not integral: one decimal); losses 410, 400, 390 -> 400
    assert table["LoRA R=8"] == ["7.3", "400.000", "0.833 ± 0.031"]
    # highest rank is best, lowest orthogonality loss is best
    assert table["RM-LoRA R=8"] == ["**8.0**", "**58.000**", "**0.870 ± 0.020**"]
    assert table["LoRA R=4"] == ["4.0", "500.000", "0.800"]


def test_qa_layout_em_f1_and_ranks():
    recs = []
    for seed, (em, f1) in enumerate([(87.4, 93.3), (87.6, 93.5)]):
        recs.append(record("lora", 8, seed, {"eval_exact_match": em, "eval_f1": f1}, params=(1_330_000, 1_330_000)))
    for seed, (em, f1) in enumerate([(86.4, 92.8), (86.6, 92.9)]):
        recs.append(
            record(
                "adalora",
                4,
                seed,
                {"eval_exact_match": em, "eval_f1": f1},
                params=(1_330_000, 670_000),
                ranks={"trainable": 8, "inference": 4},
            )
        )
    recs.append(record("full", None, 0, {"eval_exact_match": 87.8, "eval_f1": 93.6}, params=(184_000_000, 184_000_000)))
    headers, rows = parse_table(table_qa(recs), "| Method")
    assert headers == ["Method", "# T / I rank", "# T / I params", "seeds", "EM (validation)", "F1 (validation)"]
    table = {r[0]: r[1:] for r in rows}
    assert table["Full FT"] == ["N/A / N/A", "184M / 184M", "1", "**87.80**", "**93.60**"]
    assert table["AdaLoRA R=8→4"] == ["8 / 4", "1.33M / 670K", "2", "86.50 ± 0.14", "92.85 ± 0.07"]
    assert table["LoRA R=8"] == ["8 / 8", "1.33M / 1.33M", "2", "87.50 ± 0.14", "93.40 ± 0.14"]
    # render picks this layout for exact_match + f1, and says the metrics are not on a test split
    text = render(recs)
    assert "layout of Tables 2 and 3" in text and "layout of Table 1" not in text
    assert "no separate test split" in text


def test_render_sections_and_empty_results(glue_records):
    text = render(glue_records)
    assert "## rte — `tiny-bert`" in text
    assert "layout of Table 1" in text and "layout of Table 5" in text
    assert "Metrics are on the **test** split." in text
    with pytest.raises(DataError):
        render([])


def _diagnostics(values_per_module):
    return {
        "modules": [{"module": f"m{i}", "singular_values": v} for i, v in enumerate(values_per_module)],
        "summary": {},
    }


def test_run_spectrum_pads_with_zeros_and_averages_modules():
    # module 0: 3, 1 (sorted); module 1: 2, 2, 2 -> padded [3, 1, 0] and [2, 2, 2] -> mean [2.5, 1.5, 1.0]
    assert run_spectrum(_diagnostics([[1.0, 3.0], [2.0, 2.0, 2.0]])).tolist() == [2.5, 1.5, 1.0]


def test_spectra_figure_one_panel_per_rank_and_labels():
    runs = [
        ("LoRA", 4, _diagnostics([[2.0, 1.0, 0.1, 0.01]])),
        ("LoRA", 4, _diagnostics([[2.2, 1.1, 0.2, 0.0]])),
        ("RM-LoRA", 4, _diagnostics([[1.1, 1.0, 0.9, 0.8]])),
        ("RM-LoRA", 8, _diagnostics([[1.0] * 8])),
        ("Full FT", None, {}),
    ]
    fig = spectra_figure(runs)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["R = 4", "R = 8"]
    assert all(ax.get_xlabel() == "index i" and ax.get_ylabel() == "singular value σ_i of ΔW" for ax in axes)
    legend = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert legend == ["LoRA (n=2)", "RM-LoRA (n=1)", "σ = 1 (ΔWΔWᵀ = I)"]
    assert spectra_figure([("Full FT", None, {})]) is None


def test_write_report_from_a_folder(tmp_path, glue_records, saved_figures):
    out = str(tmp_path)
    for r in glue_records:
        run_dir = os.path.join(out, "runs", r["cell"])
        os.makedirs(run_dir)
        with open(os.path.join(run_dir, "history.jsonl"), "w") as f:
            for epoch in (1, 2):
                f.write(
                    json.dumps(
                        {
                            "epoch": epoch,
                            "train_loss": 1.0 / epoch,
                            "eval_loss": 1.2 / epoch,
                            "train_accuracy": 0.6 + 0.1 * epoch,
                            "eval_accuracy": 0.5 + 0.1 * epoch,
                            "generalization_error": 0.1,
                        }
                    )
                    + "\n"
                )
        if r["method"] != "full":
            with open(os.path.join(run_dir, "diagnostics.json"), "w") as f:
                json.dump(_diagnostics([[1.5, 1.0, 0.5, 0.25][: min(4, r["rank"])]]), f)
        append_result(os.path.join(out, "results.jsonl"), dict(r, run_dir=os.path.join("runs", r["cell"])))
    written = write_report(out)
    text = open(written["report"], encoding="utf-8").read()
    assert text == open(os.path.join(out, "report.md"), encoding="utf-8").read()
    assert "**0.870 ± 0.020**" in text
    for ext in ("png", "svg"):
        path = os.path.join(out, "figures", f"spectra.{ext}")
        assert os.path.getsize(path) > 1000
    assert open(os.path.join(out, "figures", "spectra.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "![spectra](figures/spectra.png)" in text
    # two ranks: the curves of all rows, then one figure per R with that R's rows and full FT
    curves = [fig for fig in saved_figures if len(fig.axes) == 4]
    labels = [sorted(line.get_label() for line in fig.axes[0].get_lines()) for fig in curves]
    assert labels == [
        ["Full FT", "LoRA R=4", "LoRA R=8", "RM-LoRA R=8"],
        ["Full FT", "LoRA R=4"],
        ["Full FT", "LoRA R=8", "RM-LoRA R=8"],
    ]
    assert [fig._suptitle.get_text() if fig._suptitle else None for fig in curves] == [None, "R = 4", "R = 8"]
    for name in ("curves.png", "curves-R4.png", "curves-R8.svg"):
        assert os.path.getsize(os.path.join(out, "figures", name)) > 1000
    assert "figures/curves-R8.png" in text


def test_figures_leave_the_matplotlib_backend_and_pyplot_alone(tmp_path, monkeypatch):
    """A notebook user's backend must survive drawing a report figure (the curves called matplotlib.use("Agg"))."""
    import matplotlib

    from rmlora.harness.plots.curves import plot_curves

    monkeypatch.setitem(matplotlib.rcParams, "backend", "svg")  # a backend the figures would not pick themselves
    history = [{"epoch": e, "eval_loss": 1.0 / e, "eval_accuracy": 0.5, "train_accuracy": 0.6} for e in (1, 2)]
    plot_curves({"LoRA": history}, str(tmp_path / "curves"))
    plot_spectra([("LoRA", 4, _diagnostics([[1.0, 0.5]]))], str(tmp_path / "spectra"))
    assert matplotlib.get_backend() == "svg"
    assert sorted(os.listdir(tmp_path)) == ["curves.png", "curves.svg", "spectra.png", "spectra.svg"]


def test_a_failed_figure_save_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from rmlora.harness.plots.save import save_figure

    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    assert save_figure(fig, str(tmp_path / "f")) == [str(tmp_path / "f.png"), str(tmp_path / "f.svg")]
    before = (tmp_path / "f.png").read_bytes()
    real = Figure.savefig

    def killed(self, fname, **kwargs):  # half an image written, then the process dies
        real(self, fname, **kwargs)
        fname.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", killed)
    with pytest.raises(KeyboardInterrupt):
        save_figure(fig, str(tmp_path / "f"), formats=("png",))
    assert (tmp_path / "f.png").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["f.png", "f.svg"]


def test_every_method_has_a_display_label():
    from rmlora.config import METHODS
    from rmlora.harness.labels import METHOD_LABELS

    assert set(METHOD_LABELS) == set(METHODS)
