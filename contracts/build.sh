#!/bin/sh
# Build both contracts into build/ (or into the directory given as $1):
#   clusterjobs.wasm clusterjobs.abi clusterreg.wasm clusterreg.abi
# proton-asc writes <dir>/target/<name>.contract.{wasm,abi} next to the source; we copy and rename.
# The two builds run in parallel (about 10 s each). Builds are byte-for-byte reproducible:
# tests/unit/test_contracts_build.py rebuilds in a temporary directory and compares with build/.
set -eu
cd "$(dirname "$0")"
out="${1:-build}"
mkdir -p "$out"

build_one() {
    c="$1"
    rm -rf "src/$c/target"
    if ! npx --no-install proton-asc "src/$c/$c.contract.ts" >"src/$c/build.log" 2>&1 \
        || ! test -s "src/$c/target/$c.contract.wasm" || ! test -s "src/$c/target/$c.contract.abi"; then
        cat "src/$c/build.log" >&2
        echo "build.sh: building $c failed" >&2
        return 1
    fi
    cp "src/$c/target/$c.contract.wasm" "$out/$c.wasm"
    cp "src/$c/target/$c.contract.abi" "$out/$c.abi"
    rm -rf "src/$c/target" "src/$c/build.log"
}

build_one clusterjobs & jobs_pid=$!
build_one clusterreg & reg_pid=$!
status=0
wait "$jobs_pid" || status=1
wait "$reg_pid" || status=1
exit "$status"
