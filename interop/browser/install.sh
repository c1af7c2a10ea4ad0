#!/bin/sh
# Installs what interop/test_browser.py needs: Debian's chromium, and mqtt.js and
# @stomp/stompjs at the versions in package-lock.json, into interop/browser/node_modules
# (ignored by git; the page loads them from there). Safe to run again: it only does
# what is missing or out of date.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
need=""
command -v chromium >/dev/null 2>&1 || need="$need chromium"
command -v npm >/dev/null 2>&1 || need="$need nodejs npm"
if [ -n "$need" ]; then
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    echo "installing:$need"
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $need >/dev/null
fi
# npm ci leaves node_modules/.package-lock.json: newer than the lock means up to date.
stamp="$here/node_modules/.package-lock.json"
if [ ! -f "$stamp" ] || [ "$here/package-lock.json" -nt "$stamp" ]; then
    echo "installing npm packages for the browser tests"
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi
