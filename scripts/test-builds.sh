#!/bin/sh
# The whole suite under both builds, side by side: compiled (h11-mypyc and our own modules
# compiled by `make accel`, GATEWAY_ACCEL=mypyc, which stops every process if that build is
# missing or stale) and pure (GATEWAY_H11=pure GATEWAY_ACCEL=pure).
#
# Run one after the other they took 13.5 min on this 2-core machine, most of it spent
# waiting for processes to start, sync or fail over rather than on the CPU. Side by side,
# two runs on the same loopback could pick the same free port between a test choosing it
# and its server binding it, so the pure run gets a network namespace of its own (unshare
# -n): its own loopback and port space, abstract sockets and ELB hand-offs, as two hosts
# would have. Where that is not possible (not root, no unshare or ip), they run one after
# the other as before. TEST_BUILDS=sequential asks for that anyway.
#
# The compiled run prints as it goes; the pure run's output follows it. The exit status
# is non-zero if either failed.
set -u
PY=${PY:-.venv/bin/python}
IP=$(command -v ip || echo /usr/sbin/ip)

sequential() {
    GATEWAY_ACCEL=mypyc "$PY" -m pytest "$@" \
        && GATEWAY_H11=pure GATEWAY_ACCEL=pure "$PY" -m pytest "$@"
}

if [ "${TEST_BUILDS:-parallel}" = sequential ] || [ "$(id -u)" != 0 ] \
    || ! command -v unshare >/dev/null || [ ! -x "$IP" ] \
    || ! unshare -n "$IP" link set lo up 2>/dev/null \
    || ! env --default-signal=INT true 2>/dev/null; then
    sequential "$@"
    exit
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/test-builds-XXXXXX")
pure_log="$work/pure.log"
echo "== compiled (the pure build runs beside it in its own network namespace) =="
GATEWAY_ACCEL=mypyc env --default-signal=INT "$PY" -m pytest "$@" &
compiled=$!
GATEWAY_H11=pure GATEWAY_ACCEL=pure unshare -n sh -c '"$1" link set lo up && shift && exec "$@"' sh \
    "$IP" env --default-signal=INT "$PY" -m pytest "$@" >"$pure_log" 2>&1 &
pure=$!
# A shell starts background commands with SIGINT ignored, which Python keeps; env gives them
# the default back, so Ctrl-C reaches both pytests through the terminal's process group. A
# SIGTERM sent to this script alone is passed on to both, by PID.
trap 'kill -TERM "$compiled" "$pure" 2>/dev/null' TERM
trap ':' INT

finish() {  # wait for one run, through any signal that interrupts the wait
    while :; do
        wait "$1"
        rc=$?
        kill -0 "$1" 2>/dev/null || return "$rc"
    done
}
finish "$compiled"
compiled_rc=$?
finish "$pure"
pure_rc=$?
trap - TERM INT

echo "== GATEWAY_H11=pure GATEWAY_ACCEL=pure =="
cat "$pure_log"
rm -rf "$work"
echo "== compiled: exit $compiled_rc; pure: exit $pure_rc =="
[ "$compiled_rc" = 0 ] && [ "$pure_rc" = 0 ]
