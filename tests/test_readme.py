"""The README's quickstarts run as written."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def quickstart(name: str) -> str:
    text = open(README, encoding="utf-8").read()
    m = re.search(rf"<!-- quickstart:{name} -->\s*```python\n(.*?)```", text, re.S)
    assert m, f"README has no quickstart:{name} block"
    return m.group(1)


@pytest.mark.parametrize("name", ["torch", "trainer", "optimizer"])
def test_quickstart_runs(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(quickstart(name), f"README:{name}", "exec"), {"__name__": "__readme__"})
    if name == "torch":
        assert (tmp_path / "my-adapter" / "adapter_model.safetensors").exists()
        assert (tmp_path / "my-adapter" / "rmlora_config.json").exists()
    elif name == "optimizer":
        assert (tmp_path / "my-adapter" / "adapter_model.safetensors").exists()
    else:
        assert (tmp_path / "out" / "final" / "adapter_model.safetensors").exists()
