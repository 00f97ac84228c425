#!/usr/bin/env bash
# Experiment 7: the evidence behind RMLoraConfig's defaults (issue "defaults that help"), on three real tasks:
#   wordnet  MiniLM-L6, WordNet gloss -> lexicographer category (40 classes), LoRA on the head (cached features), R 16
#   fmnist   DINOv2-S/14, Fashion-MNIST 112 px (10 classes), LoRA on the head (cached features), R 4
#   tweets   MiniLM-L6, tweet sentiment (3 classes), LoRA on every encoder linear layer, R 8
# All at the default penalty (reg_form squared, reg_reduction normalized), seeds 0 and 1, chosen on validation
# accuracy (mean over the seeds), never on test.
# Stage lr: lora, r-lora, gm-lora and rm-lora (squared form, λ 0.1, r̂ R/2: the defaults before this experiment,
#           pinned) over the same 3-point learning-rate grid, the masked
#           ones with and without step_compensation=linear (each masked step's change scaled by R/r̂); tweets: lora
#           and rm-lora only, for time. Gives both protocols: each method at its own validated lr, and every method
#           at LoRA's lr (the paper's one-lr protocol).
# Stage reg: rm-lora at its stage-lr choice of (lr, step_compensation) over reg_form {squared, frd} x reg_weight
#           {0.001, 0.01, 0.1, 1} x r_hat {0.5, 0.75} (tweets: reg_weight {0.001, 0.01} only, for time; stage lr ran 0.1).
#           squared pulls every singular value of A and B to 1, so it fixes the scale of ΔW = (α/R)·BA; frd (the
#           released code's cosine form) only asks the directions to be orthogonal, whatever their lengths.
# Stage confirm: rm-lora at the stage-reg choice of penalty, over the lr grid again, with and without compensation
#           (stage lr chose rm-lora's lr at λ 0.1; this removes that dependence); gm-lora / r-lora are not rerun.
#           CONFIRM=0 skips it (docs/RESULTS.md says for which task it was skipped).
# Summary: experiments/defaults_summary.py writes $OUT/defaults/summary.md (docs/RESULTS.md, experiment 7).
#   TASKS="wordnet fmnist" bash experiments/defaults_grid.sh    # a subset
source "$(dirname "$0")/common.sh"
need_dino
D=$OUT/data/wordnet
[ -f $D/test.csv ] || .venv/bin/python -m rmlora.tasks.wordnet --output_dir $D --train_per_class 200 \
  --validation_per_class 40 --test_per_class 60 --seed 1234
RUN=(--save_strategy no --report_to none --disable_tqdm true --no_progress --jobs $JOBS --threads_per_cell 1)
WORDNET=(--model_name_or_path "$MINILM" --task_name text --train_file $D/train.csv --validation_file $D/validation.csv
  --test_file $D/test.csv --text_column text --label_column label --max_seq_length 64
  --lora_placement head --feature_cache_dir $OUT/feature_cache --lora_alpha 16 --ranks 16
  --num_train_epochs 20 --per_device_train_batch_size 128 --per_device_eval_batch_size 512 --train_eval_samples 1000)
FMNIST=(--model_name_or_path $DINO --task_name image --data_dir $OUT/data/fmnist_head --image_size 112
  --lora_placement head --feature_cache_dir $OUT/feature_cache --lora_alpha 16 --ranks 4
  --num_train_epochs 60 --per_device_train_batch_size 64 --per_device_eval_batch_size 512 --train_eval_samples 1000)
TWEETS=(--model_name_or_path "$MINILM" --task_name text
  --train_file $OUT/data/tweets/tweets_trainpool.csv --test_file $OUT/data/tweets/tweets_test.csv
  --text_column text --label_column sentiment --validation_split_percentage 10
  --max_train_samples 960 --max_eval_samples 200 --max_test_samples 500 --train_eval_samples 120
  --max_seq_length 48 --lora_placement all --lora_alpha 16 --ranks 8
  --num_train_epochs 2 --per_device_train_batch_size 16 --per_device_eval_batch_size 64)
declare -A LRS=([wordnet]=1e-2,3e-2,1e-1 [fmnist]=1e-3,3e-3,1e-2 [tweets]=1e-3,2e-3,4e-3)
declare -A RHATS=([wordnet]=0.5,0.75 [fmnist]=0.5,0.75 [tweets]=0.5,0.75)
declare -A RWS=([wordnet]=0.001,0.01,0.1,1 [fmnist]=0.001,0.01,0.1,1 [tweets]=0.001,0.01)
declare -A METHODS=([wordnet]="lora r-lora gm-lora rm-lora" [fmnist]="lora r-lora gm-lora rm-lora" [tweets]="lora rm-lora")
mkdir -p $OUT/defaults
for T in ${TASKS:-wordnet fmnist tweets}; do
  declare -n ARGS=${T^^}
  G=$OUT/defaults/$T
  start=$(date +%s)
  # head tasks: one run extracts the backbone features into the cache (two threads) before the cells share it
  [ $T = tweets ] || OMP_NUM_THREADS=2 $RMLORA compare --output_dir $G/extract --methods full --seeds 0 --no_report \
    --save_strategy no --report_to none --disable_tqdm true --no_progress "${ARGS[@]}" --num_train_epochs 1 > $G.extract.log 2>&1
  $RMLORA compare --output_dir $G/lr --methods ${METHODS[$T]} --seeds 0 1 --no_report "${RUN[@]}" "${ARGS[@]}" \
    --reg_form squared --reg_weight 0.1 --r_hat 0.5 --grid learning_rate=${LRS[$T]} \
    --grid rm-lora:step_compensation=none,linear \
    --grid gm-lora:step_compensation=none,linear --select_on validation \
    > $G.lr.log 2>&1
  read LR SC < <(chosen $G/lr rm-lora learning_rate step_compensation)
  echo "$T: rm-lora chose lr=$LR step_compensation=$SC on validation"
  $RMLORA compare --output_dir $G/reg --methods rm-lora --seeds 0 1 --no_report "${RUN[@]}" "${ARGS[@]}" \
    --learning_rate $LR --step_compensation $SC --grid reg_form=squared,frd --grid reg_weight=${RWS[$T]} --grid r_hat=${RHATS[$T]} \
    --select_on validation > $G.reg.log 2>&1
  read RF RW RH < <(chosen $G/reg rm-lora reg_form reg_weight r_hat)
  echo "$T: rm-lora chose reg_form=$RF reg_weight=$RW r_hat=$RH on validation"
  [ "${CONFIRM:-1}" = 0 ] || $RMLORA compare --output_dir $G/confirm --methods rm-lora --seeds 0 1 --no_report "${RUN[@]}" "${ARGS[@]}" \
    --reg_form $RF --reg_weight $RW --r_hat $RH --grid learning_rate=${LRS[$T]} --grid step_compensation=none,linear \
    --select_on validation > $G.confirm.log 2>&1
  echo "$T: wall $(( $(date +%s) - start )) s"
done
.venv/bin/python experiments/defaults_summary.py $OUT/defaults > $OUT/defaults/summary.md
cat $OUT/defaults/summary.md
