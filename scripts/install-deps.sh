#!/usr/bin/env bash
# Installs the native libraries MedLedger links (LMDB, OpenSSL libcrypto) when missing, and
# lmdb-utils, whose mdb_dump the tamper test uses as an independent reader.
set -euo pipefail
missing=()
for pkg in liblmdb-dev libssl-dev pkg-config lmdb-utils; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
