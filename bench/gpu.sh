#!/usr/bin/env bash
# GPU recipe (docs/gpu.md): `retok doctor` on the device, then ours vs the authors' code, every command under a timeout.
#   remote:  bash .gpu-bundle/on-gpu.sh --script bench/gpu.sh       (.gpu-bundle/ from ../shared/device/make-bundle.sh)
#   here:    ON_GPU_DRY=1 PY=/usr/bin/python3 RETOK_DOCTOR_ARGS='--device cpu --skip tokenizer-train-bf16' \
#              bash .gpu-bundle/on-gpu.sh --script bench/gpu.sh   (CPU, tiny sizes)
# on-gpu.sh provides $RETOK, $REF_GPU, $REF_PY, $DEVICE, $OUT, $ON_GPU_DRY, $ON_GPU_WORK, `step NAME LIMIT_S CMD...`
# and `note TEXT` (see ../shared/device/README.md). No `set -e`: a failing step is a row of the summary and the next
# one still runs. The whole script must fit the call's deadline (DEADLINE_S, default 450 s): the limits below add up
# to more, but `step` cuts each to the time left, in this order of importance.
# shellcheck disable=SC2086  # $RETOK and $REF_GPU are command lines, split on purpose
if [ "${ON_GPU_DRY:-0}" = 1 ]; then
  CFG=VQ_SS256 B=1 N=1 ITERS=1 TOK=4 DOCTOR_SKIP=tokenizer-train-bf16 DP=cpu   # CPU bf16 convolutions take minutes
else
  CFG=VQ_SB256 B=32 N=4 ITERS=5 TOK=256 DOCTOR_SKIP="" DP=nccl
fi
P=$(mktemp -d)          # large intermediates (seeded weights, codes): not under $OUT
R=$OUT/ref.jsonl
HAVE_REF=0; [ -n "${RETOK_REF_RETOK:-}" ] && [ -d "${RETOK_REF_RETOK:-}" ] && HAVE_REF=1

# 1. the doctor: facts (GPU, libtorch, cuDNN, TF32, bf16, memory) and device-vs-CPU parity of every model, loss, metric
#    and trainer, fp32 and bf16. on-gpu.sh already ran it as its check (`retok doctor $RETOK_DOCTOR_ARGS`); keep its
#    table in $OUT, and run it here only when the check did not.
doclog=$(ls "$ON_GPU_WORK"/logs/*doctor*.log 2>/dev/null | head -1)
if [ -n "$doclog" ]; then cp "$doclog" "$OUT/doctor.txt"
else step doctor 200 bash -c "$RETOK doctor --device $DEVICE ${DOCTOR_SKIP:+--skip $DOCTOR_SKIP} > $OUT/doctor.txt 2>&1; rc=\$?; cat $OUT/doctor.txt; exit \$rc"
fi

# 2. sampling on the device (crashed on CUDA before issue 17): GPT-B random weights, CFG 1.5, bf16 as the release sampler
step ours_gpt_sample_bf16 150 $RETOK generator sample --preset GPT-B --random-init --classes random:$B --batch-size $B \
  --tokens $TOK --cfg-scale 1.5 --bf16 --device $DEVICE --out $P/codes_ours.npy

# 2b. issue 20: NCCL with one rank, and the gradient all-reduce's share of a GPT-B training step (docs/gpu.md table)
step ours_allreduce_$DP 120 $RETOK bench allreduce --preset GPT-B --batch $B --tokens $TOK --backend $DP --device $DEVICE --steps 10

# 3. tokenizer throughput with TF32 on (our default now, as the authors' scripts) and off (RETOK_TF32=0)
step ours_tok_bench_tf32 120 $RETOK tokenizer bench --config $CFG --batch-size $B --iters $ITERS --device $DEVICE
step ours_tok_bench_fp32 120 env RETOK_TF32=0 $RETOK tokenizer bench --config $CFG --batch-size $B --iters $ITERS --device $DEVICE

# 4. the authors' code next to ours (needs RETOK_REF_RETOK in the bundle)
if [ "$HAVE_REF" = 1 ]; then
  step ref_tok_bench 150 $REF_GPU bench --device $DEVICE --tasks tok --tok-config $CFG --batch $B --iters $ITERS --out $R
  if step parity_write 150 $REF_GPU parity-write $P --tok-config $CFG --n $N; then
    step ours_decode 120 $RETOK tokenizer decode --config $CFG --checkpoint $P/weights.safetensors --codes $P/codes.npy \
      --tokens 256 --out $P/ours_dec.npz --out-float $P/ours_dec.npy --device $DEVICE --batch-size $N
    step ours_encode 120 $RETOK tokenizer encode --config $CFG --checkpoint $P/weights.safetensors --images $P/images.npz \
      --out $P/ours_codes.npy --device $DEVICE --batch-size $N
    step parity_compare 60 $REF_GPU parity-compare $P --out $R
  fi
else
  note "reference steps skipped: no RETOK_REF_RETOK in the bundle (RETOK_REF_RETOK=<zfu006/ReTok checkout> make-bundle.sh)"
fi

# the numbers, into the summary's notes
note "doctor: $(tail -1 $OUT/doctor.txt 2>/dev/null)"
grep -h '^doctor: \(device\|CUDA\|TF32\|bf16\|memory\)' $OUT/doctor.txt 2>/dev/null | while IFS= read -r line; do note "$line"; done
note "allreduce ($DP): $(grep -h 'step with\|overhead' "$ON_GPU_WORK/logs/ours_allreduce_$DP.log" 2>/dev/null | tr '\n' ' ')"
for s in ours_tok_bench_tf32 ours_tok_bench_fp32; do
  note "$s: $(grep -h '^ours ' "$ON_GPU_WORK/logs/$s.log" 2>/dev/null | head -2 | tr '\n' ' ')"
done
[ -f "$R" ] && $REF_PY - "$R" <<'PY' | while IFS= read -r line; do note "$line"; done
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line[6:])
    t = r.pop("task")
    if t in ("tok_encode", "tok_decode", "gpt_sample"):
        what = r.get("preset", r.get("config")) + " " + r.get("dtype", "fp32") + (" +tf32" if r.get("tf32") else "")
        print(f"ref {t} {what} b{r['batch']}: {r['ms']:.1f} ms")
    elif t == "parity":
        print("parity " + ", ".join(f"{k}: " + " ".join(f"{m}={v:.3g}" for m, v in d.items()) for k, d in r.items()))
PY
rm -rf "$P"
