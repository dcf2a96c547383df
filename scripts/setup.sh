#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine as root: system packages, then .venv with pyunion.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS="fuse3 libfuse3-dev pkg-config gcc python3-venv python3-dev attr fuse-overlayfs unionfs-fuse runc busybox-static umoci skopeo uidmap util-linux iproute2 procps"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq $missing >/dev/null
fi
modprobe fuse 2>/dev/null || true
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing (FUSE not available on this kernel)" >&2; exit 1; }
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test,bench]'
