#!/usr/bin/python3
"""Times the reference tokenizer training iteration (GigaTok's vq_train.py loop body == ReTok's) for `retok train bench`.

usage: RETOK_REF_RETOK=/tmp/ref/retok [RETOK_REF_DINOV2=/tmp/ref/dinov2] /usr/bin/python3 bench/train_tokenizer_ref.py \
           CONFIG_YAML BATCH STEPS THREADS DISC_DIM PERCEPTUAL(0/1) TEACHER(0/1)
CONFIG_YAML holds `model:` as jobs/*.yaml (`params.model`) or configs/vq/*.yaml do. One iteration = teacher forward (no
grad), G forward (K = 256, the released loop), VQLoss (LPIPS-VGG with random weights: timing only), backward, clip,
AdamW; D forward x2 + backward, clip, AdamW. fp32, CPU. The first iteration is a warm-up.
Forward FLOPs of each network are counted once with torch.profiler(with_flops=True) (conv/linear/matmul ops).
Prints one line: RESULT {json}.
"""
import importlib.util
import json
import os
import sys
import time
import types

import torch
import torch.nn.functional as F
import yaml

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
GEN = os.path.join(HERE, "..", "tests", "fixtures", "gen")
REF = os.environ.get("RETOK_REF_RETOK") or sys.exit("set RETOK_REF_RETOK to a checkout of zfu006/ReTok")

cfg_path, batch, steps, threads, disc_dim, perceptual, teacher_on = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1", sys.argv[7] == "1"
if threads > 0:
    torch.set_num_threads(threads)

spec = importlib.util.spec_from_file_location("tokgen", os.path.join(GEN, "tokenizer.py"))
tokgen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tokgen)
blocks, vq = tokgen.import_reference(REF)


def stub(name, **attrs):
    m = types.ModuleType(name)
    m.__path__ = []
    m.__dict__.update(attrs)
    sys.modules[name] = m


class Unused(torch.nn.Module):
    def __init__(self, *a, **k):
        raise RuntimeError("unused")


# the real LPIPS class, with the pretrained VGG/heads replaced by random weights (nothing downloads)
import torchvision  # noqa: E402
_vgg = torchvision.models.vgg16
torchvision.models.vgg16 = lambda pretrained=False, **k: _vgg(weights=None)
stub("timm")   # lpips.py imports timm.data constants for its (unused here) DinoV2ImgSim
stub("timm.data", IMAGENET_DEFAULT_MEAN=(0.485, 0.456, 0.406), IMAGENET_DEFAULT_STD=(0.229, 0.224, 0.225))
lpips = importlib.import_module("tokenizer.tokenizer_image.lpips")
lpips.LPIPS.load_from_pretrained = lambda self, name="vgg_lpips": None
for m in ["discriminator_stylegan", "discriminator_patchgan_SeD", "discriminator_patchr3gan", "discriminator_dino", "diffaug"]:
    stub(f"tokenizer.tokenizer_image.{m}", Discriminator=Unused, PatchGANSeDiscriminatorV3=Unused, PatchViTDiscriminator=Unused,
         DinoDisc=Unused, DiffAug=Unused)
stub("utils")
stub("utils.resume_log", wandb_cache_file_append=lambda *a, **k: None)
import torch.distributed as dist  # noqa: E402
dist.get_rank = lambda *a, **k: 0
vq_loss_mod = importlib.import_module("tokenizer.tokenizer_image.vq.vq_loss")
sched_mod = importlib.import_module("tokenizer.tokenizer_image.scheduler")

root = yaml.safe_load(open(cfg_path))
model_cfg = root.get("params", root)["model"]
init_args = {k: v for k, v in model_cfg["init_args"].items()}
torch.manual_seed(0)
model = tokgen.build(blocks, vq, init_args)
model.quantize._buffers["codebook_used"] = torch.zeros(65536)
model.train()
loss = vq_loss_mod.VQLoss(disc_start=0, disc_loss="hinge", disc_dim=disc_dim, disc_type="patchgan", image_size=256,
                          disc_num_layers=3, disc_weight=0.5, gen_adv_loss="hinge", reconstruction_loss="l2",
                          perceptual_weight=1.0 if perceptual else 0.0, aux_loss_end=15000, use_direct_rec_loss=False,
                          norm="batch", kw=4, lecam=False)
class NoPerceptual(torch.nn.Module):   # perceptual_weight 0 (our tiny spec): no VGG at all
    def forward(self, x, y):
        return torch.zeros(x.shape[0], 1, 1, 1)


if not perceptual:
    loss.perceptual_loss = NoPerceptual()
loss.train()

teacher = None
if teacher_on:
    dino = os.environ.get("RETOK_REF_DINOV2") or sys.exit("TEACHER=1 needs RETOK_REF_DINOV2")
    os.environ["XFORMERS_DISABLED"] = "1"

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
        return ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(-1) @ v
    F.scaled_dot_product_attention = sdpa
    sys.path.insert(0, dino)
    from functools import partial
    from dinov2.models import vision_transformer as vits
    from dinov2.layers import block as block_mod, attention as attn_mod
    teacher = vits.DinoVisionTransformer(img_size=224, patch_size=14, init_values=1.0, ffn_layer="mlp", block_chunks=0,
                                         num_register_tokens=0, interpolate_antialias=False, interpolate_offset=0.1,
                                         block_fn=partial(block_mod.Block, attn_class=attn_mod.MemEffAttention),
                                         embed_dim=768, depth=12, num_heads=12).eval()
    for p in teacher.parameters():
        p.requires_grad = False
mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)

opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-4)
opt_d = torch.optim.AdamW(loss.discriminator.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-4)
sch = sched_mod.cosine_schedule_with_warmup_v2(opt, base_lr=1e-4, warmup_length=0, steps=1000, end_lr=1e-5)
sch_d = sched_mod.cosine_schedule_with_warmup_v2(opt_d, base_lr=1e-4, warmup_length=0, steps=1000, end_lr=1e-5)
x = torch.rand(batch, 3, 256, 256) * 2 - 1
distill = model.config.distill_depth is not None and teacher is not None


def teacher_feats(imgs):
    with torch.no_grad():
        pre = F.interpolate(((imgs + 1) / 2 - mean) / std, 224, mode="bicubic")
        return teacher.forward_features(pre)["x_norm_patchtokens"]


def iteration(t):
    opt.zero_grad(set_to_none=True)
    z = teacher_feats(x) if distill else None
    if distill:
        recons, inter, inner = model(x, rec_loss=True, ret_inner_feat=True)
    else:
        (recons, inter), inner = model(x, rec_loss=True), None
    g = loss(inter, x, recons, optimizer_idx=0, global_step=t + 1, exp_dir=None, last_layer=None, logger=None,
             log_every=10 ** 9, ckpt_every=10 ** 9, inner_feat=inner, sem_enc_feat=z)
    g.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    opt.step()
    sch(t)
    opt_d.zero_grad(set_to_none=True)
    d = loss(inter, x, recons, optimizer_idx=1, global_step=t + 1, exp_dir=None, logger=None, log_every=10 ** 9,
             ckpt_every=10 ** 9, sem_enc_feat=z)
    d.backward()
    torch.nn.utils.clip_grad_norm_(loss.discriminator.parameters(), 10.0)
    opt_d.step()
    sch_d(t)


def fwd_flops(fn):
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
        fn()
    return float(sum(e.flops for e in prof.key_averages() if e.flops))


model.eval()
flops = {"generator": fwd_flops(lambda: model(x)), "discriminator": fwd_flops(lambda: loss.discriminator(x))}
model.train()
flops["lpips"] = fwd_flops(lambda: loss.perceptual_loss(x, x)) if perceptual else 0.0
flops["teacher"] = fwd_flops(lambda: teacher_feats(x)) if distill else 0.0

iteration(0)  # warm-up
times = []
for t in range(1, steps + 1):
    s = time.perf_counter()
    iteration(t)
    times.append(time.perf_counter() - s)
print("RESULT " + json.dumps({"ms_per_step": 1000 * min(times), "ms_mean": 1000 * sum(times) / len(times),
                              "fwd_flops": flops, "threads": torch.get_num_threads(), "torch": torch.__version__}))
