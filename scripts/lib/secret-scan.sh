#!/usr/bin/env bash
# Secret scan of a test log directory.
#
#   scripts/lib/secret-scan.sh DIR        (or source it and call sg_secret_scan DIR)
#
# Every line of DIR/planted-secrets.txt that is at least 12 characters long is a secret the tests
# planted (shard plaintexts, tokens, keys). No other file under DIR may contain any of them.
# Hits are reported by file name and by line number in planted-secrets.txt, never by value.
# Exit/return status: 0 clean (or nothing planted), 1 a secret leaked, 2 usage or scan error.

sg_secret_scan() {
    local dir=${1:?usage: sg_secret_scan DIR}
    local planted="$dir/planted-secrets.txt"
    local min_len=12

    if [ ! -d "$dir" ]; then
        printf '[secret-scan] ERROR: no such directory: %s\n' "$dir" >&2
        return 2
    fi
    if [ ! -e "$planted" ]; then
        printf '[secret-scan] WARNING: %s does not exist: no test planted a secret, nothing to scan for.\n' "$planted" >&2
        return 0
    fi

    # Patterns: one per line, CR stripped, short lines ignored, duplicates removed. Kept outside
    # DIR (and mode 0600) so that the scan does not find them.
    local patterns
    patterns=$(mktemp "${TMPDIR:-/tmp}/shardgate-scan.XXXXXXXX") || return 2
    chmod 600 "$patterns"
    LC_ALL=C awk -v min="$min_len" '{ sub(/\r$/, "") } length($0) >= min && !seen[$0]++' "$planted" >"$patterns"
    local count
    count=$(wc -l <"$patterns" | tr -d ' ')
    if [ "$count" -eq 0 ]; then
        printf '[secret-scan] WARNING: %s has no line of %d or more characters: nothing to scan for.\n' "$planted" "$min_len" >&2
        rm -f "$patterns"
        return 0
    fi

    # One pass over every file for all patterns at once.
    local hits rc=0
    hits=$(LC_ALL=C grep -rlF --exclude=planted-secrets.txt -f "$patterns" -- "$dir") || rc=$?
    if [ "$rc" -gt 1 ]; then
        # grep exit 2: an unreadable file or similar. Treat as a failed scan, not as clean.
        printf '[secret-scan] ERROR: grep failed (exit %d) while scanning %s\n' "$rc" "$dir" >&2
        rm -f "$patterns"
        return 2
    fi
    if [ -z "$hits" ]; then
        printf '[secret-scan] OK: none of %d planted secrets appears in any file under %s\n' "$count" "$dir" >&2
        rm -f "$patterns"
        return 0
    fi

    # Only on a hit: which secrets (by line number in planted-secrets.txt) in which file.
    printf '[secret-scan] FAILED: planted secrets leaked into log files under %s:\n' "$dir" >&2
    local file which
    while IFS= read -r file; do
        which=$(LC_ALL=C grep -aoF -f "$patterns" -- "$file" | LC_ALL=C sort -u |
            LC_ALL=C awk 'NR == FNR { m[$0] = 1; next }
                { sub(/\r$/, "") }
                ($0 in m) { printf "%s%d", sep, FNR; sep = " " }' - "$planted") || which=""
        printf '[secret-scan]   %s  (planted-secrets.txt line(s): %s)\n' "$file" "${which:-?}" >&2
    done <<<"$hits"
    rm -f "$patterns"
    return 1
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    if [ "$#" -ne 1 ]; then
        echo "usage: $0 LOG_DIR" >&2
        exit 2
    fi
    rc=0
    sg_secret_scan "$1" || rc=$?
    exit "$rc"
fi
