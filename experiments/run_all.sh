#!/usr/bin/env bash
# Every run of docs/RESULTS.md, one recipe after the other (`rmlora recipe list` names them), each printing its wall
# time; finished cells are skipped when it is run again. About 3 hours on an idle 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
for R in exp1_fmnist_head exp1_fmnist_head_e120 exp2_tweets_minilm exp3a_fmnist_attention exp3b_fmnist_attention \
    exp4_smollm2_tweets exp5_wordnet_minilm exp6_tweets_large_r exp7_defaults_grid; do
  start=$(date +%s); echo "== results/$R started $(date -u +%H:%M:%S) UTC"
  .venv/bin/rmlora recipe run results/$R --output_dir experiments/out/$R --assets_dir assets --jobs "${JOBS:-2}" \
    --threads_per_cell 1 --no_progress > experiments/out/$R.log 2>&1
  echo "== results/$R finished, wall $(( $(date +%s) - start )) s"
done
