#!/usr/bin/env bash
# Experiment 5 (paper Table 5 / Figure 1 analogue in the many-class regime): all-MiniLM-L6-v2 on WordNet glosses ->
# lexicographer category (rmlora.tasks.wordnet; Debian's wordnet-base, scripts/setup.sh installs it), LoRA only on
# the classification layer (BertForSequenceClassification's classifier reads the pooler's 384-d output, so ΔW is
# 40 x 384 and R = 8, 16, 32 stay below its full rank 40), pooled features computed once and cached
# (--lora_placement head). Data: the 40 categories with >= 300 distinct glosses, 200 train / 40 validation / 60
# test glosses per class (8000 / 1600 / 2400), seed 1234, fixed CSVs shared by every run.
# Methods full (the head alone, 15,400 parameters), lora, r-lora, gm-lora, rm-lora at R = 8 16 32, seeds 0 1 2; the
# same lr / epochs / batch for every method, the penalty normalized (the default reduction) in form RF with λ = RW,
# r̂ = RH (fraction of R) and step_compensation SC: by default squared, 0.1, 0.5, none; docs/RESULTS.md says which
# values it ran with (experiment 7 chose them on WordNet's validation split). Step 0: one full-head run extracts the features (two threads); every later run hits the cache.
# Step 1: one compare over methods x R x seeds, JOBS cells at once (default 2, one thread each), report in $CMP.
source "$(dirname "$0")/common.sh"
EPOCHS=${EPOCHS:-20}; LR=${LR:-5e-2}; RF=${RF:-squared}; RW=${RW:-0.1}; RH=${RH:-0.5}; SC=${SC:-none}
D=$OUT/data/wordnet
[ -f $D/test.csv ] || .venv/bin/python -m rmlora.tasks.wordnet --output_dir $D --train_per_class 200 \
  --validation_per_class 40 --test_per_class 60 --seed 1234
COMMON=(--model_name_or_path "$MINILM" --task_name text --train_file $D/train.csv --validation_file $D/validation.csv
  --test_file $D/test.csv --text_column text --label_column label --max_seq_length 64
  --lora_placement head --feature_cache_dir $OUT/feature_cache --lora_alpha 16
  --learning_rate $LR --num_train_epochs $EPOCHS --per_device_train_batch_size 128 --per_device_eval_batch_size 512
  --train_eval_samples 1000 --save_strategy no --report_to none --disable_tqdm true --no_progress)
CMP=$OUT/table5_wordnet_minilm; [ "$LR/$EPOCHS" = 5e-2/20 ] || CMP=${CMP}_lr${LR}_e$EPOCHS
[ "$RF/$RW/$RH/$SC" = squared/0.1/0.5/none ] || CMP=${CMP}_${RF}_rw${RW}_rh${RH}_$SC
OMP_NUM_THREADS=2 $RMLORA compare --output_dir $OUT/table5_wordnet_extract --methods full --seeds 0 --no_report \
  "${COMMON[@]}" --learning_rate 5e-2 --num_train_epochs 1  # fixed flags: the cache does not depend on them
$RMLORA compare --output_dir $CMP --methods full lora r-lora gm-lora rm-lora --ranks 8 16 32 --seeds ${SEEDS:-0 1 2} \
  --jobs $JOBS --threads_per_cell 1 "${COMMON[@]}" --reg_form $RF --reg_weight $RW --r_hat $RH --step_compensation $SC > $CMP.log 2>&1
.venv/bin/python experiments/summarize.py $CMP > $CMP/summary.md
.venv/bin/python experiments/rank_tolerance.py $CMP > $CMP/rank_tolerance.md
