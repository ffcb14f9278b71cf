#!/usr/bin/env bash
# One-command GPU check (see benchmarks/gpu_check.py): training samples/s, MFU and memory at the paper configuration,
# atlas time of 19 GAs at 0.8 mm, a short quality run; writes gpu_check.json and gpu_check.md into --out (default
# ./gpu_check).  Nothing is downloaded.  On a machine without CUDA it runs the reduced CPU mode.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python}" "$here/gpu_check.py" "$@"
