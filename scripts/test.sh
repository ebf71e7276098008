#!/usr/bin/env bash
# Installs the native packages when missing, then runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
swift test
