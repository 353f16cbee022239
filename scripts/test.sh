#!/usr/bin/env bash
# The one test command (README): lints, then every test, with a real Ironic running.
#
# Installs ironic==39.0.0 from PyPI into a cached venv on first use (about 40 s), starts
# it standalone on a free loopback port, runs the whole suite against it, and stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*" >&2; }

# A clean clone builds once: incremental caches would only cost disk (several GiB).
export CARGO_INCREMENTAL=0

step "format"
cargo fmt --check

step "lint"
cargo clippy --locked --all-targets -- -D warnings

step "ring only (no aws-lc in the dependency tree)"
if grep -q '^name = "aws-lc' Cargo.lock; then
    echo "aws-lc found in Cargo.lock: pick exactly one rustls provider (ring)" >&2
    exit 1
fi

step "boot test tools (QEMU, iPXE ROMs, tgt, nasm)"
# tests/boot_proof.rs boots a VM from an iSCSI volume; it fails (never skips) without these.
boot_packages="qemu-system-x86 ipxe-qemu tgt nasm"
boot_tools_present() {
    local tool
    for tool in qemu-system-x86_64 tgtd tgtadm nasm; do
        PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null || return 1
    done
    [[ -f /usr/lib/ipxe/qemu/efi-virtio.rom || -f /usr/share/qemu/efi-virtio.rom ]]
}
if ! boot_tools_present; then
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        echo "the boot test needs $boot_packages: run \`apt-get install -y $boot_packages\` as root" >&2
        exit 1
    fi
    echo "installing $boot_packages" >&2
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $boot_packages >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $boot_packages >/dev/null; }
    boot_tools_present || { echo "installing $boot_packages failed" >&2; exit 1; }
fi

step "Ironic (standalone, loopback)"
state=$(mktemp -d "${TMPDIR:-/tmp}/bootvolume-ironic.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
stop_ironic() { scripts/ironic-standalone.sh stop "$state" || true; }
trap stop_ironic EXIT
url=$(scripts/ironic-standalone.sh start "$state" "$port")
export BOOTVOLUME_TEST_IRONIC_URL="$url"
export BOOTVOLUME_TEST_IRONIC_HTTP_ROOT="$state/httpboot"
echo "Ironic at $url" >&2

step "tests"
cargo nextest run --locked --no-fail-fast
