#!/usr/bin/env bash
# The CPU recipe with the sparse head (docs/results.md, top section): the contrastive stage of
# the small model from scratch on the full build, packed batches, the dense embedding and the
# sparse head together (configs/contrastive_small.py:sparse), then the held-out evaluation
# against BM25, the hybrids and, when `python -m train.fetch_baselines` has put them in
# artifacts/baselines, all-MiniLM-L6-v2 and all-mpnet-base-v2. Needs `bash
# scripts/build_data.sh` first. The training stage resumes from its checkpoints when run again
# (a stage stopped by SIGTERM/SIGINT exits 75: run it again); timings go to
# runs/recipe-small-sparse.times.
#   bash scripts/recipe_small_sparse.sh
source "$(dirname "$0")/env.sh"
PY=.venv/bin/python
T=runs/recipe-small-sparse.times
mkdir -p runs runs/eval
stage() { local name=$1; shift; local t0=$SECONDS; "$@"; echo "$name $((SECONDS - t0)) s" >> "$T"; }
stage contrastive $PY -m train.contrastive --config configs/contrastive_small.py:sparse
baselines=()
if $PY -c "import sentence_transformers" 2>/dev/null; then  # the baselines extra
  for name in all-MiniLM-L6-v2 all-mpnet-base-v2; do
    if [ -d "artifacts/baselines/$name" ]; then
      baselines+=(--baseline "artifacts/baselines/$name")
    fi
  done
fi
stage evaluate $PY -m train.evaluate --model runs/contrastive-small-sparse/export \
    --pairs artifacts/data/pairs --max-query-length 32 --max-doc-length 128 \
    "${baselines[@]}" --baseline-cache runs/eval/baseline-cache \
    --out runs/eval/recipe-small-sparse.json --overwrite
