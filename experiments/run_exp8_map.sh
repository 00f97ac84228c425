#!/usr/bin/env bash
# Experiment 8 (docs/RESULTS.md): the map, one task-size at a time so that each finished size is complete (tune,
# selection, final) before the next starts. Resumable: rerun the same command after an interruption.
#   bash experiments/run_exp8_map.sh [OUTPUT_DIR] [TASK ...]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-experiments/out/exp8_map}
shift || true
tasks=("$@")
if [ ${#tasks[@]} -eq 0 ]; then
  tasks=(wordnet_10 fmnist_10 wordnet_50 fmnist_50 fmnist_500 wordnet_200 tweets_10 tweets_50 tweets_200)
fi
rmlora=${RMLORA:-.venv/bin/rmlora}
for task in "${tasks[@]}"; do
  echo "== $task $(date -u +%H:%M:%S)"
  "$rmlora" recipe run results/exp8_map --output_dir "$out" --assets_dir assets --tasks "$task" \
    --jobs 2 --threads_per_cell 1 --no_progress
done
echo "== done $(date -u +%H:%M:%S)"
