#!/usr/bin/env bash
# Every run of docs/RESULTS.md, one after the other (experiment 3 reuses experiment 1's choice of
# reg_weight / r_hat; experiments 5 and 6 run with the settings experiment 7 chose, written out below), each
# printing its wall time; logs in experiments/out/*.log. About 3 hours on an idle 2-core CPU. Finished cells are
# skipped when it is run again.
set -euo pipefail
cd "$(dirname "$0")"
for E in table5_fashion_mnist_head attention_fashion_mnist table1_tweets_minilm \
    "RW=0.001 RH=0.75 EPOCHS=120 table5_fashion_mnist_head" "N_TRAIN=720 N_TEST=500 EPOCHS=4 attention_fashion_mnist" \
    "TASKS=wordnet defaults_grid" "TASKS=fmnist defaults_grid" "CONFIRM=0 TASKS=tweets defaults_grid" \
    "LR=1e-1 RF=frd RW=0.001 RH=0.75 SC=linear table5_wordnet_minilm" \
    "LR=2e-3 RF=frd RW=0.001 RH=0.75 SC=none rank_tweets_large_r"; do
  start=$(date +%s); echo "== $E started $(date -u +%H:%M:%S) UTC"
  read -ra W <<< "$E"  # "VAR=value ... script": the variables, then the script's name
  env "${W[@]:0:${#W[@]}-1}" bash "${W[-1]}.sh"
  echo "== $E finished $(date -u +%H:%M:%S) UTC, wall $(( $(date +%s) - start )) s"
done
