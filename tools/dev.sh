#!/usr/bin/env bash
# The two commands of the README, for a fresh machine with nothing but Python 3.11:
#   bash tools/dev.sh demo    set up .venv (idempotent) and run the embedded demo (rll-repro reproduce demo;
#                             extra args go to it, e.g. --all for every baseline loss)
#   bash tools/dev.sh test    set up .venv (idempotent) and run the test suite (extra args go to pytest)
# Set RLL_REPRO_VENV to use another virtual environment folder.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RLL_REPRO_VENV:-.venv}"
PY="${PYTHON:-python3}"

pip_install() {
    # pip logs "WARNING: Location '...' is ignored: it is either a non-existing path or lacks a
    # specific scheme" for every find-links/index entry of the user's pip configuration that this
    # machine lacks, again on every lookup; drop those lines only: every other warning and every
    # error still reaches stderr, and the status is pip's.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" \
        2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
}

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
    fi
    # Reinstall only when pyproject.toml changed since the last successful install.
    local stamp="$VENV/.rll_repro-installed-$(sha1sum pyproject.toml | cut -c1-12)"
    if [ ! -f "$stamp" ]; then
        echo "setting up $VENV (first run installs torch from the local wheel cache, ~2 min)..." >&2
        pip_install -e '.[test]'
        rm -f "$VENV"/.rll_repro-installed-*
        touch "$stamp"
    fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
    demo)
        setup
        exec "$VENV/bin/rll-repro" reproduce demo "$@"
        ;;
    test)
        setup
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    setup)
        setup
        ;;
    *)
        echo "usage: bash tools/dev.sh demo|test|setup [args]" >&2
        exit 2
        ;;
esac
