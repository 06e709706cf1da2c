#!/usr/bin/env bash
# Install npmobile with its test extras and run the whole suite, the slow marker included.
# torch 2.14.1 and torchvision 0.29.1 are a pair that imports together (newer torch wheels lack a
# matching torchvision here); they are the frameworks the parity tests compare against.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e ".[test]"
export KERAS_BACKEND=torch
python -m pytest "$@"
