"""Reward-model accuracy on held-out human preferences, from a small model trained here.

The whole chain runs through the real CLI, each stage in its own workdir under --root:

    prepare   configs/prepare_english.py (shipped C4 + Wikipedia samples, 4,000-token BPE)
    pretrain  a small GPT on the prepared shards
    sft       on Topical-Chat, Self-Instruct and GSM8K (not hh-rlhf, whose chosen dialogues
              would include the reward model's held-out answers)
    reward    one reward model per preference set: hh-rlhf (pairs), FineGrainedRLHF (4 answers,
              6 human comparisons each)

and prints, per preference set, the pairwise accuracy on its held-out records with its
standard error sqrt(a(1-a)/n) and the chance level 0.5. A stage whose workdir already holds its
final checkpoint is not retrained (rerun with a new --root to start over).

    python benchmarks/reward_accuracy.py [--root runs/bench_reward] [--pretrain_steps 800]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = ("--config.model.n_layer=4", "--config.model.n_head=4", "--config.model.n_embd=128",
         "--config.model.block_size=256", "--config.model.bias=False")


def train(workdir: str, *args: str) -> float:
    """Run `python -m gptjax.train ... --workdir workdir`; seconds taken."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "gptjax.train", *args, "--workdir", workdir,
           "--config.train.progress=False"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    print(r.stdout.strip().splitlines()[-1], file=sys.stderr)
    return time.perf_counter() - t0


def schedule(steps: int, lr: float) -> tuple[str, ...]:
    return (f"--config.train.steps={steps}", f"--config.optim.decay_steps={steps}",
            f"--config.optim.lr={lr}", f"--config.optim.min_lr={lr / 10}",
            f"--config.train.checkpoint_every={steps}", f"--config.train.eval_every={steps}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="runs/bench_reward")
    ap.add_argument("--data_root", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--pretrain_steps", type=int, default=800)
    ap.add_argument("--sft_steps", type=int, default=500)
    ap.add_argument("--reward_steps", type=int, default=300)
    args = ap.parse_args()
    root = os.path.abspath(args.root)
    wd = {k: os.path.join(root, k) for k in ("prepare", "pretrain", "sft")}
    seconds = {}
    seconds["prepare"] = train(wd["prepare"], "--config", "configs/prepare_english.py")
    seconds["pretrain"] = train(
        wd["pretrain"], "--config", "configs/base.py", *MODEL, "--config.model.vocab_size=0",
        f"--config.data.prepared_dir={wd['prepare']}", "--config.train.batch_size=16",
        "--config.optim.warmup_steps=100", "--config.optim.weight_decay=0.1",
        *schedule(args.pretrain_steps, 1e-3))
    seconds["sft"] = train(
        wd["sft"], "--config", "configs/sft_dialogues.py", f"--config.init_from={wd['pretrain']}",
        f"--config.data.root={args.data_root}",
        # not hh-rlhf: its chosen dialogues include the reward model's held-out answers
        "--config.data.mixture=topical-chat:1,self-instruct:0.5,gsm8k:0.5",
        "--config.train.batch_size=16", *schedule(args.sft_steps, 3e-4))
    rows = []
    for name in ("hh-rlhf", "finegrained-rlhf"):
        out = os.path.join(root, f"reward_{name}")
        seconds[f"reward {name}"] = train(
            out, "--config", "configs/reward_preferences.py", f"--config.init_from={wd['sft']}",
            f"--config.data.root={args.data_root}", f"--config.data.mixture={name}",
            "--config.train.batch_size=8", "--config.reward.normalize_prompts=32",
            *schedule(args.reward_steps, 1e-4))
        with open(os.path.join(out, "reward_eval.json")) as f:
            rows.append((name, json.load(f)))
    print(f"\nreward model: {' '.join(MODEL)}, {args.pretrain_steps} pretraining / "
          f"{args.sft_steps} SFT / {args.reward_steps} reward steps\n")
    print("| preference set | held-out records | labeled pairs | accuracy | std. error | chance "
          "| (accuracy - chance) / s.e. |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        z = (r["accuracy"] - r["chance"]) / max(r["stderr"], 1e-9)
        print(f"| {name} | {r['records']} | {r['pairs']} | {r['accuracy']:.3f} | "
              f"{r['stderr']:.3f} | {r['chance']:.1f} | {z:.1f} |")
    print("\nwall seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
