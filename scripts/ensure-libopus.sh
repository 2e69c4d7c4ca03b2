#!/bin/sh
# Installs libopus (needed to decode/encode Opus) when it is missing.
# Uses apt-get when it is there and we are root (or have password-less sudo);
# otherwise says exactly what to install and fails.
set -u
have_opus() {
  "${PYTHON:-python3}" -c 'import ctypes.util, sys; sys.exit(ctypes.util.find_library("opus") is None)' 2>/dev/null
}
have_opus && exit 0

if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
  if [ "$SUDO" != none ]; then
    echo "libopus not found: installing libopus0 with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -q libopus0 >/dev/null 2>&1 || \
      { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q libopus0 >/dev/null; }
    have_opus && exit 0
  fi
fi
cat >&2 <<'MSG'
libopus (the Opus codec library) is missing and could not be installed automatically.
Install it, then run make again:
  Debian/Ubuntu:  sudo apt-get install libopus0
  Fedora/RHEL:    sudo dnf install opus
  Arch:           sudo pacman -S opus
  macOS:          brew install opus
MSG
exit 1
