#!/usr/bin/env bash
# Experiment 6 (the paper's large-R rank regime, Table 5's rank columns): all-MiniLM-L6-v2 on tweet sentiment with
# LoRA on every linear layer of the encoder (attention and MLP, 36 modules; the head trained fully beside it) at
# R = 32 and 64, methods lora r-lora gm-lora rm-lora, seed(s) SEEDS (default 0), the data and schedule of
# experiment 2 (960 train tweets, 2 epochs, 120 steps), lr LR and the penalty RF / RW / RH / SC (defaults: 2e-3,
# squared, 0.1, 0.5, none; docs/RESULTS.md says which values it ran with). Reports the numerical rank of ΔW at the
# project's tolerance and at 1e-3 / 1e-2 of σ_max, its effective rank and ‖ΔWΔWᵀ − I‖² (experiments/rank_tolerance.py,
# experiments/summarize.py).
source "$(dirname "$0")/common.sh"
LR=${LR:-2e-3}; RF=${RF:-squared}; RW=${RW:-0.1}; RH=${RH:-0.5}; SC=${SC:-none}
CMP=$OUT/rank_tweets_large_r_lr${LR}_${RF}_rw${RW}_rh${RH}_$SC
$RMLORA compare --output_dir $CMP --methods lora r-lora gm-lora rm-lora --ranks 32 64 --seeds ${SEEDS:-0} \
  --jobs $JOBS --threads_per_cell 1 --model_name_or_path "$MINILM" --task_name text \
  --train_file $OUT/data/tweets/tweets_trainpool.csv --test_file $OUT/data/tweets/tweets_test.csv \
  --text_column text --label_column sentiment --validation_split_percentage 10 \
  --max_train_samples 960 --max_eval_samples 200 --max_test_samples 500 --train_eval_samples 120 \
  --max_seq_length 48 --lora_placement all --lora_alpha 16 --learning_rate $LR --num_train_epochs 2 \
  --per_device_train_batch_size 16 --per_device_eval_batch_size 64 --save_strategy no --report_to none \
  --disable_tqdm true --no_progress --reg_form $RF --reg_weight $RW --r_hat $RH --step_compensation $SC > $CMP.log 2>&1
.venv/bin/python experiments/summarize.py $CMP > $CMP/summary.md
.venv/bin/python experiments/rank_tolerance.py $CMP > $CMP/rank_tolerance.md
cat $CMP/summary.md $CMP/rank_tolerance.md
