"""The Zeng & Lee synthetic experiment: the planted Ē_l have the spectra they claim (dense SVD), f0 as a PEFT
model computes the FNN, Eq. 8's bound matches a hand evaluation, and trained LoRA error falls with R."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest
import torch

from rmlora.analysis.synthetic import (
    Run,
    SyntheticConfig,
    SyntheticResult,
    construction_error,
    eq8_bound,
    fnn,
    make_problem,
    run_synthetic,
    sequential,
    theory,
)
from rmlora.cli.main import main as cli_main
from rmlora.errors import ConfigError
from rmlora.harness.plots.save import save_figure

TINY = dict(width=6, depth=2, steps=300, seeds=1, batch_size=128, test_size=512, lr=2e-2)


def test_planted_discrepancies_have_the_stated_spectrum():
    cfg = SyntheticConfig(width=10, depth=3, ranks=(1,), decay=0.6, discrepancy=0.3)
    p = make_problem(cfg, seed=1)
    for W, E, s in zip(p.weights, p.discrepancies, p.spectra):
        dense = np.linalg.svd(E.numpy(), compute_uv=False)
        np.testing.assert_allclose(dense, s.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dense[1:] / dense[:-1], 0.6, rtol=1e-9)
        assert np.linalg.norm(E.numpy()) == pytest.approx(0.3 * np.linalg.norm(W.numpy()), rel=1e-10)
    # a different seed draws different networks
    assert not torch.allclose(make_problem(cfg, seed=2).weights[0], p.weights[0])


def test_peft_sequential_computes_the_fnn():
    cfg = SyntheticConfig(width=5, depth=3, ranks=(1,))
    p = make_problem(cfg, seed=0)
    x = torch.randn(7, 5, dtype=torch.float64)
    # an independent numpy evaluation: ReLU after every layer but the last
    h = x.numpy()
    for l, (W, b) in enumerate(zip(p.weights, p.biases)):
        h = h @ W.numpy().T + b.numpy()
        h = np.maximum(h, 0) if l < 2 else h
    np.testing.assert_allclose(fnn(p.weights, p.biases, x).numpy(), h, rtol=1e-12)
    np.testing.assert_allclose(sequential(p)(x.float()).detach().numpy(), h, rtol=1e-4, atol=1e-5)


def test_truncated_svd_construction_is_exact_at_full_rank():
    cfg = SyntheticConfig(width=6, depth=2, ranks=(1,), test_size=256)
    p = make_problem(cfg, seed=0)
    assert construction_error(p, 6) < 1e-10
    assert construction_error(p, 1) > 0.1 * construction_error(p, 0)
    assert construction_error(p, 0) > 0.1


def test_eq8_bound_matches_a_hand_evaluation():
    cfg = SyntheticConfig(width=4, depth=2, ranks=(1,))
    p = make_problem(cfg, seed=3)
    Wb = [(W + E).numpy() for W, E in zip(p.weights, p.discrepancies)]
    b = [x.numpy() for x in p.biases]
    n1, n2 = np.linalg.norm(Wb[0]), np.linalg.norm(Wb[1])
    root_sigma = math.sqrt(math.sqrt(4))  # sqrt(‖I_4‖_F)
    # β as printed: i=1: √‖Σ‖ ‖W̄1‖ + ‖b̄1‖; i=2: √‖Σ‖ ‖W̄1‖‖W̄2‖ + (Π_{k=2}^{1} = 1)‖b̄1‖ + ‖b̄2‖
    beta = max(
        root_sigma * n1 + np.linalg.norm(b[0]),
        root_sigma * n1 * n2 + np.linalg.norm(b[0]) + np.linalg.norm(b[1]),
        root_sigma,
    )
    for R in (0, 1, 3):
        e = [np.linalg.svd(E.numpy(), compute_uv=False)[R] for E in p.discrepancies]
        growth = max(n1 + e[0], n2 + e[1])
        assert eq8_bound(p, R) == pytest.approx(beta * (growth * e[0] + e[1]), rel=1e-10)
    assert eq8_bound(p, 4) == 0.0


def test_trained_lora_error_decreases_with_rank():
    result = run_synthetic(SyntheticConfig(ranks=(1, 3, 6), methods=("lora",), **TINY), progress=False)
    rows = {row["rank"]: row for row in result.summary()}
    f0 = rows[1]["f0_error"]
    lora = [rows[R]["lora"]["error"] for R in (1, 3, 6)]
    assert lora[0] < f0  # training moved f toward f̄
    assert lora[2] < lora[1] < lora[0]
    assert lora[2] < 0.3 * lora[0]  # R = D can represent every Ē_l exactly
    for run in result.runs:
        assert all(1 <= r <= run.rank for r in run.intrinsic_ranks)
        assert len(run.delta_errors) == 2 and math.isfinite(run.error)
    assert rows[6]["sum_bound_terms"] == 0.0 and rows[1]["sum_bound_terms"] > 0


def test_config_is_validated():
    with pytest.raises(ConfigError, match="ranks"):
        SyntheticConfig(width=4, ranks=(1, 8))
    with pytest.raises(ConfigError, match="methods"):
        SyntheticConfig(methods=("lora", "adalora"))
    with pytest.raises(ConfigError, match="decay"):
        SyntheticConfig(decay=1.5)


def test_cli_json_and_figure(tmp_path, capsys):
    argv = [
        "synthetic",
        "--width",
        "4",
        "--depth",
        "2",
        "--ranks",
        "1,4",
        "--steps",
        "60",
        "--seeds",
        "1",
        "--test_size",
        "128",
        "--output_dir",
        str(tmp_path),
        "--json",
    ]
    assert cli_main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert [row["rank"] for row in out["summary"]] == [1, 4]
    assert {r["method"] for r in out["runs"]} == {"lora", "rm-lora"}
    assert os.path.getsize(tmp_path / "synthetic.png") > 0 and os.path.exists(tmp_path / "synthetic.json")
    assert cli_main(["synthetic", "--width", "4", "--ranks", "1,9", "--output_dir", str(tmp_path)]) == 2
    assert "ranks must lie in" in capsys.readouterr().err


def test_error_std_is_the_sample_std_over_seeds():
    """mean ± std over seeds uses the sample std (ddof = 1), as harness/aggregate does; one seed has none."""
    cfg = SyntheticConfig(width=4, depth=2, ranks=(2,), methods=("lora",), seeds=3, test_size=64)
    theories = []
    for seed in range(3):
        p = make_problem(cfg, seed)
        theories.append({"f0_error": 1.0, "r0": theory(p, 0), "ranks": {2: theory(p, 2)}})
    errors = [1.0, 2.0, 4.0]
    runs = [
        Run("lora", 2, seed, e, [2, 2], [2.0, 2.0], [0.5, 0.5], [[1.0, 1.0]] * 2, 0.0) for seed, e in enumerate(errors)
    ]
    row = SyntheticResult(cfg, theories, runs).summary()[0]["lora"]
    # by hand: mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 42/9, over n − 1 = 2: 7/3
    assert row["error"] == pytest.approx(7 / 3)
    assert row["error_std"] == pytest.approx(math.sqrt(7 / 3), rel=1e-12)
    one = SyntheticResult(cfg, theories[:1], runs[:1]).summary()[0]["lora"]
    assert one["error_std"] is None


def test_figure_keeps_the_backend_and_pyplot_alone_and_is_written_whole(tmp_path, monkeypatch):
    import matplotlib
    from matplotlib.figure import Figure

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        argv = ["synthetic", "--width", "4", "--depth", "2", "--ranks", "1,2", "--steps", "5", "--seeds", "2"]
        assert cli_main([*argv, "--test_size", "32", "--output_dir", str(tmp_path)]) == 0
        assert matplotlib.get_backend() == "svg"
        if "matplotlib.pyplot" in sys.modules:
            assert not sys.modules["matplotlib.pyplot"].get_fignums()
    finally:
        matplotlib.use(before)
    with open(tmp_path / "synthetic.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["synthetic.json", "synthetic.png"]

    def half_written(self, target, **kw):
        target.write(b"\x89PNG")  # save_figure hands savefig an open temp file
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_figure(Figure(), str(tmp_path / "new"), formats=("png",))
    assert sorted(os.listdir(tmp_path)) == ["synthetic.json", "synthetic.png"]
