#!/usr/bin/env bash
# Creates a ledger, appends entries, prints a signed checkpoint and an inclusion proof,
# and verifies the proof offline against the checkpoint, then proves a key present and
# another absent in the key map. Usage: scripts/demo.sh [DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${MEDLEDGER_BIN:-}" ]; then
    bash "$ROOT/scripts/install-deps.sh"
    (cd "$ROOT" && swift build -c release >&2)
fi
BIN="${MEDLEDGER_BIN:-$(cd "$ROOT" && swift build -c release --show-bin-path)/medledger}"
DIR="${1:-$(mktemp -d)/ledger}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "== creating ledger in $DIR" >&2
KEY="$("$BIN" init "$DIR" --origin demo.medledger.example/log)"
echo "verifier key: $KEY" >&2

echo "== appending 100000 entries in batches of 10000" >&2
for i in $(seq 1 100000); do echo "{\"event\":\"demo\",\"n\":$i}"; done > "$WORK/lines.txt"
"$BIN" append "$DIR" --lines "$WORK/lines.txt"
printf 'keyed payload' | "$BIN" append "$DIR" --key patient/demo/record/1

echo "== signed checkpoint" >&2
"$BIN" checkpoint "$DIR" | tee "$WORK/checkpoint.txt"

echo "== inclusion proof of entry 4242" >&2
"$BIN" prove inclusion "$DIR" --index 4242 | tee "$WORK/proof.json"

echo "== verifying offline against the checkpoint and verifier key" >&2
"$BIN" verify-proof "$WORK/proof.json" --checkpoint "$WORK/checkpoint.txt" --key "$KEY"

echo "== key map: proof that patient/demo/record/1 points at its entry, and that another key is absent" >&2
"$BIN" prove key "$DIR" --key patient/demo/record/1 | tee "$WORK/key.json"
"$BIN" verify-proof "$WORK/key.json" --checkpoint "$WORK/checkpoint.txt" --key "$KEY"
"$BIN" prove key "$DIR" --key patient/demo/record/2 | "$BIN" verify-proof --checkpoint "$WORK/checkpoint.txt" --key "$KEY"
