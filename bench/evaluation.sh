#!/usr/bin/env bash
# Evaluation benchmark: images/s of decode + ADM centre crop (ours vs Pillow running ReTok's center_crop_arr) and of
# FID-Inception feature extraction on CPU (ours vs pytorch-fid's model + torch-fidelity's TF1 resize), in one run.
# Reference checkouts come from the environment (fetched copies; nothing is downloaded here):
#   RETOK_REF_RETOK=/path/ReTok RETOK_REF_PYTORCH_FID=/path/pytorch-fid RETOK_REF_TORCH_FIDELITY=/path/torch-fidelity
# Optional: OPENBLAS_DIR=/path/with/libblas.so.3 (e.g. an unpacked libopenblas0-pthread) so Debian's torch does not use the
# reference BLAS for the Inception comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
dotnet build src/ReTok.Cli -c Release -v q -clp:ErrorsOnly
if [[ -n "${OPENBLAS_DIR:-}" ]]; then export LD_LIBRARY_PATH="$OPENBLAS_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
dotnet src/ReTok.Cli/bin/Release/net10.0/retok.dll eval bench --images "${BENCH_IMAGES:-48}" --inception-images "${BENCH_INCEPTION_IMAGES:-16}" 2>&1 | grep -v NNPACK
