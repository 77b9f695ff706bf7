#!/usr/bin/env bash
# The end-to-end demo on this Python installation's own sources. Arguments go to train.demo.
source "$(dirname "$0")/env.sh"
exec .venv/bin/python -m train.demo "$@"
