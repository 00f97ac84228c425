#!/usr/bin/env bash
# Experiment 2 (paper Table 1 analogue): all-MiniLM-L6-v2 on the tweet sentiment corpus (3 classes),
# LoRA on every linear layer of the encoder (head trained fully beside it), R = 4 and 8.
# Data: experiments/make_data.py splits the CSV once (seed 1234) into a held-apart test file (1000 rows)
# and a train pool; each run carves 10 % of the pool as validation (seeded by --seed) and keeps seeded
# random subsets: 960 train, 200 validation, 500 test, train metric on 120 train rows; 2 epochs (120 steps).
# Sized for a 2-core CPU: one cell takes about 2 minutes on one thread.
# Step 1: reg_weight x r_hat grid for rm-lora at R = 8, seeds 0 and 1 (one compare, --grid), chosen on the mean
#         validation accuracy (--select_on validation; $OUT/table1_hp/selection.json); the same values go to
#         r-lora (reg_weight) and gm-lora (r_hat).
# Step 2: methods full lora adalora sora r-lora gm-lora rm-lora, R = 4 8, seeds 0 1 2, one compare running JOBS
#         cells at once (default 2: two CPU cores, one thread each), report in $CMP/report.md. AdaLoRA / SoRA start
#         at 2R (the grid's default, as in the paper's tables); full fine-tuning has its own lr
#         (--override full:learning_rate=5e-5).
source "$(dirname "$0")/common.sh"
CMP=$OUT/table1_tweets_minilm
COMMON=(--model_name_or_path "$MINILM" --task_name text
  --train_file $OUT/data/tweets/tweets_trainpool.csv --test_file $OUT/data/tweets/tweets_test.csv
  --text_column text --label_column sentiment --validation_split_percentage 10
  --max_train_samples 960 --max_eval_samples 200 --max_test_samples 500 --train_eval_samples 120
  --max_seq_length 48 --lora_placement all --lora_alpha 16
  --learning_rate 1e-3 --num_train_epochs 2 --per_device_train_batch_size 16 --per_device_eval_batch_size 64
  --save_strategy no --report_to none --disable_tqdm true --no_progress
  --override full:learning_rate=5e-5 "${EQ10[@]}")
PAR=(--jobs $JOBS --threads_per_cell 1)
$RMLORA compare --output_dir $OUT/table1_hp --methods rm-lora --ranks 8 --seeds 0 1 "${PAR[@]}" --no_report \
  --grid reg_weight=0.001,0.01,0.1 --grid r_hat=0.5,0.75 --select_on validation "${COMMON[@]}" > $OUT/table1_hp.log 2>&1
read RW RH < <(chosen $OUT/table1_hp rm-lora reg_weight r_hat)
echo "chosen on validation: reg_weight=$RW r_hat=$RH"
$RMLORA compare --output_dir $CMP --methods full lora adalora sora r-lora gm-lora rm-lora --ranks 4 8 \
  --seeds ${SEEDS:-0 1 2} "${PAR[@]}" "${COMMON[@]}" --reg_weight $RW --r_hat $RH > $OUT/table1.log 2>&1
