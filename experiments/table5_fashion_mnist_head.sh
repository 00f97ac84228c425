#!/usr/bin/env bash
# Experiment 1 (paper Table 5 / Figure 1 analogue): DINOv2-S/14 on Fashion-MNIST at IMAGE_SIZE px (default 112:
# 8x8 patches + CLS), LoRA only on the classification layer (Dinov2ForImageClassification's head reads
# [CLS, mean patch token], so ΔW is 10 x 768), backbone features computed once and cached (--lora_placement head).
# Data (experiments/make_data.py, seed 1234, class-balanced): 1800 train / 200 validation (both from the
# official train split) / 1000 test (official test split), a fixed imagefolder so the cached features are
# shared by all seeds (instead of a per-seed --validation_split_percentage carve).
# Methods lora, r-lora, gm-lora, rm-lora at R = 2, 4, 8, and full fine-tuning of the head (all 7,690 head
# parameters trained, backbone frozen), seeds 0 1 2, same lr / epochs / batch for every method.
# Step 0: one full-head run (its own folder) extracts the features into the cache (two threads); every later
#         run hits the cache.
# Step 1: reg_weight x r_hat grid for rm-lora at R = 4, seeds 0 1 2 (one compare, --grid), chosen on the mean
#         validation accuracy (--select_on validation); the choice is also written to $OUT/table5_hp/CHOSEN
#         (reused by experiment 3).
# Step 2: the comparison with the chosen values, one compare running JOBS cells at once (default 2), report in
#         $CMP/report.md.
# The grid runs at the defaults (112 px, 60 epochs); the check that the differences persist once the curves
# are flat is `RW=0.001 RH=0.75 EPOCHS=120 experiments/table5_fashion_mnist_head.sh` (own folder, no grid).
source "$(dirname "$0")/common.sh"
EPOCHS=${EPOCHS:-60}; IMAGE_SIZE=${IMAGE_SIZE:-112}
need_dino
COMMON=(--model_name_or_path $DINO --task_name image --data_dir $OUT/data/fmnist_head --image_size $IMAGE_SIZE
  --lora_placement head --feature_cache_dir $OUT/feature_cache --lora_alpha 16
  --learning_rate 5e-3 --num_train_epochs $EPOCHS --per_device_train_batch_size 64 --per_device_eval_batch_size 512
  --train_eval_samples 1000 --save_strategy no --report_to none --disable_tqdm true --no_progress "${EQ10[@]}")
CMP=$OUT/table5_fashion_mnist_head; [ "$IMAGE_SIZE/$EPOCHS" = 112/60 ] || CMP=${CMP}_${IMAGE_SIZE}px_e$EPOCHS
OMP_NUM_THREADS=2 $RMLORA compare --output_dir $OUT/table5_extract_${IMAGE_SIZE}px_e$EPOCHS --methods full --seeds 0 --no_report "${COMMON[@]}"
PAR=(--jobs $JOBS --threads_per_cell 1)
if [ -z "${RW:-}" ]; then  # RW / RH given: reuse that choice, no grid (the longer run of docs/RESULTS.md)
  $RMLORA compare --output_dir $OUT/table5_hp --methods rm-lora --ranks 4 --seeds 0 1 2 "${PAR[@]}" --no_report \
    --grid reg_weight=0.001,0.01,0.1 --grid r_hat=0.5,0.75 --select_on validation "${COMMON[@]}" > $OUT/table5_hp.log 2>&1
  read RW RH < <(chosen $OUT/table5_hp rm-lora reg_weight r_hat)
  echo "$RW $RH" > $OUT/table5_hp/CHOSEN
fi
echo "reg_weight=$RW r_hat=$RH"
$RMLORA compare --output_dir $CMP --methods full lora r-lora gm-lora rm-lora --ranks 2 4 8 --seeds ${SEEDS:-0 1 2} \
  "${PAR[@]}" "${COMMON[@]}" --reg_weight $RW --r_hat $RH > $CMP.log 2>&1
