# shellcheck shell=bash disable=SC2034 # SG_* variables are read by the sourcing script
# Shared helpers for scripts/test.sh and .ci/run. Source it; it defines functions only
# (plus SG_STRICT, SG_SUDO and SG_APT_UPDATED).

# Strict mode: in CI (CI=true) or with SHARDGATE_TEST_STRICT=1, a component that cannot be
# installed or started is a hard failure instead of a loud warning.
sg_is_strict() {
    case "${CI:-}" in true | TRUE | True | 1 | yes) return 0 ;; esac
    [ "${SHARDGATE_TEST_STRICT:-}" = 1 ]
}
if sg_is_strict; then SG_STRICT=1; else SG_STRICT=0; fi

sg_log() { printf '[shardgate-test] %s\n' "$*" >&2; }

sg_warn_loud() {
    {
        printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
        printf '!!! WARNING: %s\n' "$@"
        printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n'
    } >&2
}

sg_die() {
    {
        printf '\n[shardgate-test] ERROR: %s\n' "$@"
    } >&2
    exit 1
}

# A component is missing: exit 1 in strict mode (CI), otherwise warn loudly and return 1 so the
# caller can carry on without it.
sg_missing() {
    if [ "$SG_STRICT" = 1 ]; then
        sg_die "$@" "(strict mode: CI=true or SHARDGATE_TEST_STRICT=1; a missing test component is a failure)"
    fi
    sg_warn_loud "$@" "Tests that need it will SKIP (loudly). In CI this is a failure."
    return 1
}

# How to run things as root: nothing when root, sudo when available, otherwise no way.
SG_SUDO=()
SG_CAN_ROOT=1
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SG_SUDO=(sudo)
    else
        SG_CAN_ROOT=0
    fi
fi

sg_as_root() {
    if [ "$SG_CAN_ROOT" != 1 ]; then
        sg_log "cannot run as root (not root and no sudo): $*"
        return 1
    fi
    "${SG_SUDO[@]}" "$@"
}

# Runs a command as the postgres OS user (peer auth over the Unix socket).
sg_as_postgres() {
    if [ "$(id -un)" = postgres ]; then
        "$@"
    elif [ "$(id -u)" -eq 0 ] && command -v runuser >/dev/null 2>&1; then
        runuser -u postgres -- "$@"
    elif [ "$SG_CAN_ROOT" = 1 ]; then
        "${SG_SUDO[@]}" -u postgres -- "$@"
    else
        return 1
    fi
}

SG_APT_UPDATED=0
# apt-get install, with one `apt-get update` per script run first.
sg_apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        sg_log "apt-get not found; cannot install: $*"
        return 1
    fi
    if [ "$SG_APT_UPDATED" != 1 ]; then
        sg_log "apt-get update"
        sg_as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -q || return 1
        SG_APT_UPDATED=1
    fi
    sg_log "apt-get install -y $*"
    sg_as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "$@"
}

# True when something answers HTTP at the URL (any status code counts).
sg_http_answers() {
    local url=$1
    if command -v curl >/dev/null 2>&1; then
        local code
        code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" 2>/dev/null) || true
        [ -n "$code" ] && [ "$code" != 000 ]
    else
        python3 - "$url" <<'PY' >/dev/null 2>&1
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass
PY
    fi
}

# A free TCP port on 127.0.0.1 (bind to port 0 and let the kernel choose).
sg_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# 8 random lowercase hex characters.
sg_rand_hex() {
    od -An -N4 -tx1 /dev/urandom | tr -d ' \n'
}
