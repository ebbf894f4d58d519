#!/usr/bin/env bash
# GPT sampling with KV cache: ours vs the reference generate.py on python3-torch in the same run (retok generator bench).
#   RETOK_REF_RETOK=/path/to/zfu006/ReTok bench/generator.sh --reference [other retok generator bench options]
set -euo pipefail
cd "$(dirname "$0")/.."
exec ./retok generator bench "$@"
