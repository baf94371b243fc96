#!/bin/sh
# Install Debian's chromium for the browser tests (tests/test_browser.py), if it is missing.
# Idempotent: does nothing when /usr/bin/chromium exists. Playwright drives this browser;
# never run `playwright install` (it downloads another one).
set -eu
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo "$0" "$@"
    fi
    echo "install_chromium.sh: run as root (apt-get install chromium)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q chromium  # with its recommends (fonts): as checked in TOOLCHAIN §4
test -x /usr/bin/chromium
