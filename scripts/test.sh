#!/usr/bin/env bash
# Installs the native packages when missing, then runs the test suite: everything in a
# debug build, and the tree algorithms again in an optimized build (benchmarks and users run
# optimized code, and the optimizer has exposed a defect that debug builds hid).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
swift test
swift test -c release --filter "LedgerCryptoTests|MerkleLogTests|SparseMerkleTests|LabelEncodingTests|AuditEncoding|JSONCheckTests|RecordLayoutTests"
