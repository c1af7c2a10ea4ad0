#!/bin/sh
# Installs the third-party clients the interop tests drive: Debian's mosquitto-clients,
# mosquitto (the remote broker of the bridge tests), redis-server (the cluster tests) and
# chromium (with Node.js and npm if missing, in one apt-get run), then the browser test's
# npm packages (interop/browser/install.sh).
set -eu
need=""
command -v mosquitto_pub >/dev/null 2>&1 || need="$need mosquitto-clients"
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need="$need mosquitto"
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need="$need redis-server"
command -v chromium >/dev/null 2>&1 || need="$need chromium"
command -v npm >/dev/null 2>&1 || need="$need nodejs npm"
if [ -n "$need" ]; then
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    echo "installing:$need"
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $need >/dev/null
fi
sh "$(dirname "$0")/browser/install.sh"
