#!/usr/bin/env bash
# Experiment 3 (attention-level LoRA on images): DINOv2-S/14 on Fashion-MNIST at 56 px, LoRA on every linear
# layer of the backbone (attention and MLP, --lora_placement all; the head trains fully beside it); every
# step runs the backbone, so this is small: by default 400 of the 720 train images (fixed folder of
# experiments/make_data.py, validation 80, test 300 of 500), 2 epochs, batch 16; the longer run of
# docs/RESULTS.md is `N_TRAIN=720 N_TEST=500 EPOCHS=4 experiments/attention_fashion_mnist.sh` (own folder).
# lora vs rm-lora at R = 4 and 8 (RANKS), seeds 0 1 2 (SEEDS); reg_weight / r_hat reused from experiment 1's
# validation choice ($OUT/table5_hp/CHOSEN, written by table5_fashion_mnist_head.sh), or given as RW / RH.
source "$(dirname "$0")/common.sh"
[ -n "${RW:-}" ] || read RW RH < $OUT/table5_hp/CHOSEN
N_TRAIN=${N_TRAIN:-400}; N_TEST=${N_TEST:-300}; EPOCHS=${EPOCHS:-2}
CMP=$OUT/attention_fashion_mnist; [ "$N_TRAIN/$N_TEST/$EPOCHS" = 400/300/2 ] || CMP=${CMP}_n${N_TRAIN}_t${N_TEST}_e$EPOCHS
need_dino
COMMON=(--model_name_or_path $DINO --task_name image --data_dir $OUT/data/fmnist_attn --image_size 56
  --lora_placement all --lora_alpha 16 --max_train_samples $N_TRAIN --max_test_samples $N_TEST --train_eval_samples 200
  --learning_rate 2e-3 --num_train_epochs $EPOCHS --per_device_train_batch_size 16 --per_device_eval_batch_size 100
  --reg_weight $RW --r_hat $RH --save_strategy no --report_to none --disable_tqdm true --no_progress "${EQ10[@]}")
# one compare, JOBS cells at once (default 2: two CPU cores, one thread each); report in $CMP/report.md
$RMLORA compare --output_dir $CMP --methods lora rm-lora --ranks ${RANKS:-4 8} --seeds ${SEEDS:-0 1 2} \
  --jobs $JOBS --threads_per_cell 1 "${COMMON[@]}" > $CMP.log 2>&1
