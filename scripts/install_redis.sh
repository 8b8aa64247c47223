#!/usr/bin/env bash
# Make a redis-server binary available for the Redis backend tests and benchmark.
# Idempotent: does nothing when redis-server (or valkey-server) is already on PATH; otherwise
# installs the distribution's redis-server with apt-get when we are root. Says what it did.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
  echo "install_redis: redis-server already installed: $(command -v redis-server) ($(redis-server --version | head -n1))"
  exit 0
fi
if command -v valkey-server >/dev/null 2>&1; then
  echo "install_redis: valkey-server already installed: $(command -v valkey-server)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_redis: redis-server is missing and apt-get is not available; install redis-server" \
       "with this system's package manager (the Redis tests are skipped until then)" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install_redis: redis-server is missing; run as root: apt-get install -y redis-server" \
       "(the Redis tests are skipped until then)" >&2
  exit 1
fi
echo "install_redis: installing redis-server with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The package's service is not started here (no init system in containers; the tests start
# their own server on a free loopback port).
apt-get install -y -qq --no-install-recommends redis-server >/dev/null
echo "install_redis: installed $(command -v redis-server) ($(redis-server --version | head -n1))"
