#!/usr/bin/env bash
# Installs what the virtual SR-IOV lab needs and builds netdevsim out of tree.
# Idempotent: a second run only checks. Run as root on Debian bookworm.
#
#   sudo hw-lab/setup.sh            # install + build
#   hw-lab/setup.sh --check         # only report what is missing (exit 1 if anything is)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(dirname "$here")
venv="${NODEAGENT_VENV:-$top/.venv}"
build_root="$here/.build"
backports_file=/etc/apt/sources.list.d/nodeagent-bookworm-backports.sources
min_qemu_major=8

say() { printf 'hw-lab setup: %s\n' "$*"; }
die() { printf 'hw-lab setup: ERROR: %s\n' "$*" >&2; exit 1; }

check_only=0
[ "${1:-}" = "--check" ] && check_only=1

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

apt_updated=0
apt_update() {
    [ "$apt_updated" = 1 ] && return 0
    say "apt-get update"
    apt-get update -qq || die "apt-get update failed"
    apt_updated=1
}

apt_get_install() {  # apt_get_install [-t SUITE] PKG...: install or upgrade, unconditionally
    apt_update
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        || die "apt-get install $* failed"
}

apt_install() {  # apt_install PKG...: install the ones that are missing
    local missing=()
    for p in "$@"; do installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$check_only" = 1 ] && { say "missing packages: ${missing[*]}"; return 1; }
    apt_get_install "${missing[@]}"
}

qemu_major() {
    command -v qemu-system-x86_64 >/dev/null || { echo 0; return; }
    qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p'
}

add_backports() {
    [ -f "$backports_file" ] && return 0
    local src=/etc/apt/sources.list.d/debian.sources uris
    [ -f "$src" ] || die "$src not found: cannot derive the bookworm-backports entry"
    # The URIs of the entry that carries the main 'bookworm' suite.
    uris=$(awk 'BEGIN{RS=""} /Suites:[^\n]*bookworm( |\n|$)/ {print}' "$src" | grep '^URIs:' | head -n1)
    [ -n "$uris" ] || die "no URIs: line for suite bookworm in $src"
    say "adding bookworm-backports suite ($backports_file)"
    cat >"$backports_file" <<EOF
Types: deb
$uris
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt_updated=0
}

[ "$(id -u)" = 0 ] || [ "$check_only" = 1 ] || die "run as root (installs packages)"
grep -q 'VERSION_CODENAME=bookworm' /etc/os-release || say "warning: not Debian bookworm"

status=0

# 1. QEMU >= 8 (igb device) from bookworm-backports.
if [ "$(qemu_major)" -lt "$min_qemu_major" ]; then
    if [ "$check_only" = 1 ]; then
        say "QEMU >= $min_qemu_major (igb device) missing"; status=1
    else
        add_backports
        apt_get_install -t bookworm-backports qemu-system-x86
    fi
fi

# 2. Guest kernel, its headers, the source for netdevsim, guest tools.
apt_install linux-image-amd64 linux-source-6.1 busybox-static pciutils kmod udev \
    make gcc xz-utils || status=1
kver=""
if installed linux-image-amd64; then
    kpkg=$(dpkg-query -W -f='${Depends}' linux-image-amd64 | grep -o 'linux-image-[^ ,]*' | head -n1)
    kver=${kpkg#linux-image-}
    [ -n "$kver" ] || die "cannot tell the kernel version from linux-image-amd64"
    apt_install "linux-headers-$kver" || status=1
    [ -f "/boot/vmlinuz-$kver" ] || die "/boot/vmlinuz-$kver missing after installing $kpkg"
fi

# The guest loads these from /lib/modules/$kver of the (shared) host root.
if [ -n "$kver" ]; then
    for mod in igb igbvf vfio-pci ipvlan 8021q dummy macvlan psample; do
        modinfo -k "$kver" "$mod" >/dev/null 2>&1 || die "kernel $kver has no module $mod"
    done
fi

# 3. virtme-ng in the project venv.
[ -x "$venv/bin/python" ] || die "project venv not found at $venv (create it first)"
if [ ! -x "$venv/bin/vng" ]; then
    if [ "$check_only" = 1 ]; then say "virtme-ng missing in $venv"; status=1
    else say "pip install virtme-ng into $venv"; "$venv/bin/pip" install -q virtme-ng \
        || die "pip install virtme-ng failed"; fi
fi

# 4. netdevsim, out of tree, for $kver.
if [ -n "$kver" ]; then
    out="$build_root/netdevsim-$kver"
    if [ -f "$out/netdevsim.ko" ]; then
        :
    elif [ "$check_only" = 1 ]; then
        say "netdevsim.ko not built for $kver"; status=1
    else
        tarball=/usr/src/linux-source-6.1.tar.xz
        [ -f "$tarball" ] || die "$tarball missing (package linux-source-6.1)"
        [ -d "/lib/modules/$kver/build" ] || die "/lib/modules/$kver/build missing (headers)"
        say "building netdevsim for $kver in $out"
        tmp="$build_root/tmp-netdevsim"
        rm -rf "$tmp" && mkdir -p "$tmp"
        tar -xJf "$tarball" -C "$tmp" --strip-components=1 \
            --wildcards 'linux-source-6.1/drivers/net/netdevsim/*' \
            || die "cannot extract drivers/net/netdevsim from $tarball"
        make -s -C "/lib/modules/$kver/build" M="$tmp/drivers/net/netdevsim" \
            CONFIG_NETDEVSIM=m modules >"$build_root/netdevsim-build.log" 2>&1 \
            || die "netdevsim build failed, see $build_root/netdevsim-build.log"
        mkdir -p "$out"
        cp "$tmp/drivers/net/netdevsim/netdevsim.ko" "$out/"
        rm -rf "$tmp"
    fi
fi

if command -v qemu-system-x86_64 >/dev/null; then
    devices=$(qemu-system-x86_64 -device help 2>/dev/null || true)
    grep -q '^name "igb"' <<<"$devices" \
        || { say "$(qemu-system-x86_64 --version | head -n1) has no igb device"; status=1; }
fi

if [ "$status" != 0 ]; then
    say "lab is NOT ready (see above)"; exit 1
fi
say "ready: kernel $kver, $(qemu-system-x86_64 --version | head -n1), netdevsim $out/netdevsim.ko"
