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
    # The compilers for TPU and GPU targets (tests/test_compile_targets.py), each in a folder of
    # its own (jbert/training/compile_plugins.py): among the venv's packages they would make
    # every JAX program here print TPU and CUDA start-up warnings.
    for platform in tpu gpu; do
      .venv/bin/python -m pip install -q --upgrade --no-deps \
        --target ".venv/jax-compile-plugins/$platform" \
        "$(.venv/bin/python -c "from jbert.training.compile_plugins import package; print(package('$platform'))")"
    done
  fi
  touch "$stamp"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_UPDATE_DOWNLOAD_COUNTS=0
export PYTHONUNBUFFERED=1
