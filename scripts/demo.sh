#!/usr/bin/env bash
# Set up (if needed) and run the demo: two image layers merged under a writable upper.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/pyunion demo "$@"
