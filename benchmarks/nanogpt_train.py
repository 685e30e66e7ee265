"""nanoGPT's CPU baby-GPT run, rewritten from nanoGPT's public train.py, as a same-machine peer.

The command nanoGPT's README gives for a CPU:
    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
        --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
        --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
This script does the same work: data/shakespeare_char/prepare.py (sorted characters, 90/10
split, uint16 files), then train.py's loop: `get_batch` re-opening the memmap each call,
`estimate_loss` on train and val every 250 iterations (20 batches each), the warmup + cosine
`get_lr`, AdamW(betas 0.9/0.99, weight decay 0.1 on >= 2-D tensors) and clipping at 1.0. The model
is `build_nanogpt` from train_throughput.py (nanoGPT's model.py, exact GELU as nanoGPT's
nn.GELU()). It never imports jax. Prints one JSON line `RESULT {...}` at the end.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import tempfile
import time

T0 = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_throughput import build_nanogpt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = os.path.join(ROOT, "gptjax", "data", "assets", "tinyshakespeare.txt")
BLOCK, BATCH, ITERS, EVAL_INTERVAL, EVAL_ITERS = 64, 12, 2000, 250, 20
LR, MIN_LR, WARMUP, DECAY_ITERS = 1e-3, 1e-4, 100, 2000


def prepare(out_dir: str) -> int:
    with open(TEXT, encoding="utf-8") as f:
        data = f.read()
    chars = sorted(set(data))
    stoi = {ch: i for i, ch in enumerate(chars)}
    n = len(data)
    np.array([stoi[c] for c in data[: int(n * 0.9)]], dtype=np.uint16).tofile(
        os.path.join(out_dir, "train.bin"))
    np.array([stoi[c] for c in data[int(n * 0.9):]], dtype=np.uint16).tofile(
        os.path.join(out_dir, "val.bin"))
    return len(chars)


def main() -> None:
    torch.manual_seed(1337)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    data_dir = tempfile.mkdtemp()
    vocab = prepare(data_dir)

    def get_batch(split):
        data = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - BLOCK, (BATCH,))
        x = torch.stack([torch.from_numpy(data[i:i + BLOCK].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + BLOCK].astype(np.int64)) for i in ix])
        return x, y

    spec = dict(n_embd=128, n_head=4, n_layer=4, bias=False, ln_eps=1e-5, vocab_size=vocab,
                block_size=BLOCK, activation="gelu")
    model = build_nanogpt(spec)

    def loss_of(x, y):
        return F.cross_entropy(model(x).view(-1, vocab), y.view(-1))

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = {s: float(np.mean([loss_of(*get_batch(s)).item() for _ in range(EVAL_ITERS)]))
               for s in ("train", "val")}
        model.train()
        return out

    def get_lr(it):
        if it < WARMUP:
            return LR * (it + 1) / (WARMUP + 1)
        if it > DECAY_ITERS:
            return MIN_LR
        ratio = (it - WARMUP) / (DECAY_ITERS - WARMUP)
        return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)

    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.99))
    t_loop = time.perf_counter()
    val = None
    x, y = get_batch("train")
    for it in range(ITERS + 1):
        for g in opt.param_groups:
            g["lr"] = get_lr(it)
        if it % EVAL_INTERVAL == 0:
            val = estimate_loss()["val"]
        if it == ITERS:  # nanoGPT evaluates at max_iters, then stops
            break
        loss = loss_of(x, y)
        x, y = get_batch("train")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # nanoGPT reads the loss every iteration (log_interval=1)
    now = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print("RESULT " + json.dumps({"val_loss": val, "steps": ITERS, "loop_s": now - t_loop,
                                  "process_s": now - T0, "peak_rss_mib": rss}), flush=True)


if __name__ == "__main__":
    main()
