#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian machine and run the
# whole suite: the system packages the end-to-end tests use (redis-server,
# nginx, supervisor, chromium, npm), the virtualenv, the MCP conformance
# suite from npm, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v supervisord >/dev/null 2>&1 || need+=(supervisor)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "Installing ${need[*]} ..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "Missing system packages: ${need[*]} (install them, or run as root)" >&2
    exit 1
  fi
fi

bash scripts/setup.sh
# The official MCP conformance suite (and the Node 22 it needs), from npm.
if [ ! -x tests/conformance/node_modules/node/bin/node ] || [ tests/conformance/package.json -nt tests/conformance/node_modules ]; then
  (cd tests/conformance && npm ci --silent --no-audit --no-fund)
fi
# The browser tests fail (never skip) when Chromium is missing.
export MCPSVC_REQUIRE_BROWSER=1
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$status"
