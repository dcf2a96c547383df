#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine as root: system packages, then .venv with pyunion.
set -euo pipefail
cd "$(dirname "$0")/.."
# podman + containerd: real clients of pyunion-runtime and of the proxy snapshotter in tests;
# libseccomp2: the runtime's seccomp filters.
PKGS="python3 fuse3 libfuse3-dev pkg-config gcc python3-venv python3-dev attr fuse-overlayfs unionfs-fuse runc busybox-static umoci skopeo uidmap util-linux iproute2 procps zstd libseccomp2 podman containerd"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq $missing >/dev/null
fi
modprobe fuse 2>/dev/null || true
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing (FUSE not available on this kernel)" >&2; exit 1; }
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
stamp=".venv/.pyunion-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test,bench,containerd,pyfuse3]' >/dev/null 2>.venv/pip.log \
    || { cat .venv/pip.log >&2; echo "setup: pip install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
# Byte-compile our own modules (only what changed): every mount starts a daemon and every
# `pyunion` command an interpreter, and where PYTHONDONTWRITEBYTECODE is set each of them would
# otherwise compile the sources again (about 60 ms per mount here).
.venv/bin/python -m compileall -q unionfs snapshotter bench >/dev/null
# `mount -t fuse.pyunion` (mount.fuse3) and podman's mount_program look the command up on a
# system PATH: as root, link this checkout's commands there.
if [ "$(id -u)" = 0 ]; then
  ln -sf "$PWD/.venv/bin/pyunion" /usr/local/bin/pyunion
  ln -sf "$PWD/.venv/bin/pyunion-runtime" /usr/local/bin/pyunion-runtime
fi
