"""Choose reg_weight and r_hat from a validation grid made by `hp_grid` (experiments/common.sh).

Every sub-folder rw<REG_WEIGHT>_rh<R_HAT>/ of GRID_DIR holds an `rmlora compare` of one rm-lora setting over one
or more seeds; the setting with the highest validation accuracy (`eval_accuracy`, mean over its seeds) wins.
Ties go to the smaller reg_weight, then the smaller r_hat. Never reads a test metric.

    python experiments/choose_hp.py GRID_DIR      # prints "REG_WEIGHT R_HAT"; the grid table goes to stderr
"""

import glob
import json
import os
import statistics
import sys

grid = []
for path in glob.glob(os.path.join(sys.argv[1], "rw*_rh*", "results.jsonl")):
    tag = os.path.basename(os.path.dirname(path))
    rw, rh = tag[2:].split("_rh")
    accs = [json.loads(line)["metrics"]["eval_accuracy"] for line in open(path) if line.strip()]
    grid.append((float(rw), float(rh), rw, rh, accs))
if not grid:
    sys.exit(f"choose_hp.py: no rw*_rh*/results.jsonl under {sys.argv[1]}: run the grid first")
best = None
for _, _, rw, rh, accs in sorted(grid):
    mean = statistics.mean(accs)
    print(
        f"reg_weight {rw} r_hat {rh}: validation accuracy {mean:.4f} over {len(accs)} seed(s) "
        f"({', '.join(f'{a:.4f}' for a in accs)})",
        file=sys.stderr,
    )
    if best is None or mean > best[0]:
        best = (mean, rw, rh)
print(best[1], best[2])
