#!/usr/bin/env bash
# The full data build of docs/data.md in one command: fetch Go, Java, Rust, Ruby, Perl, CMake,
# Lua, PHP, TeX (Debian) and JavaScript/TypeScript (npm) sources into data/sources, then build
# the corpus (> 500 MB, 26 languages), the tokenizer (identifiers cut into words, for
# retrieval: docs/results.md) and the docstring/code pairs into artifacts/data; measured times
# in docs/data.md ("Build time"), plus the downloads. Needs apt-get and npm. A second build onto
# artifacts/data is refused unless asked for:
#   bash scripts/build_data.sh [extra train.prepare_corpus flags, e.g. --overwrite]
source "$(dirname "$0")/env.sh"
bash scripts/fetch_sources.sh data/sources
exec .venv/bin/python -m train.prepare_corpus --out artifacts/data --fetched data/sources \
    --max-bytes 600000000 --pair-workers 2 --split-identifiers "$@"
