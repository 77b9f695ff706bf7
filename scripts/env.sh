# Sourced by scripts/test.sh and scripts/demo.sh: a project virtualenv in .venv, installed once
# and re-installed when pyproject.toml changes. EXTRAS selects the optional dependencies.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
EXTRAS="${EXTRAS:-}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.jbert-installed-$(sha1sum pyproject.toml | cut -c1-12)${EXTRAS:+-$EXTRAS}"
if [ ! -f "$stamp" ]; then
  echo "installing jbert${EXTRAS:+[$EXTRAS]} into .venv (first run only)..."
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
  if [ "$EXTRAS" = test ]; then
    # XLA:GPU's plugin for the H100 compiles of the tests, in a folder of its own: among the
    # venv's packages it would make every `import jax` here print CUDA warnings.
    .venv/bin/python -m pip install -q --upgrade --no-deps --target .venv/jax-gpu-compile \
      "jax-cuda12-pjrt==$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("jax"))')"
  fi
  touch "$stamp"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_UPDATE_DOWNLOAD_COUNTS=0
export PYTHONUNBUFFERED=1
