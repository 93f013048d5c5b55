#!/usr/bin/env bash
# Install the servers the test suite runs for real (Debian packages), when missing.
# The tests start their own instances on free loopback ports in temp dirs.
set -euo pipefail
have_redis() { command -v redis-server >/dev/null 2>&1; }
have_pg() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }
if have_redis && have_pg; then
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; else
    echo "install-services: redis-server/postgresql missing and not root: apt-get install -y redis-server postgresql" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq redis-server postgresql >/dev/null
