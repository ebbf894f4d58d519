#!/usr/bin/env python3
"""Reference timing for bench/tokenizer.sh: the authors' VQVitModelPlus (VQ_SS256 by default) on CPU, fp32.
Warm-up with batch 1, then `iters` timed runs of encode and decode_code(K) at the given batch. Prints one JSON line."""
import argparse, importlib.util, json, os, sys, time

import torch
import yaml

p = argparse.ArgumentParser()
p.add_argument("--config", default="VQ_SS256")
p.add_argument("--batch-size", type=int, default=8)
p.add_argument("--iters", type=int, default=1)
p.add_argument("--tokens", type=int, default=256)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()

root = os.environ["RETOK_REF_RETOK"]
here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("retok_tokenizer_gen", os.path.join(here, "..", "tests", "fixtures", "gen", "tokenizer.py"))
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)
blocks, vq = gen.import_reference(root)
torch.set_num_threads(a.threads)
cfg = yaml.safe_load(open(os.path.join(root, "configs", "vq", a.config + ".yaml")))
torch.manual_seed(0)
model = gen.build(blocks, vq, cfg["model"]["init_args"]).eval()


def run(b):
    x = torch.rand(b, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        t0 = time.perf_counter()
        codes = model.encode(x)[2][2].reshape(b, -1)
        t1 = time.perf_counter()
        model.decode_code(codes[:, :a.tokens].reshape(-1), shape=(b, 8, 1, a.tokens), num_tokens=a.tokens)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1


run(1)
enc = dec = 0.0
for _ in range(a.iters):
    e, d = run(a.batch_size)
    enc += e / a.iters
    dec += d / a.iters
print("BENCH_JSON " + json.dumps({"encode_img_s": a.batch_size / enc, "decode_img_s": a.batch_size / dec,
                                  "torch": torch.__version__, "threads": torch.get_num_threads(),
                                  "blas": os.environ.get("LD_LIBRARY_PATH", "system (Debian reference BLAS)")}))
