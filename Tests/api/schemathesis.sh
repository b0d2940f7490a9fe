#!/usr/bin/env bash
# Runs schemathesis (PyPI) against docs/openapi.yaml on a control API served on a Unix socket.
#
#   Tests/api/schemathesis.sh SOCKET                 a server already listening on SOCKET (e.g. a
#                                                    firmware VM under `swiftkvm run --api-socket SOCKET`)
#   Tests/api/schemathesis.sh --mock MOCK-SERVER     starts MOCK-SERVER (.build/debug/api-mock-server)
#                                                    on a socket of its own and stops it afterwards
#   Tests/api/schemathesis.sh --vm SWIFTKVM FIRMWARE  runs a real firmware VM (`SWIFTKVM run --firmware
#                                                    FIRMWARE --mode user --api-socket ...`) and tests
#                                                    every operation but PUT /actions, whose Stop and
#                                                    Kill would end it, and PUT /snapshot/create, which
#                                                    would write files at the paths it makes up (the
#                                                    mock covers both); PATCH /vm really pauses and
#                                                    resumes its vCPUs
#
# schemathesis speaks TCP only: socat bridges a port on 127.0.0.1 (chosen free) to the socket.
# Checks: no 5xx (not_a_server_error), every status documented for its operation, every body's
# content type and schema as documented, and data outside the schema refused with a 4xx.
# SCHEMATHESIS_MAX_EXAMPLES (default 100) and SCHEMATHESIS_TIME_LIMIT (seconds, default 600)
# bound the run; SCHEMATHESIS_REPORT_DIR, when set, receives a JUnit report; extra arguments after
# the socket go to `schemathesis run`.
set -euo pipefail

usage() { echo "usage: $0 SOCKET [schemathesis args] | $0 --mock PATH-TO-api-mock-server [schemathesis args] | $0 --vm PATH-TO-swiftkvm FIRMWARE [schemathesis args]" >&2; exit 2; }
[ $# -ge 1 ] || usage
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/swiftkvm-schemathesis.XXXXXX")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

if [ "$1" = "--mock" ]; then
    [ $# -ge 2 ] && [ -x "$2" ] || usage
    socket="$work/api.sock"
    "$2" "$socket" >"$work/mock.log" 2>&1 &
    pids+=($!)
    shift 2
elif [ "$1" = "--vm" ]; then
    [ $# -ge 3 ] && [ -x "$2" ] && [ -f "$3" ] || usage
    socket="$work/vm.sock"
    "$2" run --firmware "$3" --mode user --api-socket "$socket" --time-limit "${SCHEMATHESIS_TIME_LIMIT:-600}" \
        >"$work/vm.console" 2>"$work/vm.log" &
    vm=$!
    pids+=($vm)
    shift 3
    set -- --exclude-path /actions --exclude-path /snapshot/create "$@"
else
    socket=$1
    shift
fi
command -v socat >/dev/null || { echo "$0: socat is missing: apt-get install socat (make deps installs it)" >&2; exit 1; }
command -v schemathesis >/dev/null || { echo "$0: schemathesis is missing: pip install schemathesis (make api-check installs it)" >&2; exit 1; }

for _ in $(seq 1 100); do [ -S "$socket" ] && break; sleep 0.1; done
[ -S "$socket" ] || { echo "$0: no socket at $socket after 10 s" >&2; cat "$work/mock.log" 2>/dev/null >&2; exit 1; }

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$socket" &
pids+=($!)
for _ in $(seq 1 50); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2).close()" 2>/dev/null && break
    sleep 0.1
done

echo "schemathesis $(schemathesis --version | awk '{print $NF}') against $socket (bridged at 127.0.0.1:$port)"
status=0
# Run from the temporary folder: schemathesis keeps a cache (.schemathesis/) in its working folder.
case "${SCHEMATHESIS_REPORT_DIR:-}" in
    "") report="" ;;
    /*) report=$SCHEMATHESIS_REPORT_DIR ;;
    *) report=$PWD/$SCHEMATHESIS_REPORT_DIR ;;
esac
(cd "$work" && exec timeout "${SCHEMATHESIS_TIME_LIMIT:-600}" schemathesis run "$root/docs/openapi.yaml" \
    --url "http://127.0.0.1:$port" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection \
    --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-100}" --seed 1 --workers 1 --request-timeout 10 \
    ${report:+--report junit --report-dir "$report"} --no-color "$@") || status=$?
if [ -n "${vm:-}" ]; then
    # The VM must have lived through every request: still running, and it still answers.
    if ! kill -0 "$vm" 2>/dev/null; then
        echo "$0: the VM died during the run:" >&2
        cat "$work/vm.log" >&2
        exit 1
    fi
    curl -sf --unix-socket "$socket" http://localhost/ >/dev/null || { echo "$0: the VM no longer answers" >&2; exit 1; }
    echo "the VM ran through the whole run ($(wc -c <"$work/vm.console") console bytes) and still answers"
fi
exit $status
