#!/usr/bin/env bash
# Create .venv (if needed) and install mcpsvc with its test extras into it.
# The "compat" editable mode exposes twisted/plugins/ to twistd.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.mcpsvc-installed
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  .venv/bin/python -m pip install -q -e '.[test]' --config-settings editable_mode=compat
  touch "$stamp"
fi
# Regenerate the plugin cache so `twistd --help` lists mcpsvc at once.
.venv/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
