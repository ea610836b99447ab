#!/usr/bin/env bash
# README's test command: runs every test of the workspace (`cargo test
# --workspace`, with any extra arguments passed on), after installing what
# the tests need beyond the Rust toolchain.
#
# The cluster tests start redis-server processes of their own and make TLS
# certificates with openssl; the dashboard's tests load its page in headless
# Chromium (Debian's `chromium`). On Debian or Ubuntu, missing ones are
# installed with apt-get (through sudo when not root); elsewhere, or without
# the right to install, this stops and says what to install. No test is
# skipped for a missing tool: without them those tests would fail.
set -euo pipefail
cd "$(dirname "$0")"

fail() {
  echo "test.sh: $*" >&2
  exit 1
}

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v openssl >/dev/null || missing+=(openssl)
command -v chromium >/dev/null || missing+=(chromium)

if [ ${#missing[@]} -gt 0 ]; then
  wanted="the tests need ${missing[*]} on the PATH"
  if ! command -v apt-get >/dev/null; then
    fail "$wanted, and this system has no apt-get: install ${missing[*]} with its package manager, then run ./test.sh again"
  fi
  if [ "$(id -u)" = 0 ]; then
    as_root=""
  elif command -v sudo >/dev/null; then
    as_root="sudo"
  else
    fail "$wanted; installing them needs root and sudo is not installed: run 'apt-get install -y ${missing[*]}' as root, then ./test.sh again"
  fi
  echo "test.sh: $wanted; installing: $as_root apt-get install -y ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # A fresh machine's package lists may be empty or stale: update once and retry.
  $as_root apt-get install -y "${missing[@]}" ||
    { $as_root apt-get update && $as_root apt-get install -y "${missing[@]}"; } ||
    fail "could not install ${missing[*]} (see apt-get's message above): install them, then run ./test.sh again"
  for tool in "${missing[@]}"; do
    command -v "$tool" >/dev/null || fail "apt-get installed $tool but it is not on the PATH ($PATH)"
  done
fi

exec cargo test --workspace "$@"
