"""PPO with and without the pretraining mix (PPO-ptx, InstructGPT eq. 2) on a real chain.

The chain is `benchmarks/reward_accuracy.py`'s (prepare_english 4,000-token BPE -> a 4-layer,
128-wide GPT pretrained on the shipped C4 + Wikipedia samples -> SFT on Topical-Chat,
Self-Instruct, GSM8K -> a reward model on hh-rlhf pairs), built under --root if it is not there
yet. Then PPO runs twice from the same SFT model against the same reward model, on the same
prompts, seeds and iterations: ptx_coef 0 and ptx_coef --ptx_coef. Every --eval_every
iterations each run scores held-out prompts and measures the policy's LM loss on the held-out
split of the pretraining data (`val_ptx_loss`); the SFT model's own loss there is the
baseline. Prints, per run: the mean score of the first and last 10 iterations, the KL to the SFT
model, and val_ptx_loss at the start and the end (and its rise over SFT's).

    python benchmarks/ppo_ptx.py [--root runs/bench_reward] [--iterations 60] [--ptx_coef 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(x) for x in f]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="runs/bench_reward")
    ap.add_argument("--data_root", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--eval_every", type=int, default=10)
    ap.add_argument("--ptx_coef", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--batch_prompts", type=int, default=8)
    ap.add_argument("--max_prompt_tokens", type=int, default=64)
    ap.add_argument("--max_new_tokens", type=int, default=32)
    args = ap.parse_args()
    root = os.path.abspath(args.root)
    sft, reward = os.path.join(root, "sft"), os.path.join(root, "reward_hh-rlhf")
    if not os.path.isdir(os.path.join(reward, "checkpoints")):
        run([sys.executable, "benchmarks/reward_accuracy.py", "--root", root,
             "--data_root", args.data_root])
    rows = []
    for coef in (0.0, args.ptx_coef):
        out = os.path.join(root, f"ppo_ptx{coef:g}")
        seconds = run([
            sys.executable, "-m", "gptjax.train", "--config", "configs/ppo.py",
            f"--config.init_from={sft}", f"--config.ppo.reward_from={reward}",
            f"--config.data.root={args.data_root}", "--config.data.mixture=hh-rlhf",
            f"--config.ppo.ptx_coef={coef}", f"--config.ppo.max_new_tokens={args.max_new_tokens}",
            f"--config.ppo.max_prompt_tokens={args.max_prompt_tokens}",
            f"--config.ppo.batch_prompts={args.batch_prompts}", "--config.ppo.num_minibatches=2",
            "--config.data.seq_len=96",
            f"--config.train.steps={args.iterations}",
            f"--config.train.eval_every={args.eval_every}", "--config.train.eval_batches=4",
            f"--config.train.checkpoint_every={args.iterations}",
            f"--config.optim.lr={args.lr}", f"--config.optim.min_lr={args.lr}",
            "--config.train.progress=False", "--workdir", out])
        m = metrics(out)
        evals = [x for x in m if "val_ptx_loss" in x]
        rows.append((coef, m, evals, seconds))
    # The first evaluation is at step 0, before any update: the SFT model's own numbers.
    print(f"\nPPO from {sft} against {reward}: {args.iterations} iterations of "
          f"{args.batch_prompts} x 4 answers of <= {args.max_new_tokens} tokens to prompts of <= "
          f"{args.max_prompt_tokens} tokens, eval every {args.eval_every}\n")
    print("| ptx_coef | score, iters 1-10 | score, last 10 | rm_score, last 10 | KL, last 10 | "
          "val_ptx_loss (SFT, step 0) | val_ptx_loss last eval | ptx_loss last 10 | "
          "truncated, last 10 | wall s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for coef, m, evals, seconds in rows:
        def mean(key, part):
            vals = [x[key] for x in part if key in x]
            return sum(vals) / len(vals) if vals else float("nan")
        train = [x for x in m if x["step"] > 0]
        print(f"| {coef:g} | {mean('score', train[:10]):.3f} | {mean('score', train[-10:]):.3f} | "
              f"{mean('rm_score', train[-10:]):.3f} | {mean('kl', train[-10:]):.2f} | "
              f"{evals[0]['val_ptx_loss']:.4f} (it {evals[0]['step']})"
              f" | {evals[-1]['val_ptx_loss']:.4f} (it {evals[-1]['step']}) | "
              f"{mean('ptx_loss', train[-10:]):.4f} | {mean('truncated', train[-10:]):.2f} | "
              f"{seconds:.0f} |")


if __name__ == "__main__":
    main()
