"""LoRA SFT against full-parameter SFT on the tiny config: validation loss, trainable parameters,
optimizer memory, step time and peak memory, through the real CLI.

The chain (as tests/test_posttrain_e2e.py): configs/tiny.py (2 layers, 64 wide) with a 128-token
block, pretrained on the KdConv training utterances (a char vocabulary), then SFT on KdConv
conversations twice from the same checkpoint, same data, seed and steps:

    full   every weight trains (optim.lr --full_lr)
    lora   lora.rank --rank, lora.alpha --alpha on attn/c_attn, attn/c_proj, mlp/c_fc,
           mlp/c_proj (optim.lr --lora_lr: LoRA wants a larger rate)

Prints the final val_loss (assistant tokens of the held-out conversations) of both and their
ratio, the trainable parameters and Adam state bytes (2 float32 moments each), the median
tokens/s of the logged steps, and each run's peak RSS. Stages whose workdir is complete are
not rerun (use a new --root to start over).

    python benchmarks/lora_sft.py [--root runs/bench_lora_sft] [--steps 300] [--rank 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data")
# runs gptjax.train and reports the process's peak RSS on stderr
WRAP = ("import atexit, resource, runpy, sys; atexit.register(lambda: print('PEAK_RSS_KB', "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)); "
        "sys.argv = ['gptjax.train'] + sys.argv[1:]; runpy.run_module('gptjax.train', "
        "run_name='__main__')")


def train(workdir: str, *args: str) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of `python -m gptjax.train ... --workdir workdir`."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-c", WRAP, "--config", "configs/tiny.py", *args,
           "--workdir", workdir, "--config.train.progress=False"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    rss = [int(x.split()[1]) for x in r.stderr.splitlines() if x.startswith("PEAK_RSS_KB")]
    return time.perf_counter() - t0, rss[-1] / 1024


def metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(x) for x in f]


def done(workdir: str, steps: int) -> bool:
    return os.path.isfile(os.path.join(workdir, "metrics.jsonl")) and any(
        m.get("step") == steps and "val_loss" in m for m in metrics(workdir))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="runs/bench_lora_sft")
    ap.add_argument("--data_root", default=SHARED)
    ap.add_argument("--pretrain_steps", type=int, default=300)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--full_lr", type=float, default=1e-3)
    ap.add_argument("--lora_lr", type=float, default=5e-3)
    ap.add_argument("--train", default="", help="lora.train: groups trained in full, e.g. wte")
    args = ap.parse_args()
    sys.path.insert(0, ROOT)
    from gptjax.data import sft as sft_data, sources

    root = os.path.abspath(args.root)
    os.makedirs(root, exist_ok=True)
    common = ("--config.model.block_size=128", "--config.train.batch_size=16",
              "--config.train.log_every=10")
    pre = os.path.join(root, "pretrain")
    if not done(pre, args.pretrain_steps):
        text = os.path.join(root, "kdconv_train.txt")
        train_convs, _ = sources.split(sft_data.read_kdconv(args.data_root), 0.1)
        with open(text, "w", encoding="utf-8") as f:
            f.write("\n".join(t["content"] for c in train_convs for t in c))
        s = args.pretrain_steps
        train(pre, *common, f"--config.data.text_path={text}", "--config.model.vocab_size=0",
              f"--config.train.steps={s}", f"--config.optim.decay_steps={s}",
              "--config.optim.warmup_steps=20", f"--config.train.eval_every={s}",
              f"--config.train.checkpoint_every={s}")
    rows = {}
    for name, lr, extra in (("full", args.full_lr, ()),
                            ("lora", args.lora_lr, (f"--config.lora.rank={args.rank}",
                                                    f"--config.lora.alpha={args.alpha}",
                                                    f"--config.lora.train={args.train}"))):
        tag = "full" if name == "full" else (f"lora_r{args.rank}_a{args.alpha:g}"
                                             + (f"_{args.train}" if args.train else ""))
        wd = os.path.join(root, f"sft_{tag}_lr{lr:g}_{args.steps}")
        s = args.steps
        if done(wd, s):  # measured before: reuse (its wall time and RSS are not known)
            seconds, rss = float("nan"), float("nan")
        else:
            seconds, rss = train(
                wd, *common, "--config.stage=sft", f"--config.init_from={pre}",
                "--config.data.mixture=kdconv", f"--config.data.root={args.data_root}",
                f"--config.train.steps={s}", f"--config.optim.decay_steps={s}",
                f"--config.optim.lr={lr}", f"--config.optim.min_lr={lr / 10}",
                "--config.optim.warmup_steps=20", f"--config.train.eval_every={s}",
                f"--config.train.checkpoint_every={s}", *extra)
        m = metrics(wd)
        tps = [x["tokens_per_sec"] for x in m if "tokens_per_sec" in x]
        rows[name] = {"val_loss": [x for x in m if "val_loss" in x][-1]["val_loss"],
                      "tokens_per_sec": float(np.median(tps)), "seconds": seconds,
                      "peak_rss_mib": rss, "workdir": wd}
    from gptjax import lora, workdir as workdir_lib
    model = workdir_lib.load_host(rows["full"]["workdir"])
    total = lora.num_params(model.params)
    import jax.numpy as jnp

    from gptjax.model import GPT
    spec = workdir_lib.lora_spec(rows["lora"]["workdir"])
    trainable = sum(args.rank * (int(np.prod(s.in_shape)) + int(np.prod(s.out_shape)))
                    for s in lora.sites(GPT(model.cfg), spec, jnp.zeros((1, 4), jnp.int32)))
    trainable += lora.num_params(lora.pick(model.params, [
        tuple(g.split("/")) for g in args.train.split(",") if g]))
    f, lo = rows["full"], rows["lora"]
    print(f"\nSFT on KdConv, configs/tiny.py with block 128 ({total:,} parameters), "
          f"{args.steps} steps from a {args.pretrain_steps}-step pretrained model\n")
    print("| run | optim.lr | trainable params | Adam state | val_loss | tokens/s (median) | "
          "wall s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, n, lr in (("full", total, args.full_lr),
                        (f"LoRA r={args.rank}, alpha={args.alpha:g}"
                         + (f" + {args.train} in full" if args.train else ""), trainable,
                         args.lora_lr)):
        r = f if name == "full" else lo
        print(f"| {name} | {lr:g} | {n:,} | {8 * n / 2**10:.1f} KiB | {r['val_loss']:.4f} | "
              f"{r['tokens_per_sec']:.0f} | {r['seconds']:.0f} | {r['peak_rss_mib']:.0f} |")
    print(f"\nLoRA / full: val_loss {lo['val_loss'] / f['val_loss']:.4f} (target <= 1.05), "
          f"trainable {trainable / total:.4f}, tokens/s "
          f"{lo['tokens_per_sec'] / f['tokens_per_sec']:.2f}")


if __name__ == "__main__":
    main()
