# shellcheck shell=bash disable=SC2034 # SG_* variables are read by scripts/test.sh
# Install / find / start the real components the test-suite talks to. Source after common.sh.
# Each sg_ensure_* returns 0 when the component is usable, and otherwise calls sg_missing
# (exit 1 in strict mode / CI, loud warning + return 1 outside CI).

SG_SOFTHSM_MODULE_DEFAULT=/usr/lib/softhsm/libsofthsm2.so
SG_MOTO_REQUIREMENT='moto[server]>=5,<6'
SG_PG_HOST=127.0.0.1
SG_PG_PORT=5432

# ---------------------------------------------------------------------------------------------
# SoftHSM2
# ---------------------------------------------------------------------------------------------
sg_softhsm_ok() {
    command -v softhsm2-util >/dev/null 2>&1 && [ -f "$SG_SOFTHSM_MODULE" ]
}

sg_ensure_softhsm() {
    SG_SOFTHSM_MODULE=${SHARDGATE_TEST_SOFTHSM_MODULE:-$SG_SOFTHSM_MODULE_DEFAULT}
    if ! sg_softhsm_ok; then
        sg_log "SoftHSM2 missing (softhsm2-util or $SG_SOFTHSM_MODULE): installing softhsm2"
        sg_apt_install softhsm2 || true
    fi
    if ! sg_softhsm_ok; then
        sg_missing "SoftHSM2 is not available: need softhsm2-util and $SG_SOFTHSM_MODULE (apt-get install softhsm2)."
        return 1
    fi
    sg_log "SoftHSM2: $(softhsm2-util --version 2>/dev/null | head -n1), module $SG_SOFTHSM_MODULE"
}

# ---------------------------------------------------------------------------------------------
# moto_server
# ---------------------------------------------------------------------------------------------
# Sets SG_MOTO_CMD (array) and SG_MOTO_VERSION when some interpreter really runs moto's server.
SG_MOTO_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/shardgate/moto-venv"

# $1: a python interpreter. Succeeds when it can import moto.server (flask & co included).
sg_moto_try_python() {
    local py=$1 exe
    command -v "$py" >/dev/null 2>&1 || [ -x "$py" ] || return 1
    "$py" -c 'import moto.server' >/dev/null 2>&1 || return 1
    exe=$("$py" -c 'import sys; print(sys.executable)' 2>/dev/null) || return 1
    [ -n "$exe" ] || return 1
    SG_MOTO_CMD=("$exe" -m moto.server)
    SG_MOTO_PYTHON=$exe
    SG_MOTO_VERSION=$("$exe" -c 'import moto; print(moto.__version__)' 2>/dev/null || echo unknown)
}

sg_moto_find() {
    SG_MOTO_CMD=()
    SG_MOTO_PYTHON=
    SG_MOTO_VERSION=unknown
    sg_moto_try_python python3 && return 0
    sg_moto_try_python "$SG_MOTO_VENV/bin/python" && return 0
    # A moto_server on PATH whose interpreter is not python3 (pipx, another pyenv version, ...).
    if command -v moto_server >/dev/null 2>&1 && moto_server --help >/dev/null 2>&1; then
        SG_MOTO_CMD=("$(command -v moto_server)")
        return 0
    fi
    return 1
}

sg_moto_install() {
    # 1. The python3 on PATH (pyenv here; as root on CI). PEP 668 may refuse on a system python.
    if python3 -m pip --version >/dev/null 2>&1; then
        sg_log "installing $SG_MOTO_REQUIREMENT with python3 -m pip"
        if python3 -m pip install -q --disable-pip-version-check "$SG_MOTO_REQUIREMENT"; then
            sg_moto_find && return 0
        fi
    fi
    # 2. A private virtualenv (works on Debian's externally-managed python3 too).
    sg_log "installing $SG_MOTO_REQUIREMENT into the virtualenv $SG_MOTO_VENV"
    if ! python3 -m venv "$SG_MOTO_VENV" >/dev/null 2>&1; then
        rm -rf "$SG_MOTO_VENV"
        sg_apt_install python3-venv python3-pip || true
        python3 -m venv "$SG_MOTO_VENV" || { rm -rf "$SG_MOTO_VENV"; return 1; }
    fi
    "$SG_MOTO_VENV/bin/python" -m pip install -q --disable-pip-version-check "$SG_MOTO_REQUIREMENT" || return 1
    sg_moto_find
}

sg_ensure_moto() {
    if ! command -v python3 >/dev/null 2>&1; then
        sg_apt_install python3 python3-venv python3-pip || true
    fi
    if ! sg_moto_find; then
        sg_log "moto_server does not run here: installing it"
        sg_moto_install || true
    fi
    if [ "${#SG_MOTO_CMD[@]}" -eq 0 ]; then
        sg_missing "moto_server is not available (python3 -m pip install '$SG_MOTO_REQUIREMENT' failed)."
        return 1
    fi
    sg_log "moto: ${SG_MOTO_CMD[*]} (moto $SG_MOTO_VERSION)"
    sg_check_recovery_python || true
}

# The served OpenAPI document is checked by `openapi-spec-validator` (gateway/tests/openapi_spec.rs):
# exports SHARDGATE_TEST_OPENAPI_PYTHON, an interpreter that imports it (installed with pip,
# or into moto's virtualenv, when missing). Missing: sg_missing (exit in strict mode).
SG_OPENAPI_REQUIREMENT="openapi-spec-validator==0.9.0"
sg_ensure_openapi_validator() {
    sg_ensure_py_module SHARDGATE_TEST_OPENAPI_PYTHON "$SG_OPENAPI_REQUIREMENT" openapi_spec_validator
}

# $1: variable to export (an interpreter that imports $3), $2: pip requirement, $3: module.
# Tries python3 and moto's virtualenv, installing $2 with pip into them when missing.
# Missing: sg_missing (exit in strict mode).
sg_ensure_py_module() {
    local var=$1 requirement=$2 module=$3 py
    for py in python3 "$SG_MOTO_VENV/bin/python"; do
        if "$py" -c "import $module" >/dev/null 2>&1; then
            export "$var=$py"
            return 0
        fi
    done
    sg_log "installing $requirement"
    for py in python3 "$SG_MOTO_VENV/bin/python"; do
        if "$py" -m pip install -q --disable-pip-version-check "$requirement" >/dev/null 2>&1 &&
            "$py" -c "import $module" >/dev/null 2>&1; then
            export "$var=$py"
            return 0
        fi
    done
    unset "$var"
    sg_missing "$module is not available (pip install '$requirement' failed)."
}

# The audit segment recovery test (gateway/tests/audit_recovery.rs) runs
# verify_audit_segment.py, which needs `zstandard` (PyPI): exports SHARDGATE_TEST_ZSTD_PYTHON,
# an interpreter that imports it (installed with pip, or into moto's virtualenv, when
# missing). Missing: sg_missing (exit in strict mode).
SG_ZSTD_REQUIREMENT="zstandard==0.23.0"
sg_ensure_zstandard() {
    sg_ensure_py_module SHARDGATE_TEST_ZSTD_PYTHON "$SG_ZSTD_REQUIREMENT" zstandard
}

# The deployment units (packaging/: systemd unit, Dockerfile, Kubernetes manifests) are checked
# by gateway/tests/deployment_units.rs with real tools: systemd-analyze (Debian's systemd,
# installed with apt when missing), hadolint and kubernetes-validate (one virtualenv), and
# checkov (a virtualenv of its own: ~100 packages, about a minute to install once). The pins
# are packaging/checks/requirements-*.txt; the virtualenvs live under SG_DEPLOY_TOOLS_DIR and
# are made anew when their requirements file changes. Exports SHARDGATE_TEST_SYSTEMD_ANALYZE,
# SHARDGATE_TEST_HADOLINT, SHARDGATE_TEST_KUBERNETES_VALIDATE and SHARDGATE_TEST_CHECKOV (each
# unset when missing). Missing: sg_missing (exit in strict mode).
SG_DEPLOY_TOOLS_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/shardgate/deploy-tools"

# $1: virtualenv name under SG_DEPLOY_TOOLS_DIR, $2: its requirements file. Succeeds when the
# virtualenv holds exactly those requirements (a copy of the file is kept beside it).
sg_deploy_venv() {
    local venv="$SG_DEPLOY_TOOLS_DIR/$1" req=$2 t0
    if [ -x "$venv/bin/python" ] && cmp -s "$req" "$venv/shardgate-requirements.txt"; then
        return 0
    fi
    t0=$(date +%s)
    sg_log "installing $(grep -v '^#' "$req" | xargs) into the virtualenv $venv"
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        sg_apt_install python3-venv python3-pip || true
        python3 -m venv "$venv" || { rm -rf "$venv"; return 1; }
    fi
    if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"; then
        rm -rf "$venv"
        return 1
    fi
    cp "$req" "$venv/shardgate-requirements.txt"
    sg_log "installed into $venv in $(($(date +%s) - t0)) s"
}

# $1: variable to export, $2: executable. Unsets $1 and calls sg_missing when $2 does not run.
sg_export_tool() {
    local var=$1 exe=$2
    if [ -x "$exe" ] && "$exe" --version >/dev/null 2>&1; then
        export "$var=$exe"
        return 0
    fi
    unset "$var"
    sg_missing "$exe does not run (needed by ${3:-gateway/tests/deployment_units.rs})."
}

# mandoc, which lints the man pages `shardgate man --out` writes
# (gateway/tests/cli_habits.rs): installed with apt-get when missing, named in
# SHARDGATE_TEST_MANDOC. Missing: sg_missing (exit in strict mode).
sg_ensure_mandoc() {
    if ! command -v mandoc >/dev/null 2>&1; then
        sg_log "mandoc missing: installing mandoc"
        sg_apt_install mandoc || true
    fi
    if command -v mandoc >/dev/null 2>&1; then
        export SHARDGATE_TEST_MANDOC
        SHARDGATE_TEST_MANDOC=$(command -v mandoc)
        return 0
    fi
    unset SHARDGATE_TEST_MANDOC
    sg_missing "mandoc is not available (apt-get install mandoc; needed by gateway/tests/cli_habits.rs)."
}

sg_ensure_deploy_tools() {
    local rc=0 req="$REPO_ROOT/packaging/checks"
    if ! command -v systemd-analyze >/dev/null 2>&1; then
        sg_log "systemd-analyze missing: installing systemd"
        sg_apt_install systemd || true
    fi
    if command -v systemd-analyze >/dev/null 2>&1; then
        export SHARDGATE_TEST_SYSTEMD_ANALYZE
        SHARDGATE_TEST_SYSTEMD_ANALYZE=$(command -v systemd-analyze)
        sg_log "systemd-analyze: $("$SHARDGATE_TEST_SYSTEMD_ANALYZE" --version | head -n1)"
    else
        unset SHARDGATE_TEST_SYSTEMD_ANALYZE
        sg_missing "systemd-analyze is not available (apt-get install systemd)." || rc=1
    fi
    sg_deploy_venv lint "$req/requirements-lint.txt" || true
    sg_export_tool SHARDGATE_TEST_HADOLINT "$SG_DEPLOY_TOOLS_DIR/lint/bin/hadolint" || rc=1
    sg_export_tool SHARDGATE_TEST_KUBERNETES_VALIDATE "$SG_DEPLOY_TOOLS_DIR/lint/bin/kubernetes-validate" || rc=1
    sg_deploy_venv checkov "$req/requirements-checkov.txt" || true
    sg_export_tool SHARDGATE_TEST_CHECKOV "$SG_DEPLOY_TOOLS_DIR/checkov/bin/checkov" || rc=1
    return "$rc"
}

# The KMS recovery test (gateway/tests/kms_recovery.rs) runs recover_kms_shard.py with python3
# (or $SHARDGATE_TEST_PYTHON): it needs boto3 and cryptography, which moto[server] brings into
# the interpreter that runs moto. Exports SHARDGATE_TEST_PYTHON when that interpreter is not
# the python3 on PATH. Missing: sg_missing (exit in strict mode); moto itself stays usable.
sg_check_recovery_python() {
    local check='import boto3, cryptography'
    if [ -n "${SHARDGATE_TEST_PYTHON:-}" ]; then
        "$SHARDGATE_TEST_PYTHON" -c "$check" >/dev/null 2>&1 && return 0
        sg_missing "SHARDGATE_TEST_PYTHON=$SHARDGATE_TEST_PYTHON cannot import boto3 and cryptography (needed by the KMS recovery test)."
        return 1
    fi
    if python3 -c "$check" >/dev/null 2>&1; then
        return 0
    fi
    if [ -n "${SG_MOTO_PYTHON:-}" ] && "$SG_MOTO_PYTHON" -c "$check" >/dev/null 2>&1; then
        export SHARDGATE_TEST_PYTHON="$SG_MOTO_PYTHON"
        sg_log "KMS recovery test: python3 lacks boto3/cryptography; using moto's $SG_MOTO_PYTHON"
        return 0
    fi
    sg_missing "python3 cannot import boto3 and cryptography (moto[server] brings both; needed by the KMS recovery test)."
}

# $1: log file. Starts moto on a free loopback port; sets SG_MOTO_PID and SG_MOTO_PORT.
sg_start_moto() {
    local log=$1 i port
    for _ in 1 2 3; do
        port=$(sg_free_port) || return 1
        "${SG_MOTO_CMD[@]}" -H 127.0.0.1 -p "$port" >>"$log" 2>&1 </dev/null &
        SG_MOTO_PID=$!
        SG_MOTO_PORT=$port
        for i in $(seq 1 80); do # 80 x 0.25 s = 20 s
            if ! kill -0 "$SG_MOTO_PID" 2>/dev/null; then
                break # died (port raced away?); retry on another port
            fi
            if sg_http_answers "http://127.0.0.1:$port/"; then
                sg_log "moto_server (pid $SG_MOTO_PID) answers on http://127.0.0.1:$port after ~$((i / 4)) s"
                return 0
            fi
            sleep 0.25
        done
        sg_stop_pid "$SG_MOTO_PID"
        SG_MOTO_PID=
    done
    sg_log "moto_server did not answer; its log ($log):"
    tail -n 30 "$log" >&2 || true
    return 1
}

# Terminate a process we started: TERM, up to 5 s, then KILL. Quiet.
sg_stop_pid() {
    local pid=$1
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -CONT "$pid" 2>/dev/null || true # a test may have SIGSTOPped it
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------
sg_psql_admin() {
    psql -X -w -q -At -v ON_ERROR_STOP=1 -h "$SG_PG_HOST" -p "$SG_PG_PORT" -U postgres -d postgres "$@"
}

sg_pg_accepting() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$SG_PG_HOST" -p "$SG_PG_PORT" -t 3 >/dev/null 2>&1
    else
        (exec 3<>"/dev/tcp/$SG_PG_HOST/$SG_PG_PORT") 2>/dev/null
    fi
}

sg_pg_can_connect() {
    sg_psql_admin -c 'SELECT 1' >/dev/null 2>&1
}

# "VERSION CLUSTER" of the Debian cluster configured on port 5432, if any.
sg_pg_cluster_on_port() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 1
    pg_lsclusters -h 2>/dev/null | awk -v p="$SG_PG_PORT" '$3 == p { print $1, $2; found=1; exit } END { exit !found }'
}

sg_pg_newest_version() {
    local v
    v=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null |
        awk -F/ '{ print $5 }' | sort -V | tail -n1)
    [ -n "$v" ] && echo "$v"
}

sg_pg_wait_accepting() {
    local secs=$1
    for _ in $(seq 1 $((secs * 4))); do
        sg_pg_accepting && return 0
        sleep 0.25
    done
    return 1
}

# Start (creating if needed) the Debian cluster on 127.0.0.1:5432.
sg_pg_start_server() {
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v pg_lsclusters >/dev/null 2>&1 ||
        [ -z "$(sg_pg_newest_version || true)" ]; then
        sg_log "no PostgreSQL server installed: installing postgresql"
        sg_apt_install postgresql || return 1
        # The package may have started its new cluster itself.
        sg_pg_wait_accepting 5 && return 0
    fi
    local ver name cl
    if cl=$(sg_pg_cluster_on_port); then
        read -r ver name <<<"$cl"
    else
        ver=$(sg_pg_newest_version) || { sg_log "no PostgreSQL server binaries under /usr/lib/postgresql"; return 1; }
        name=main
        [ -e "/etc/postgresql/$ver/main" ] && name=shardgate_test
        sg_log "no PostgreSQL cluster on port $SG_PG_PORT: creating cluster $ver/$name"
        sg_as_root pg_createcluster -p "$SG_PG_PORT" "$ver" "$name" >&2 || return 1
    fi
    sg_log "starting PostgreSQL cluster $ver/$name"
    # "already running" is not an error here: we wait for it to accept connections below.
    sg_as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start >&2 || true
    sg_pg_wait_accepting 30
}

# Local TCP connections as postgres without a password: switch the loopback host lines of the
# cluster's pg_hba.conf to trust (and, if there are none, add some on top), then reload.
# Only called when connecting fails.
sg_pg_fix_auth() {
    local hba="" cl ver name
    hba=$(sg_as_postgres psql -X -w -q -At -p "$SG_PG_PORT" -d postgres -c 'SHOW hba_file' 2>/dev/null) || hba=""
    if [ -z "$hba" ] && cl=$(sg_pg_cluster_on_port); then
        read -r ver name <<<"$cl"
        hba="/etc/postgresql/$ver/$name/pg_hba.conf"
    fi
    if [ -z "$hba" ] || ! sg_as_root test -f "$hba"; then
        sg_log "cannot find pg_hba.conf of the server on port $SG_PG_PORT"
        return 1
    fi
    sg_warn_loud "PostgreSQL on $SG_PG_HOST:$SG_PG_PORT refuses user postgres without a password." \
        "Switching the loopback (127.0.0.1/32, ::1/128) host lines of $hba to trust (backup: $hba.shardgate-orig)."
    sg_as_root test -e "$hba.shardgate-orig" || sg_as_root cp -p "$hba" "$hba.shardgate-orig" || return 1
    sg_as_root sed -E -i \
        's|^([[:space:]]*host(ssl\|nossl)?[[:space:]]+[^[:space:]]+[[:space:]]+[^[:space:]]+[[:space:]]+(127\.0\.0\.1/32\|::1/128)[[:space:]]+)[^[:space:]#]+.*$|\1trust|' \
        "$hba" || return 1
    sg_pg_reload "$hba"
    local i
    for i in $(seq 1 20); do
        sg_pg_can_connect && return 0
        sleep 0.25
    done
    # No loopback host line matched (or a reject before it): put ours first.
    if ! sg_as_root grep -q '^# shardgate-test: loopback trust' "$hba"; then
        sg_log "adding loopback trust lines for user postgres at the top of $hba"
        local tmp
        tmp=$(mktemp) || return 1
        {
            echo '# shardgate-test: loopback trust for the throw-away test cluster (see scripts/test.sh)'
            echo 'host all postgres 127.0.0.1/32 trust'
            echo 'host all postgres ::1/128 trust'
            sg_as_root cat "$hba"
        } >"$tmp"
        sg_as_root cp "$tmp" "$hba" || { rm -f "$tmp"; return 1; }
        rm -f "$tmp"
        sg_pg_reload "$hba"
    fi
    for i in $(seq 1 20); do
        sg_pg_can_connect && return 0
        sleep 0.25
    done
    return 1
}

sg_pg_reload() {
    local cl ver name
    if sg_as_postgres psql -X -w -q -At -p "$SG_PG_PORT" -d postgres -c 'SELECT pg_reload_conf()' >/dev/null 2>&1; then
        return 0
    fi
    if cl=$(sg_pg_cluster_on_port); then
        read -r ver name <<<"$cl"
        sg_as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" reload >&2 || true
    fi
}

sg_ensure_postgres() {
    if ! sg_pg_accepting; then
        sg_log "nothing accepts connections on $SG_PG_HOST:$SG_PG_PORT"
        if ! sg_pg_start_server; then
            sg_missing "PostgreSQL could not be installed or started on $SG_PG_HOST:$SG_PG_PORT."
            return 1
        fi
    fi
    if ! command -v psql >/dev/null 2>&1; then
        sg_log "psql missing: installing postgresql-client"
        sg_apt_install postgresql-client || true
        if ! command -v psql >/dev/null 2>&1; then
            sg_missing "psql (postgresql-client) is not available."
            return 1
        fi
    fi
    if ! sg_pg_can_connect; then
        if ! sg_pg_fix_auth; then
            sg_missing "cannot connect to PostgreSQL as postgres@$SG_PG_HOST:$SG_PG_PORT without a password."
            return 1
        fi
    fi
    sg_log "PostgreSQL: $(sg_psql_admin -c 'SHOW server_version' 2>/dev/null) on $SG_PG_HOST:$SG_PG_PORT"
}

# The directory with initdb/pg_ctl/postgres of the server version (for tests that run a private
# cluster). Prints nothing when not found.
sg_pg_bindir() {
    local v=""
    v=$(sg_psql_admin -c 'SHOW server_version_num' 2>/dev/null) || v=""
    if [ -n "$v" ]; then
        v=$((v / 10000))
        [ -x "/usr/lib/postgresql/$v/bin/initdb" ] && { echo "/usr/lib/postgresql/$v/bin"; return 0; }
    fi
    v=$(sg_pg_newest_version) && [ -x "/usr/lib/postgresql/$v/bin/initdb" ] && echo "/usr/lib/postgresql/$v/bin"
    return 0
}

# Database names: created and dropped with psql (identifiers double-quoted; names are ours).
sg_pg_create_db() {
    sg_psql_admin -c "CREATE DATABASE \"$1\""
}

# Drops $1 and every database whose name starts with "$1_". Quiet; never fails.
sg_pg_drop_db_family() {
    local base=$1 db
    command -v psql >/dev/null 2>&1 || return 0
    local names
    names=$(sg_psql_admin -c "SELECT datname FROM pg_database WHERE datname = '$base' OR strpos(datname, '${base}_') = 1" 2>/dev/null) || return 0
    while IFS= read -r db; do
        [ -n "$db" ] || continue
        sg_psql_admin -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
    done <<<"$names"
}

# The Python client generated from /openapi.json (gateway/tests/python_client.rs): the pinned
# openapi-python-client of client-python/requirements.txt in a virtualenv whose bin/ (with
# ruff, which the generator runs, and the client's httpx and attrs) the test puts first on
# PATH. Exports SHARDGATE_TEST_PYTHON_CLIENT_BIN, that bin/ directory. Missing: sg_missing.
sg_ensure_python_client_tools() {
    sg_deploy_venv pyclient "$REPO_ROOT/client-python/requirements.txt" || true
    sg_export_tool SHARDGATE_TEST_PYTHON_CLIENT_BIN_EXE "$SG_DEPLOY_TOOLS_DIR/pyclient/bin/openapi-python-client" \
        gateway/tests/python_client.rs || return 1
    unset SHARDGATE_TEST_PYTHON_CLIENT_BIN_EXE
    export SHARDGATE_TEST_PYTHON_CLIENT_BIN="$SG_DEPLOY_TOOLS_DIR/pyclient/bin"
}
