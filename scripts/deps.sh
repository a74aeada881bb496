#!/usr/bin/env bash
# Debian packages that `make demo` and the tests need (README "Quick start"): the CNI plugins and iproute2 for the
# e2e tier and the demo, gcc and libc6-dev for the native CNI plugin (the package build compiles it when a C
# compiler is there; without one it falls back to the Python plugin and the tests skip the native runs).
#
#   scripts/deps.sh              as root: apt-get install what is missing; otherwise name it and fail
#   scripts/deps.sh --optional   the same, but only warn when not root (`make test`: without root the e2e tier
#                                skips itself, so the other tiers still run)
#
# Installs nothing that is already there, so a machine with everything runs no apt-get at all.
set -euo pipefail

optional=0
[[ "${1:-}" == "--optional" ]] && optional=1
PYTHON=${PYTHON:-python3}
packages=(containernetworking-plugins iproute2 gcc libc6-dev)

installed() {
    if command -v dpkg-query >/dev/null 2>&1; then
        dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
    else
        case "$1" in
            containernetworking-plugins) [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/portmap ]] ;;
            iproute2) command -v ip >/dev/null 2>&1 ;;
            gcc) command -v cc >/dev/null 2>&1 ;;
            libc6-dev) [[ -f /usr/include/stdio.h ]] ;;
            *) return 1 ;;
        esac
    fi
}

missing=()
for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
done
command -v make >/dev/null 2>&1 || missing+=(make)
# Debian's python3 needs python3-venv for `python3 -m venv` (ensurepip); only checked while there is no .venv.
if [[ ! -x .venv/bin/python ]] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi

if ((${#missing[@]} == 0)); then
    echo "deps: Debian packages present: ${packages[*]}"
    exit 0
fi

if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
    exit 0
fi

{
    echo "deps: missing Debian packages: ${missing[*]}"
    if command -v apt-get >/dev/null 2>&1; then
        echo "deps: install them as root:  sudo apt-get install -y ${missing[*]}   (or run this as root)"
    else
        echo "deps: this is not Debian/Ubuntu: install the equivalents (CNI plugins in /usr/lib/cni, iproute2's ip)"
    fi
} >&2
if ((optional)); then
    echo "deps: continuing without them: the e2e tests will skip themselves" >&2
    exit 0
fi
exit 1
