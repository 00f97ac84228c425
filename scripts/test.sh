#!/usr/bin/env bash
# Run the test suite (sets up .venv first if it is missing). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import rmlora, pytest" 2>/dev/null; then
  bash scripts/setup.sh
fi
exec .venv/bin/python -m pytest tests "$@"
