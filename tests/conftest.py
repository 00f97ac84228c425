"""The pytest fixtures shared by the tests; the builders and the offline set-up (hub flags, one torch thread) are in
helpers.py."""

from __future__ import annotations

import pytest

from helpers import peft_bert


@pytest.fixture
def closed_figures(monkeypatch):
    """The figures closed through matplotlib.pyplot.close during the test (rmlora.harness.plots.curves closes what it
    draws), kept here so that a test can look at their axes and lines."""
    import matplotlib.pyplot as plt

    closed = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (closed.append(fig), real_close(fig)))
    return closed


@pytest.fixture
def bert_lora():
    return peft_bert()
