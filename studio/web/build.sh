#!/usr/bin/env bash
# Rebuilds the studio page into src/studio/assets/ (index.html, studio.js, studio.css).
# Needs node >= 18 and npm: installs exactly the versions pinned in package-lock.json, then builds.
# `./build.sh --dev` skips minifying.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error
node build.mjs "$@"
