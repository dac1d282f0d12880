#!/usr/bin/env bash
# Install the Debian packages farthing's tests and benchmarks use, if they are missing.
set -euo pipefail
need=()
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || need+=(postgresql)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)  # promtool checks the alert rules
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${need[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
# Another apt (an unattended upgrade, say) may hold the lock: wait for it, saying so.
lock="-o DPkg::Lock::Timeout=600"
if command -v fuser >/dev/null 2>&1 && fuser /var/lib/dpkg/lock-frontend >/dev/null 2>&1; then
    echo "another package manager is running; waiting for it (up to 10 minutes)"
fi
$sudo apt-get $lock update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get $lock install -y -qq --no-install-recommends "${need[@]}" >/dev/null
