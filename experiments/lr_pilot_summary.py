"""Validation accuracy of each (learning rate, α) of a learning-rate pilot (experiments/exp8_lr_pilot.toml), per
task, and whether the best rate of each task lies on an edge of the grid (then the grid does not bracket it).

    python experiments/lr_pilot_summary.py experiments/out/exp8_lr_pilot
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict

from rmlora.io.run_files import read_results

CELL = re.compile(r"tune/(?P<task>[^/]+)/\w+_learning_rate=(?P<lr>[^_]+)_lora_alpha=(?P<alpha>[^_]+)_s\d+")


def main(folder: str) -> None:
    table = defaultdict(dict)
    for record in read_results(folder).records:
        m = CELL.fullmatch(record["cell"])
        if m:
            metrics = record["metrics"]
            table[m["task"]][(float(m["lr"]), float(m["alpha"]))] = (
                metrics["eval_accuracy"],
                metrics["train_accuracy"],
            )
    for task, cells in table.items():
        lrs = sorted({lr for lr, _ in cells})
        best = max(cells, key=lambda k: cells[k][0])
        edge = " (on the grid's edge)" if best[0] in (lrs[0], lrs[-1]) else ""
        print(f"{task}: best lr {best[0]:g}, α {best[1]:g}, validation {cells[best][0]:.3f}{edge}")
        for alpha in sorted({a for _, a in cells}):
            row = "  ".join(
                f"{lr:g}: {cells[(lr, alpha)][0]:.3f}/{cells[(lr, alpha)][1]:.2f}"
                if (lr, alpha) in cells
                else f"{lr:g}: -"
                for lr in lrs
            )
            print(f"  α {alpha:g}  (validation / train accuracy)  {row}")


if __name__ == "__main__":
    main(sys.argv[1])
