"""A recorder for multi-process runs of the real `rmlora train` CLI (tests/test_launchers.py).

The launcher tests run `rmlora train` itself under `torchrun` / `accelerate launch`, not a helper script; to see
what each rank did they put this folder on PYTHONPATH, so that Python imports this module at start-up in every
process, and set RMLORA_OBSERVE_DIR. Nothing is imported eagerly (the launcher process stays light): a finder waits
for `rmlora.training.trainer` to be imported and then wraps `RMLoraTrainer.train`, which records in each process

- `rank<r>.safetensors`: the trainable parameters after training (the replica this rank holds);
- `rank<r>.json`: rank and world size as torch.distributed sees them, the directions the rank drew at each optimizer
  step (`RMLora.directions(step)`, called as the step is masked), and every file the rank wrote through
  `rmlora.io.atomic` (metrics.json, history.jsonl, diagnostics.json).

Without RMLORA_OBSERVE_DIR this module does nothing.
"""

import importlib.abc
import importlib.util
import json
import os
import sys

OUT = os.environ.get("RMLORA_OBSERVE_DIR")
TARGET = "rmlora.training.trainer"


def _instrument(module) -> None:
    import torch
    from safetensors.torch import save_file

    from rmlora.io import atomic

    writes = []
    real_write_text = atomic.write_text

    def write_text(path, text):  # write_json and append_jsonl go through here
        writes.append(os.path.basename(path))
        return real_write_text(path, text)

    atomic.write_text = write_text
    real_train = module.RMLoraTrainer.train

    def train(self, *args, **kwargs):
        drawn = {}
        rm = self.rmlora
        real_before = rm.before_optimizer_step

        def before_optimizer_step(optimizer, step):
            if rm.masks_step(step) and step not in drawn:
                drawn[step] = {k: [a.tolist(), b.tolist()] for k, (a, b) in rm.directions(step).items()}
            return real_before(optimizer, step)

        rm.before_optimizer_step = before_optimizer_step
        try:
            return real_train(self, *args, **kwargs)
        finally:
            dist = torch.distributed
            rank = dist.get_rank() if dist.is_initialized() else 0
            weights = {n: p.detach().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}
            save_file(weights, os.path.join(OUT, f"rank{rank}.safetensors"))
            record = {
                "rank": rank,
                "world_size": dist.get_world_size() if dist.is_initialized() else 1,
                "backend": dist.get_backend() if dist.is_initialized() else None,
                "directions": drawn,
                "writes": writes,
                "pid": os.getpid(),
            }
            # written at exit so that the writes after training (metrics.json) are in the list
            import atexit

            def dump():
                with open(os.path.join(OUT, f"rank{rank}.json"), "w", encoding="utf-8") as f:
                    json.dump(record, f)

            atexit.register(dump)

    module.RMLoraTrainer.train = train


class _Loader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _instrument(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


if OUT:
    sys.meta_path.insert(0, _Finder())
