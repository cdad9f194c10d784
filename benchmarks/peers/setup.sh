#!/usr/bin/env bash
# Build the virtual environment in which benchmarks/compare_peers.py runs the peer packages.
#
#   bash benchmarks/peers/setup.sh            # create or complete the environment (idempotent)
#   bash benchmarks/peers/setup.sh --force    # delete it and build it again
#
# One environment serves all three peers, benchmarks/peers/.venv-peers (git-ignored):
#   astroslam   1.2022.1228.1  (SLAM, Zhang, Liu & Deng 2020; module `slam`)
#   thecannon   0.7.3          (TheCannon by A. Ho; module `TheCannon`)
#   annieslasso 0.2.96         (The Cannon by A. Casey; module `thecannon`, lower case)
# TheCannon and annieslasso install different module names, so they coexist.
#
# astroslam pins scikit-learn==1.2.0 and joblib==1.2.0 and needs numpy < 1.24 (it uses the
# removed aliases np.float/np.int), and scikit-learn 1.2.0 has wheels up to Python 3.11 only;
# the project asks for Python 3.9 (pyenv 3.9.18). The two Cannon packages are pure Python
# and run with the same numpy/scipy. astroslam also declares laspec, ipyparallel, emcee, lmfit,
# pandas and matplotlib as requirements (its package imports most of them at import time),
# so they are installed too; laspec's own "Requires: tensorflow" is legacy metadata that pip ignores.
#
# PYTHON39 overrides the interpreter (default: pyenv's 3.9.18, then python3.9 on PATH).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv-peers"
STAMP="$VENV/.setup-complete"

# The exact set this benchmark was written against; change together with the runner scripts.
PEERS=(
    "astroslam==1.2022.1228.1"
    "thecannon==0.7.3"
    "annieslasso==0.2.96"
)
PINS=(
    "numpy>=1.21,<1.24"
    "scipy>=1.8,<1.12"
    "scikit-learn==1.2.0"
    "joblib==1.2.0"
    "matplotlib<3.9"
    "pandas<2.1"
    "astropy<6"
)

if [[ "${1:-}" == "--force" ]]; then
    rm -rf "$VENV"
fi

want="$(printf '%s\n' "${PEERS[@]}" "${PINS[@]}")"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    echo "peer environment up to date: $VENV"
    exit 0
fi

PY="${PYTHON39:-}"
if [[ -z "$PY" ]]; then
    for cand in /root/.pyenv/versions/3.9.18/bin/python3.9 "$(command -v python3.9 || true)"; do
        if [[ -n "$cand" && -x "$cand" ]] && "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 9)' 2>/dev/null; then
            PY="$cand"
            break
        fi
    done
fi
if [[ -z "$PY" ]]; then
    echo "error: no Python 3.9 found; set PYTHON39=/path/to/python3.9" >&2
    exit 1
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating $VENV with $PY"
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade "pip<25"
# One resolver call, so the pins constrain the peers' own requirements.
"$VENV/bin/python" -m pip install --quiet "${PINS[@]}" "${PEERS[@]}"

# Smoke test: every peer imports through its public entry point.
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import warnings

warnings.simplefilter("ignore")
import numpy, scipy, sklearn  # noqa: E401
from slam import Slam  # noqa: F401  (astroslam)
import TheCannon.dataset, TheCannon.model  # noqa: E401,F401  (thecannon)
import thecannon  # noqa: F401  (annieslasso)

for name in ("astroslam", "thecannon", "annieslasso", "numpy", "scipy", "scikit-learn", "joblib"):
    print(f"  {name} {md.version(name)}")
EOF
printf '%s\n' "$want" > "$STAMP"
echo "peer environment ready: $VENV"
