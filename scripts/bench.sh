#!/usr/bin/env bash
# Benchmark pyunion against native, kernel overlayfs, fuse-overlayfs and unionfs-fuse.
# Sets the machine up first (same script CI uses), then runs the harness; run as root.
#   scripts/bench.sh            full run (~15 min on 2 cores), results in bench/results/<UTC time>/
#   scripts/bench.sh --quick    small sizes, 2 repetitions (~2 min)
#   scripts/bench.sh --help     all options (--only, --impl, --reps, --out, --data-dir)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m bench "$@"
