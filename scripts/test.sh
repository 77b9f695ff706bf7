#!/usr/bin/env bash
# The test suite on CPU with 8 fake devices (tests/conftest.py sets them). Arguments go to pytest:
#   bash scripts/test.sh                 # everything CI runs, slow tests included
#   bash scripts/test.sh -m "not slow"   # the quick default suite (< 5 minutes on 2 cores)
EXTRAS=test source "$(dirname "$0")/env.sh"
exec .venv/bin/python -m pytest "$@"
