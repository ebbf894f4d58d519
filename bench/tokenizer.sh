#!/usr/bin/env bash
# Tokenizer throughput: ours (retok tokenizer bench, TorchSharp) vs the authors' classes on python3-torch, same run.
#   RETOK_REF_RETOK=/path/to/zfu006/ReTok bench/tokenizer.sh [--batch-size 8] [--iters 1] [--tokens 256] [--config VQ_SS256]
# Optional OPENBLAS_DIR=<dir with libblas.so.3> gives the reference OpenBLAS instead of Debian's reference BLAS
# (COMMON rules: apt-get download libopenblas0-pthread && dpkg -x …). Both sides: CPU, fp32, 2 threads, fresh init.
set -euo pipefail
cd "$(dirname "$0")/.."
BATCH=8; ITERS=1; TOKENS=256; CONFIG=VQ_SS256
while [ $# -gt 0 ]; do
  case "$1" in
    --batch-size) BATCH=$2; shift 2 ;; --iters) ITERS=$2; shift 2 ;;
    --tokens) TOKENS=$2; shift 2 ;; --config) CONFIG=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
: "${RETOK_REF_RETOK:?set RETOK_REF_RETOK to a checkout of zfu006/ReTok}"
dotnet build src/ReTok.Cli -v q -clp:ErrorsOnly >/dev/null
# run from a copy so that rebuilding the worktree during a long benchmark cannot replace the running assemblies
BIN=$(mktemp -d /tmp/retok-bench-XXXXXX)
trap 'rm -rf "$BIN"' EXIT
cp -r src/ReTok.Cli/bin/Debug/net10.0/. "$BIN/"
RETOK="dotnet $BIN/retok.dll"
ours=$($RETOK tokenizer bench --config "$CONFIG" --batch-size "$BATCH" --iters "$ITERS" --tokens "$TOKENS" --device cpu 2>/dev/null | tee /dev/stderr | grep BENCH_JSON | cut -d' ' -f2-)
refenv=()
[ -n "${OPENBLAS_DIR:-}" ] && refenv=(env LD_LIBRARY_PATH="$OPENBLAS_DIR")
ref=$("${refenv[@]}" /usr/bin/python3 bench/tokenizer_ref.py --config "$CONFIG" --batch-size "$BATCH" --iters "$ITERS" --tokens "$TOKENS" --threads 2 | grep BENCH_JSON | cut -d' ' -f2-)
/usr/bin/python3 - "$ours" "$ref" "$CONFIG" "$BATCH" "$TOKENS" <<'PY'
import json, sys
o, r = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{sys.argv[3]} batch {sys.argv[4]}, CPU fp32; reference torch {r['torch']} ({r['threads']} threads, BLAS: {r['blas']})")
for k, name in (("encode_img_s", "encode"), ("decode_img_s", f"decode K={sys.argv[5]}")):
    print(f"{name:>14}: ours {o[k]:8.3f} img/s   reference {r[k]:8.3f} img/s   ratio ours/ref {o[k] / r[k]:6.2f}x")
PY
