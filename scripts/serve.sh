#!/usr/bin/env bash
# Set up (first run only) and run mcpsvc in the foreground on its embedded
# default: SQLite under ./var, http://127.0.0.1:3000, development secrets
# generated into ./var on first start. Extra arguments go to `twistd mcpsvc`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/twistd --pidfile= -n mcpsvc "$@"
