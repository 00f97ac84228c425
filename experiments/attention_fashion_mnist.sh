#!/usr/bin/env bash
# Experiment 3 (attention-level LoRA on images): DINOv2-S/14 on Fashion-MNIST at 56 px, LoRA on every linear
# layer of the backbone (attention and MLP, --lora_placement all; the head trains fully beside it); every
# step runs the backbone, so this is tiny: 400 of the 720 train images (fixed folder of
# experiments/make_data.py, validation 80, test 300 of 500), 2 epochs, batch 16.
# lora vs rm-lora; reg_weight / r_hat reused from experiment 1's validation choice (passed as RW / RH).
# Ranks and seeds as far as the CPU budget allowed (RANKS, SEEDS; see docs/RESULTS.md for what ran).
source "$(dirname "$0")/common.sh"
RW=${RW:-0.1}; RH=${RH:-0.5}
CMP=$OUT/attention_fashion_mnist
COMMON=(--model_name_or_path $DINO --task_name image --data_dir $OUT/data/fmnist_attn --image_size 56
  --lora_placement all --lora_alpha 16 --max_train_samples 400 --max_test_samples 300 --train_eval_samples 200
  --learning_rate 2e-3 --num_train_epochs 2 --per_device_train_batch_size 16 --per_device_eval_batch_size 100
  --reg_weight $RW --r_hat $RH --save_strategy no --report_to none --disable_tqdm true --no_progress)
# one compare per (method, seed), side by side (two CPU cores), merged afterwards for `rmlora report`
for S in ${SEEDS:-0}; do for M in lora rm-lora; do
  $RMLORA compare --output_dir $CMP/${M}_s$S --methods $M --ranks ${RANKS:-8} --seeds $S --no_report "${COMMON[@]}" \
    > $OUT/attention_${M}_s$S.log 2>&1 &
done; done
wait
rm -rf $CMP/merged && mkdir -p $CMP/merged/runs
for D in $CMP/*_s*/; do  # every (method, seed) run so far, also from earlier invocations with other SEEDS
  [ -f $D/results.jsonl ] && cp -r $D/runs/. $CMP/merged/runs/ && cat $D/results.jsonl >> $CMP/merged/results.jsonl || true
done
$RMLORA report $CMP/merged
