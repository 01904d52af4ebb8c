#!/usr/bin/env bash
# Put the CPU build of torch 2.13.0 for CPython 3.11 (the images' Python) into docker/wheels/
# and print its file name, the value for the trainer's build arg TORCH_WHEEL:
#
#   export TORCH_WHEEL=$(bash docker/fetch-torch-wheel.sh)
#   docker-compose build trainer
#
# Where it comes from, first that works: docker/wheels/ itself; pip's configured find-links
# folders (PIP_FIND_LINKS, pip config), where machines that keep wheels on disk have it;
# PyTorch's CPU index (TORCH_INDEX_URL). Never PyPI, whose torch for Linux is the CUDA build.
set -euo pipefail

version=2.13.0
pattern="torch-${version}+cpu-cp311-cp311-manylinux_*_x86_64.whl"
here=$(cd "$(dirname "$0")" && pwd)
dest="$here/wheels"
index_url=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
python=${PYTHON:-python3}

found() { compgen -G "$dest/$pattern" | head -n 1 || true; }

if [ -z "$(found)" ]; then
    # Folders pip is configured to find wheels in: PIP_FIND_LINKS and `pip config`, both
    # whitespace-separated lists.
    links="${PIP_FIND_LINKS:-} $("$python" -m pip config get global.find-links 2>/dev/null || true)"
    for dir in $links; do
        dir=${dir#file://}
        [ -d "$dir" ] || continue
        wheel=$(compgen -G "$dir/$pattern" | head -n 1 || true)
        if [ -n "$wheel" ]; then
            # A hard link costs nothing when both lie on one file system.
            ln -f "$wheel" "$dest/" 2>/dev/null || cp -f "$wheel" "$dest/"
            break
        fi
    done
fi

if [ -z "$(found)" ]; then
    echo "fetch-torch-wheel: downloading torch==$version (CPU) from $index_url" >&2
    "$python" -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version 3.11 --implementation cp --abi cp311 \
        --platform manylinux_2_28_x86_64 \
        --index-url "$index_url" --dest "$dest" "torch==$version" >&2
fi

wheel=$(found)
if [ -z "$wheel" ]; then
    echo "fetch-torch-wheel: no $pattern found or downloaded" >&2
    exit 1
fi
basename "$wheel"
