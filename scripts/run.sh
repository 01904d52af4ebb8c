#!/usr/bin/env bash
# `make run`: serve the model repository at once and train the zoo models it lacks into
# it in the background; the server rescans the repository every 2 s, so each model is
# served as soon as its package is written (docs/models.md, "The first run").
#   scripts/run.sh BIN MODELS HOST PORT HTTP_PORT
set -uo pipefail
bin=$1 models=$2 host=$3 port=$4 http_port=$5
mkdir -p "$models" runs
"$bin/rnnserve-server" --models="$models" --host="$host" --port="$port" \
  --openai-port="$http_port" --repository-poll-s=2 &
server=$!
# Ctrl-C reaches the server and the trainers alike (one process group): the server shuts
# down gracefully, a trainer stops and leaves no package (nor its "training" mark).
trap 'kill -TERM "$server" 2>/dev/null' TERM
if ! "$bin/rnnserve-train" zoo --out="$models" --runs=runs; then
  echo "run: some zoo models failed to train (see runs/<name>.log); serving the others" >&2
fi
if kill -0 "$server" 2>/dev/null; then
  echo "run: the zoo is trained; serving on $host:$port (OpenAI HTTP: $http_port; Ctrl-C stops)" >&2
fi
wait "$server"
