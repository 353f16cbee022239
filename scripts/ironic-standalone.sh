#!/usr/bin/env bash
# ironic-standalone.sh - run a real OpenStack Ironic (API + embedded conductor) from PyPI on
# loopback, for the reconciler's integration tests and for trying `bootvolume ironic-apply`.
#
# Usage:
#   scripts/ironic-standalone.sh install                  # build/refresh the cached venv; prints its path
#   scripts/ironic-standalone.sh start  STATE_DIR [PORT]  # prints http://127.0.0.1:PORT on stdout
#   scripts/ironic-standalone.sh stop   STATE_DIR
#   scripts/ironic-standalone.sh status STATE_DIR         # exit 0 + URL when up, 1 when not
#
# PORT defaults to a free port chosen by the kernel. STATE_DIR (created when missing) holds
# ironic.conf, ironic.sqlite, ironic.log, ironic.pid, ironic.url, httpboot/ and tftpboot/.
# httpboot/ is Ironic's http_root: after a deploy, httpboot/<node-uuid>/config is the iPXE script.
#
# Environment:
#   IRONIC_VERSION        PyPI version           (default 39.0.0)
#   IRONIC_PYTHON         interpreter, >= 3.11   (default python3)
#   IRONIC_VENV           venv (a shared cache)  (default ${XDG_CACHE_HOME:-~/.cache}/ironic-standalone/ironic-$IRONIC_VERSION)
#   IRONIC_READY_TIMEOUT  seconds to wait for the API to answer (default 90)
#   IRONIC_HTPASSWD       when set (a bcrypt htpasswd file), auth_strategy=http_basic instead of noauth
#
# The instance: SQLite, rpc_transport=none (single `ironic` process), hardware type fake-hardware
# (plus manual-management), boot interfaces fake/ipxe/pxe, storage interfaces
# noop/cinder/external/fake, no DHCP, no cleaning. Only 127.0.0.1 is ever bound.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IRONIC_VERSION=${IRONIC_VERSION:-39.0.0}
IRONIC_PYTHON=${IRONIC_PYTHON:-python3}
IRONIC_VENV=${IRONIC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ironic-standalone/ironic-$IRONIC_VERSION}
IRONIC_READY_TIMEOUT=${IRONIC_READY_TIMEOUT:-90}
MICROVERSION=1.89

log() { echo "ironic-standalone: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

venv_ok() {
    [[ -x "$IRONIC_VENV/bin/ironic" && "$(cat "$IRONIC_VENV/.installed" 2>/dev/null)" == "$IRONIC_VERSION" ]]
}

cmd_install() {
    venv_ok && return 0
    mkdir -p "$(dirname "$IRONIC_VENV")"
    # Parallel test binaries may all ask for the venv: one installs, the others wait.
    exec 9>"$IRONIC_VENV.lock"
    flock 9
    if ! venv_ok; then
        "$IRONIC_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || die "ironic $IRONIC_VERSION needs Python >= 3.11; set IRONIC_PYTHON"
        log "installing ironic==$IRONIC_VERSION into $IRONIC_VENV (first time only, about 40 s)"
        rm -rf "$IRONIC_VENV"
        "$IRONIC_PYTHON" -m venv "$IRONIC_VENV"
        "$IRONIC_VENV/bin/pip" install --quiet --disable-pip-version-check "ironic==$IRONIC_VERSION" >&2
        echo "$IRONIC_VERSION" >"$IRONIC_VENV/.installed"
    fi
    exec 9>&-
}

free_port() {
    "$IRONIC_VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_free() {
    "$IRONIC_VENV/bin/python" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

write_conf() { # state port
    local state=$1 port=$2 auth=noauth auth_extra=""
    if [[ -n "${IRONIC_HTPASSWD:-}" ]]; then
        auth=http_basic
        auth_extra="http_basic_auth_user_file = $IRONIC_HTPASSWD"
    fi
    cat >"$state/ironic.conf" <<EOF
[DEFAULT]
auth_strategy = $auth
$auth_extra
rpc_transport = none
host = ironic-standalone
enabled_hardware_types = fake-hardware,manual-management
enabled_boot_interfaces = fake,ipxe,pxe
enabled_deploy_interfaces = fake,direct,ramdisk
# As metal3's Ironic: a node enrolled without a deploy interface (as baremetal-operator
# enrolls it) gets \`direct\`, whose adoption writes the node's iPXE boot script (\`fake\` does not).
default_deploy_interface = direct
enabled_management_interfaces = fake,noop
enabled_power_interfaces = fake
enabled_storage_interfaces = noop,cinder,external,fake
default_storage_interface = noop
enabled_network_interfaces = noop
default_network_interface = noop
enabled_inspect_interfaces = no-inspect,fake
enabled_vendor_interfaces = no-vendor,fake
enabled_console_interfaces = no-console
enabled_raid_interfaces = no-raid,agent
enabled_bios_interfaces = no-bios
enabled_rescue_interfaces = no-rescue
enabled_firmware_interfaces = no-firmware
# The default (60 s) makes SIGTERM wait for in-flight tasks far too long in tests.
graceful_shutdown_timeout = 5
minimum_memory_warning_only = true
debug = false
use_stderr = true

[api]
host_ip = 127.0.0.1
port = $port

[conductor]
automated_clean = false
graceful_shutdown_timeout = 5

[database]
connection = sqlite:///$state/ironic.sqlite

[dhcp]
dhcp_provider = none

[deploy]
http_url = http://127.0.0.1:9
# Must exist before start: the ipxe boot interface writes boot.ipxe here when it loads.
http_root = $state/httpboot

[pxe]
tftp_root = $state/tftpboot
EOF
}

# Ready means the conductor registered its drivers, not just that the API answers.
is_ready() { # url
    local auth=()
    [[ -n "${IRONIC_READY_USER:-}" ]] && auth=(-u "$IRONIC_READY_USER")
    curl -sf -m 2 "${auth[@]}" -H "X-OpenStack-Ironic-API-Version: $MICROVERSION" "$1/v1/drivers" 2>/dev/null \
        | grep -q '"fake-hardware"'
}

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

cmd_status() { # state
    local pid url
    pid=$(cat "$1/ironic.pid" 2>/dev/null || true)
    url=$(cat "$1/ironic.url" 2>/dev/null || true)
    if alive "$pid" && [[ -n "$url" ]] && is_ready "$url"; then
        echo "$url"
        return 0
    fi
    return 1
}

cmd_stop() { # state
    local state=$1 pid
    pid=$(cat "$state/ironic.pid" 2>/dev/null || true)
    if alive "$pid"; then
        # `ironic` runs under setsid: its process group is the master plus its worker, nothing else.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
        if alive "$pid"; then
            log "still running after 10 s, sending SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
        fi
        log "stopped (pid $pid)"
    fi
    rm -f "$state/ironic.pid" "$state/ironic.url"
}

cmd_start() { # state [port]
    local state=$1 port=${2:-} url pid
    mkdir -p "$state"
    state=$(cd "$state" && pwd)
    if cmd_status "$state" >/dev/null; then
        log "already running"
        cat "$state/ironic.url"
        return 0
    fi
    cmd_stop "$state" 2>/dev/null
    cmd_install
    [[ -n "$port" ]] || port=$(free_port)
    [[ "$port" =~ ^[0-9]+$ ]] || die "bad port: $port"
    port_free "$port" || die "127.0.0.1:$port is already in use"
    url="http://127.0.0.1:$port"
    mkdir -p "$state/httpboot" "$state/tftpboot"
    write_conf "$state" "$port"
    local sync=create_schema
    [[ -f "$state/ironic.sqlite" ]] && sync=upgrade
    "$IRONIC_VENV/bin/ironic-dbsync" --config-file "$state/ironic.conf" "$sync" >"$state/dbsync.log" 2>&1 \
        || { cat "$state/dbsync.log" >&2; die "ironic-dbsync $sync failed"; }
    # Write-ahead logging: readers no longer block the writer. With the default rollback
    # journal, parallel tests made Ironic answer 500 "database is locked" now and then.
    # The mode is stored in the database file, so it holds for every connection.
    "$IRONIC_VENV/bin/python" -c 'import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute("PRAGMA journal_mode=WAL")' \
        "$state/ironic.sqlite" || die "cannot switch $state/ironic.sqlite to WAL"
    # scripts/ironic-immediate.py: Ironic with SQLite transactions that begin IMMEDIATE (why
    # in that file): without it, concurrent writes now and then fail with a 500.
    (cd "$state" && exec setsid "$IRONIC_VENV/bin/python" "$here/ironic-immediate.py" --config-file "$state/ironic.conf" \
        >"$state/ironic.log" 2>&1 </dev/null) &
    pid=$!
    echo "$pid" >"$state/ironic.pid"
    for _ in $(seq 1 $((IRONIC_READY_TIMEOUT * 4))); do
        if ! alive "$pid"; then
            tail -n 30 "$state/ironic.log" >&2
            rm -f "$state/ironic.pid"
            die "ironic exited during start-up"
        fi
        # A worker that cannot load its drivers is re-forked forever and HTTP never answers.
        if grep -q 'DriverLoadError\|exited with status 1' "$state/ironic.log" 2>/dev/null; then
            grep -m3 'DriverLoadError' "$state/ironic.log" >&2 || tail -n 30 "$state/ironic.log" >&2
            cmd_stop "$state"
            die "ironic worker failed to start"
        fi
        if is_ready "$url"; then
            echo "$url" >"$state/ironic.url"
            log "ready at $url (pid $pid, log $state/ironic.log)"
            echo "$url"
            return 0
        fi
        sleep 0.25
    done
    tail -n 30 "$state/ironic.log" >&2
    cmd_stop "$state"
    die "not ready after ${IRONIC_READY_TIMEOUT}s"
}

case "${1:-}" in
    install) cmd_install; echo "$IRONIC_VENV" ;;
    start) [[ $# -ge 2 ]] || die "usage: $0 start STATE_DIR [PORT]"; cmd_start "$2" "${3:-}" ;;
    stop) [[ $# -ge 2 ]] || die "usage: $0 stop STATE_DIR"; cmd_stop "$2" ;;
    status) [[ $# -ge 2 ]] || die "usage: $0 status STATE_DIR"; cmd_status "$2" ;;
    *) sed -n '2,24p' "$0" >&2; exit 2 ;;
esac
