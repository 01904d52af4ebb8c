#!/usr/bin/env bash
# A private Docker engine for builds and tests on machines where none runs (needs root).
#
#   eval "$(bash scripts/dockerd.sh start)"   # starts dockerd unless one answers; exports DOCKER_HOST
#   bash scripts/dockerd.sh status            # exit 0 (and the export line) if an engine answers
#   bash scripts/dockerd.sh stop              # stops the dockerd that `start` started, by its PID
#
# stdout carries only the `export DOCKER_HOST=...` line, so `eval` can take it; messages go to
# stderr. An engine that already answers (DOCKER_HOST, or the default socket) is used as it is.
# The data root (images, layers, volumes) lies in a stable place, so layers stay cached between
# runs; the runtime state (socket, pidfile, exec root, log) in a folder of its own under /tmp.
# Variables: RNNSERVE_DOCKER_DATA (default /var/tmp/rnnserve-docker),
#            RNNSERVE_DOCKER_RUN (default /tmp/rnnserve-dockerd).
set -euo pipefail

data_root=${RNNSERVE_DOCKER_DATA:-/var/tmp/rnnserve-docker}
run_dir=${RNNSERVE_DOCKER_RUN:-/tmp/rnnserve-dockerd}
socket="$run_dir/docker.sock"
pidfile="$run_dir/dockerd.pid"
log="$run_dir/dockerd.log"
own_host="unix://$socket"

say() { echo "dockerd.sh: $*" >&2; }

answers() { DOCKER_HOST=$1 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# The PID of the dockerd this script started, if it still runs (checked by its command line,
# so that a recycled PID is never taken for it).
own_pid() {
    local pid
    [ -f "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "dockerd .*--pidfile $pidfile" || return 1
    echo "$pid"
}

# The engine to use: DOCKER_HOST if set and answering, else the default socket, else ours.
running_host() {
    if [ -n "${DOCKER_HOST:-}" ] && answers "$DOCKER_HOST"; then
        echo "$DOCKER_HOST"
    elif answers unix:///var/run/docker.sock; then
        echo unix:///var/run/docker.sock
    elif own_pid >/dev/null && answers "$own_host"; then
        echo "$own_host"
    else
        return 1
    fi
}

start() {
    local host pid
    if host=$(running_host); then
        say "an engine answers at $host; using it"
        echo "export DOCKER_HOST=$host"
        return
    fi
    command -v dockerd >/dev/null || { say "dockerd is missing: apt-get install -y docker.io"; exit 1; }
    [ "$(id -u)" = 0 ] || { say "dockerd needs root"; exit 1; }
    mkdir -p "$data_root" "$run_dir/exec"
    rm -f "$socket" "$pidfile"
    # setsid: the daemon outlives this script and the terminal that ran it.
    setsid dockerd \
        --data-root "$data_root" \
        --exec-root "$run_dir/exec" \
        --pidfile "$pidfile" \
        -H "$own_host" \
        >"$log" 2>&1 </dev/null &
    for _ in $(seq 1 120); do
        if answers "$own_host"; then
            pid=$(own_pid || echo "?")
            say "started dockerd (PID $pid, data root $data_root, log $log)"
            echo "export DOCKER_HOST=$own_host"
            return
        fi
        sleep 0.25
    done
    say "dockerd did not answer within 30 s; its log ($log) ends:"
    tail -n 20 "$log" >&2
    exit 1
}

stop() {
    local pid
    if ! pid=$(own_pid); then
        say "no dockerd started by this script is running"
        return
    fi
    kill -TERM "$pid"
    # dockerd stops its containers first (10 s grace each, in parallel).
    for _ in $(seq 1 120); do
        [ -d "/proc/$pid" ] || { say "stopped dockerd (PID $pid)"; return; }
        sleep 0.25
    done
    say "dockerd (PID $pid) still runs after 30 s; killing it"
    kill -KILL "$pid"
}

status() {
    local host
    host=$(running_host) || { say "no engine answers"; exit 1; }
    echo "export DOCKER_HOST=$host"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
