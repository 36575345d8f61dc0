#!/usr/bin/env bash
# Debian's chromium and its driver for tests/test_report_browser.py (idempotent; `make test` calls it).
# Needs root (as CI and the dev machines are); without root or apt it says so and the browser tests skip.
set -u
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup_browser: chromium/chromedriver missing and not root with apt-get: install Debian's chromium and" \
       "chromium-driver to run the browser tests" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null \
  || { echo "setup_browser: apt-get install chromium chromium-driver failed" >&2; exit 1; }
