#!/usr/bin/env bash
# Run the tests (sets up .venv first if it is missing). Extra arguments go to pytest.
#   bash scripts/test.sh          # the unit tests: tiny random models, project-made files, 2 processes (pytest-xdist)
#   bash scripts/test.sh --rest   # the rest: multi-process / multi-node / kill-and-resume (-m slow) and the real
#                                 # offline assets (-m integration), one at a time (they start processes of their own)
#   bash scripts/test.sh --all    # both, one after the other (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import rmlora, pytest, xdist" 2>/dev/null; then
  bash scripts/setup.sh
fi
PYTEST=(.venv/bin/python -m pytest tests)
case "${1:-}" in
  --rest) shift; exec "${PYTEST[@]}" -m "slow or integration" "$@" ;;
  --all) shift; "${PYTEST[@]}" -m "not slow and not integration" -n 2 "$@"; exec "${PYTEST[@]}" -m "slow or integration" "$@" ;;
  *) exec "${PYTEST[@]}" -m "not slow and not integration" -n 2 "$@" ;;
esac
