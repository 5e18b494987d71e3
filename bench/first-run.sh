#!/usr/bin/env bash
# A newcomer's first minutes, timed: clones this repository afresh (no target/, no store),
# runs the first command README.md gives, and posts the README's example webhook until it is
# answered 202. Prints the seconds from the clone to that answer. The crates themselves are
# taken from cargo's local registry cache, as on a machine that has fetched them once.
#
#   bash bench/first-run.sh [runs]     # default 1 run
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
runs="${1:-1}"
cmd="$(awk '/^```sh/ { inside = 1; next } inside { print; exit }' "$repo/README.md" | sed 's/ *#.*//')"
echo "README's first command: $cmd"
for run in $(seq 1 "$runs"); do
    work="$(mktemp -d)"
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    start="$(date +%s.%N)"
    git clone -q "$repo" "$work/kitebridge"
    cd "$work/kitebridge"
    KITEBRIDGE_LISTEN="127.0.0.1:$port" CARGO_TARGET_DIR="$work/kitebridge/target" \
        setsid bash -c "$cmd" >"$work/serve.log" 2>&1 &
    server=$!
    status=""
    while [ "$status" != 202 ]; do
        if ! kill -0 "$server" 2>/dev/null; then
            echo "the command ended before answering:" >&2
            tail -20 "$work/serve.log" >&2
            exit 1
        fi
        sleep 0.5
        status="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/webhooks/buildkite" \
            -H 'X-Buildkite-Token: local-dev-token' -H 'X-Buildkite-Event: build.finished' \
            --data-binary @tests/fixtures/buildkite/build.finished.json || true)"
    done
    end="$(date +%s.%N)"
    kill -- -"$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    cd "$repo"
    rm -rf "$work"
    python3 -c "print('run $run: fresh clone -> first 202 in %.0f s' % ($end - $start))"
done
