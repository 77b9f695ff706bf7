#!/usr/bin/env bash
# The CPU research recipe end to end on the full build (docs/results.md): MLM pretraining, the
# contrastive stage, dense hard-negative mining with that model, a hard-negative pass, and the
# held-out evaluation against BM25 and the hybrids. Needs `bash scripts/build_data.sh` first.
# Each stage resumes from its checkpoints when run again (the evaluation is redone); timings go
# to runs/recipe-small.times. A training stage stopped by SIGTERM/SIGINT exits 75: run it again.
#   bash scripts/recipe_small.sh
source "$(dirname "$0")/env.sh"
PY=.venv/bin/python
T=runs/recipe-small.times
mkdir -p runs runs/eval
stage() { local name=$1; shift; local t0=$SECONDS; "$@"; echo "$name $((SECONDS - t0)) s" >> "$T"; }
stage pretrain $PY -m train.pretrain --config configs/pretrain_small.py
stage contrastive $PY -m train.contrastive --config configs/contrastive_small.py
[ -d artifacts/data/pairs-mined ] || stage mine $PY -m train.mine_negatives \
    --model runs/contrastive-small/export --pairs artifacts/data/pairs \
    --out artifacts/data/pairs-mined --max-pairs 15000 --negatives 3
stage hardneg $PY -m train.contrastive --config configs/contrastive_small.py:hardneg
stage evaluate $PY -m train.evaluate --model runs/contrastive-small-hardneg/export \
    --pairs artifacts/data/pairs --max-query-length 32 --max-doc-length 128 \
    --out runs/eval/recipe-small.json --overwrite
