#!/usr/bin/env bash
# Create .venv (if needed) and install mcpsvc with its test extras into it,
# editable (`pip install -e`: a plain PEP 660 install; setup.py explains how
# twistd finds the plugin in the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.mcpsvc-installed
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
# Regenerate the plugin cache so `twistd --help` lists mcpsvc at once.
.venv/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
