#!/usr/bin/env bash
# Experiment 1 (paper Table 5 / Figure 1 analogue): DINOv2-S/14 on Fashion-MNIST at 56 px (4x4 patches + CLS;
# 112 px feature extraction was too slow on this shared 2-core CPU), LoRA only on the classification layer
# (Dinov2ForImageClassification's head reads [CLS, mean patch token], so ΔW is 10 x 768), backbone features
# cached once (--lora_placement head).
# Data (experiments/make_data.py, seed 1234, class-balanced): 1800 train / 200 validation (both from the
# official train split) / 1000 test (official test split), a fixed imagefolder so the cached features are
# shared by all seeds (instead of a per-seed --validation_split_percentage carve).
# Methods lora, r-lora, gm-lora, rm-lora at R = 2, 4, 8, and full fine-tuning of the head (all 7,690 head
# parameters trained, backbone frozen), seeds 0 1 2, same lr / epochs / batch for every method.
# Step 1: reg_weight x r_hat grid for rm-lora at R = 4, seed 0, chosen on the validation accuracy.
# Step 2: the comparison with the chosen values; one compare per seed, run side by side (two CPU cores),
# then merged into one folder for `rmlora report`.
source "$(dirname "$0")/common.sh"
EPOCHS=${EPOCHS:-30}
COMMON=(--model_name_or_path $DINO --task_name image --data_dir $OUT/data/fmnist_head --image_size 56
  --lora_placement head --feature_cache_dir $OUT/feature_cache --lora_alpha 16
  --learning_rate 5e-3 --num_train_epochs $EPOCHS --per_device_train_batch_size 64 --per_device_eval_batch_size 512
  --train_eval_samples 1000 --save_strategy no --report_to none --disable_tqdm true --no_progress)
hp() { for RH in 0.5 0.75; do
  $RMLORA compare --output_dir $OUT/table5_hp/rw${1}_rh${RH} --methods rm-lora --ranks 4 --seeds 0 --no_report \
    "${COMMON[@]}" --reg_weight $1 --r_hat $RH; done; }
hp 0.01 > $OUT/table5_hp_0.01.log 2>&1 & hp 0.1 > $OUT/table5_hp_0.1.log 2>&1 & wait
read RW RH < <(.venv/bin/python - $OUT/table5_hp <<'PY'
import json, glob, os, sys
best = None
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*", "results.jsonl"))):
    r = json.loads(open(f).readline())
    tag = os.path.basename(os.path.dirname(f)); rw, rh = tag[2:].split("_rh")
    acc = r["metrics"]["eval_accuracy"]
    print(f"{tag}: eval_accuracy {acc:.4f}", file=sys.stderr)
    if best is None or acc > best[0]:  # ties: the first (smaller reg_weight, smaller r_hat)
        best = (acc, rw, rh)
print(best[1], best[2])
PY
)
echo "chosen on validation: reg_weight=$RW r_hat=$RH"
CMP=$OUT/table5_fashion_mnist_head
for S in ${SEEDS:-0 1 2}; do
  $RMLORA compare --output_dir $CMP/seed$S --methods full lora r-lora gm-lora rm-lora --ranks 2 4 8 --seeds $S \
    --no_report "${COMMON[@]}" --reg_weight $RW --r_hat $RH > $OUT/table5_seed$S.log 2>&1 &
done
wait
rm -rf $CMP/merged && mkdir -p $CMP/merged/runs
for S in ${SEEDS:-0 1 2}; do cp -r $CMP/seed$S/runs/. $CMP/merged/runs/; cat $CMP/seed$S/results.jsonl >> $CMP/merged/results.jsonl; done
$RMLORA report $CMP/merged
