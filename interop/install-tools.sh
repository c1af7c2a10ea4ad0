#!/bin/sh
# Installs the third-party clients the interop tests drive (Debian packages).
set -eu
need=""
command -v mosquitto_pub >/dev/null 2>&1 || need="$need mosquitto-clients"
[ -z "$need" ] && exit 0
if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
echo "installing:$need"
$sudo apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $need >/dev/null
