#!/bin/sh
# Sanity test of test-images/k3s-standin on the host: runs it against a temporary config and
# token and checks what it records. usage: test-images/test-k3s-standin.sh
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "test-k3s-standin: FAIL: $*" >&2; exit 1; }

printf 'secret-token\n' >"$T/token"
chmod 0600 "$T/token"
printf '# Written by nodeimg\nserver: "https://10.0.0.1:6443"\ntoken-file: "%s"\n' "$T/token" >"$T/config.yaml"
chmod 0640 "$T/config.yaml"

# It ends in `exec sleep`: stop it once it has had time to record (timeout exits 124).
rc=0
out=$(K3S_STANDIN_DIR=$T/state K3S_STANDIN_CONFIG=$T/config.yaml \
    timeout 3 sh "$HERE/k3s-standin" agent --debug 'two words') || rc=$?
[ "$rc" = 124 ] || fail "expected it to keep running until killed (timeout status 124), got $rc"
[ "$out" = "k3s-standin: started agent --debug two words" ] || fail "stdout: $out"
[ "$(cat "$T/state/args")" = "agent --debug two words" ] || fail "args: $(cat "$T/state/args")"
cmp -s "$T/config.yaml" "$T/state/config.yaml" || fail "config.yaml is not a copy"
[ "$(cat "$T/state/config.mode")" = 640 ] || fail "config.mode: $(cat "$T/state/config.mode")"
[ "$(cat "$T/state/token.mode")" = 600 ] || fail "token.mode: $(cat "$T/state/token.mode")"
want=$(printf 'secret-token\n' | sha256sum | cut -d' ' -f1)
[ "$(cat "$T/state/token-sha256")" = "$want" ] || fail "token-sha256"
grep -rq secret-token "$T/state" && fail "the token itself was recorded"
[ "$(cat "$T/state/hostname")" = "$(hostname)" ] || fail "hostname: $(cat "$T/state/hostname")"

# A second start without a config leaves no stale recording of the first.
rc=0
K3S_STANDIN_DIR=$T/state K3S_STANDIN_CONFIG=$T/none timeout 3 sh "$HERE/k3s-standin" server >/dev/null || rc=$?
[ "$rc" = 124 ] || fail "second start: status $rc"
[ "$(cat "$T/state/args")" = server ] || fail "second args: $(cat "$T/state/args")"
for f in config.yaml config.mode token.mode token-sha256; do
    [ ! -e "$T/state/$f" ] || fail "stale $f after a start without config"
done

# Not a k3s subcommand: refused.
if K3S_STANDIN_DIR=$T/state sh "$HERE/k3s-standin" bogus 2>/dev/null; then fail "accepted 'bogus'"; fi
echo "test-k3s-standin: ok"
