#!/usr/bin/env bash
# The system programs the test suite runs for real, from Debian's packages: redis-server
# (the shared session store), nginx (the gRPC load balancer in front of replicas), curl
# (the README's HTTP example) and prometheus (promtool checks the dashboard's queries;
# bench.dashboard renders it).
# Installs what is missing when run as root; otherwise says what to install.
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v curl >/dev/null || missing+=(curl)
command -v promtool >/dev/null || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "the tests need: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]} (apt)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
