#!/usr/bin/env bash
# The load benchmark in one command: installs Debian's prometheus-alertmanager when it can (to
# measure the best-known peer in the same run), builds kitebridge in release mode and runs
# benches/load. The report is printed and written to target/load-report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v prometheus-alertmanager >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-alertmanager) >/dev/null 2>&1 \
    || echo "(could not install prometheus-alertmanager; measuring without it)"
fi
cargo bench --locked --bench load
