#!/usr/bin/python3
"""Times the authors' generate.py (zfu006/ReTok) for `retok generator bench --reference`.

usage: RETOK_REF_RETOK=/tmp/ref/retok /usr/bin/python3 bench/generator_ref.py GPT-B BATCH TOKENS CFG THREADS REPEATS
Same setting as our side: preset with vocab 16384 / block 256, random init with a random head, labels 0..B-1,
step schedule (window start 0.18), temperature 1, top-k 0, top-p 1, fp32, CPU. Prints "RESULT <best seconds> <torch>".
"""
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "gen"))
from retok_ref_shim import gen, gpt  # noqa: E402
import torch  # noqa: E402

preset, batch, tokens, cfg, threads, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
if threads > 0:
    torch.set_num_threads(threads)
torch.manual_seed(0)
model = gpt.GPT_models[preset](vocab_size=16384, block_size=256).eval()
with torch.no_grad():
    model.output.weight.normal_(0, 0.02)
labels = torch.arange(batch)
kw = dict(cfg_scale=cfg, cfg_schedule="step", cfg_schedule_kwargs={"window_start": 0.18}, temperature=1.0, top_k=0, top_p=1.0, sample_logits=True)
gen.generate(model, labels, min(8, tokens), **kw)  # warm-up
best = float("inf")
for _ in range(max(1, repeats)):
    t = time.perf_counter()
    gen.generate(model, labels, tokens, **kw)
    best = min(best, time.perf_counter() - t)
print(f"threads {torch.get_num_threads()}, blas {torch.__config__.show().count('BLAS_INFO=open') and 'openblas' or 'build default'}", file=sys.stderr)
print(f"RESULT {best:.4f} {torch.__version__}")
