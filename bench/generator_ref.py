#!/usr/bin/python3
"""Times the authors' generate.py (zfu006/ReTok) for `retok generator bench --reference`.

usage: RETOK_REF_RETOK=/tmp/ref/retok /usr/bin/python3 bench/generator_ref.py GPT-B BATCH TOKENS CFG THREADS REPEATS
Same setting as our side: preset with vocab 16384 / block 256, random init with a random head, labels 0..B-1,
step schedule (window start 0.18), temperature 1, top-k 0, top-p 1, fp32, CPU. Prints "RESULT <best wall s> <best CPU s> <torch>".
"""
import os
import sys
import time

sys.dont_write_bytecode = True
# load the shim by path: putting tests/fixtures/gen on sys.path would shadow the reference's `tokenizer` package
import importlib.util  # noqa: E402
_spec = importlib.util.spec_from_file_location(
    "retok_ref_shim", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "gen", "retok_ref_shim.py"))
_shim = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shim)
gen, gpt = _shim.gen, _shim.gpt
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
best = best_cpu = float("inf")
for _ in range(max(1, repeats)):
    t, c = time.perf_counter(), time.process_time()
    gen.generate(model, labels, tokens, **kw)
    best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
# breakdown: CPU ms of one decode step's model forward (2B rows, KV cache), as ours
rows = 2 * batch if cfg > 1 else batch
cond = torch.arange(rows) % 1000
fwd = 0.0
with torch.no_grad():
    model.setup_caches(max_batch_size=rows, max_seq_length=1 + tokens, dtype=torch.float32)
    model(None, cond, torch.arange(0, 1))
    steps = min(32, tokens - 1)
    x = torch.zeros(rows, 1, dtype=torch.long)
    for t in range(1, steps + 1):
        c = time.process_time()
        model(x, cond_idx=cond, input_pos=torch.tensor([t]), using_kv_cache=True)
        fwd += time.process_time() - c
print(f"FORWARD {1000 * fwd / steps:.2f}")
print(f"threads {torch.get_num_threads()}, blas {torch.__config__.show().count('BLAS_INFO=open') and 'openblas' or 'build default'}", file=sys.stderr)
print(f"RESULT {best:.4f} {best_cpu:.4f} {torch.__version__}")
