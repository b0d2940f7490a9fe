#!/usr/bin/env bash
# Builds the HTTP request parser's libFuzzer harness and runs it for FUZZ_SECONDS (default 60):
#   Tests/fuzz/fuzz-http-parser.sh [libFuzzer options]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/.build/fuzz"
mkdir -p "$out/corpus"
export PATH=/opt/swift/usr/bin:$PATH
swiftc -sanitize=fuzzer,address -parse-as-library -O -module-name HTTPParserFuzz \
    "$root/Sources/ControlAPI/HTTPRequestParser.swift" "$root/Tests/fuzz/HTTPRequestParserFuzzer.swift" -o "$out/fuzz-http-parser"
printf 'PUT /drives/root HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n' >"$out/corpus/seed"
"$out/fuzz-http-parser" -max_total_time="${FUZZ_SECONDS:-60}" -max_len=2048 "$@" "$out/corpus"
