"""The pytest fixtures shared by the tests; the builders and the offline set-up (hub flags, one torch thread) are in
helpers.py."""

from __future__ import annotations

import pytest

from helpers import peft_bert


@pytest.fixture
def saved_figures(monkeypatch):
    """The matplotlib figures saved during the test, in order, each once (rmlora.harness.plots.save writes one
    Figure in several formats), kept here so that a test can look at their axes and lines."""
    from matplotlib.figure import Figure

    saved = []
    real_savefig = Figure.savefig

    def savefig(fig, *args, **kwargs):
        if not any(fig is f for f in saved):
            saved.append(fig)
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


@pytest.fixture
def bert_lora():
    return peft_bert()
