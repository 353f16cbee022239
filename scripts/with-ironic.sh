#!/usr/bin/env bash
# with-ironic.sh - run a command with a real Ironic up on loopback, then stop it.
#
#   scripts/with-ironic.sh cargo test --test ironic_live
#   scripts/with-ironic.sh cargo nextest run
#
# Installs ironic (cached venv, ~40 s the first time), starts it on a free 127.0.0.1 port in a
# temporary state dir, exports BOOTVOLUME_TEST_IRONIC_URL and BOOTVOLUME_TEST_IRONIC_HTTP_ROOT
# (what the live tests read), runs the command, and stops Ironic whatever the outcome. The
# command's exit code is returned. Ironic's log is printed when the command fails.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[[ $# -ge 1 ]] || { sed -n '2,11p' "$0" >&2; exit 2; }
state=$(mktemp -d "${TMPDIR:-/tmp}/bootvolume-ironic.XXXXXX")
cleanup() { "$here/ironic-standalone.sh" stop "$state" || true; rm -rf "$state"; }
trap cleanup EXIT
"$here/ironic-standalone.sh" install >/dev/null
BOOTVOLUME_TEST_IRONIC_URL=$("$here/ironic-standalone.sh" start "$state")
export BOOTVOLUME_TEST_IRONIC_URL BOOTVOLUME_TEST_IRONIC_HTTP_ROOT="$state/httpboot"
rc=0
"$@" || rc=$?
if [[ $rc -ne 0 ]]; then echo "--- last lines of $state/ironic.log" >&2; tail -n 40 "$state/ironic.log" >&2 || true; fi
exit $rc
