#!/usr/bin/env bash
# What the benchmark needs on a fresh Debian machine: redis-server, inspircd and prosody (never started as
# services: the bench runs its own on loopback), and Go + redigo for the Go reference when apt has them.
# Idempotent: installs only what is missing. Used by `make bench`.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
APT="$SUDO env DEBIAN_FRONTEND=noninteractive apt-get"

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
dpkg_has() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
apt_has() { apt-cache show "$1" >/dev/null 2>&1; }

# Keep apt from starting the servers as system services while installing (policy-rc.d, restored after).
no_services() {
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    fi
}

want=()
have redis-server || want+=(redis-server)
have inspircd || want+=(inspircd)
have prosody || want+=(prosody)  # the xmpp:N:M@R scenario

updated=0
update() { if [ "$updated" = 0 ]; then $APT update -qq; updated=1; fi; }

if [ "${#want[@]}" -gt 0 ]; then
    echo "bench: installing ${want[*]}"
    no_services
    update
    $APT install -y -qq "${want[@]}"
fi

# The Go reference (optional): Debian's Go and redigo, built by the bench itself (python -m tests.bench).
go_want=()
have go || go_want+=(golang-go)
dpkg_has golang-github-gomodule-redigo-dev || go_want+=(golang-github-gomodule-redigo-dev)
if [ "${#go_want[@]}" -gt 0 ]; then
    update
    ok=1
    for p in "${go_want[@]}"; do apt_has "$p" || ok=0; done
    if [ "$ok" = 1 ]; then
        echo "bench: installing ${go_want[*]} (for the Go reference)"
        $APT install -y -qq "${go_want[@]}" || echo "bench: Go install failed: the Go reference is skipped"
    else
        echo "bench: apt has no ${go_want[*]}: the Go reference is skipped"
    fi
fi

for b in redis-server inspircd prosody; do
    have "$b" || { echo "bench: $b is still missing" >&2; exit 1; }
done
echo "bench: redis-server, inspircd, prosody$(have go && echo ', go') ready"
