#!/bin/sh
# Build both contracts into build/ (or into $1): clusterjobs.{wasm,abi}, clusterreg.{wasm,abi}.
# proton-asc writes <dir>/target/<name>.contract.{wasm,abi} next to the source; we copy and rename.
# Builds are byte-for-byte reproducible (tests/unit/test_contracts_build.py checks the committed files).
set -eu
cd "$(dirname "$0")"
out="${1:-build}"
mkdir -p "$out"
for c in clusterjobs clusterreg; do
    rm -rf "src/$c/target"
    npx --no-install proton-asc "src/$c/$c.contract.ts" >"src/$c/build.log" 2>&1 || { cat "src/$c/build.log" >&2; exit 1; }
    test -s "src/$c/target/$c.contract.wasm" || { cat "src/$c/build.log" >&2; echo "build of $c produced no wasm" >&2; exit 1; }
    cp "src/$c/target/$c.contract.wasm" "$out/$c.wasm"
    cp "src/$c/target/$c.contract.abi" "$out/$c.abi"
    rm -rf "src/$c/target" "src/$c/build.log"
done
