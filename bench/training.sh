#!/usr/bin/env bash
# Tokenizer training step time: ours vs the reference loop body on python3-torch in the same run, plus FLOP utilisation.
#   RETOK_REF_RETOK=/path/to/zfu006/ReTok bench/training.sh [--spec jobs/retok-tiny.yaml jobs/retok-s-s.yaml] [--batch B] [--steps N]
set -euo pipefail
cd "$(dirname "$0")/.."
exec ./retok train bench "$@"
