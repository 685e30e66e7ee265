"""GRPO with LoRA against full fine-tuning, from the same SFT workdir, through the real CLI:
trainable parameters, the optimizer (AdamW) state's bytes, the train state on disk and the median
time of each phase.

    python benchmarks/grpo_lora.py --sft runs/grpo_addition/sft [--steps 12] [--rank 8]
        [--full_lr 5e-5] [--lora_lr 1e-3] [--out runs/bench_grpo_lora]

Both runs use configs/grpo_addition.py (16 problems x 8 answers of <= 40 tokens an iteration,
on-policy, beta 0) without evaluation. The runs are sequential, so on a shared machine their
times are only indicative; the parameter and byte counts are exact.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("time_rollout", "time_reward", "time_scoring", "time_update")


def state_bytes(workdir: str) -> dict[str, int]:
    """Parameters and optimizer-state bytes of the workdir's train state (its shapes)."""
    sys.path.insert(0, ROOT)
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import ml_collections

    from gptjax import lora
    from gptjax import workdir as workdir_lib
    from gptjax.loops import tuning
    from gptjax.model import GPT
    from gptjax.optim import make_optimizer

    run = workdir_lib.run_config(workdir)
    config = ml_collections.ConfigDict(run)
    with tempfile.TemporaryDirectory() as scratch:  # tuning.make writes lora_base.json
        tune = tuning.make(config, scratch, GPT(workdir_lib.model_config(workdir)),
                           (jnp.zeros((1, 1), jnp.int32),), None, None, 0)
    shapes = jax.eval_shape(lambda: nn.unbox(tune.init(jax.random.key(0))))
    opt = jax.eval_shape(make_optimizer(config.optim).init, shapes)
    return {"trainable": lora.num_params(shapes), "param_bytes": lora.num_bytes(shapes),
            "optimizer_bytes": lora.num_bytes(opt)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft", required=True, help="an SFT workdir of the addition task")
    ap.add_argument("--out", default="runs/bench_grpo_lora")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--full_lr", type=float, default=5e-5)
    ap.add_argument("--lora_lr", type=float, default=1e-3)
    args = ap.parse_args()
    rows = []
    for name, rank, lr in (("full", 0, args.full_lr), ("lora", args.rank, args.lora_lr)):
        wd = os.path.join(args.out, name)
        shutil.rmtree(wd, ignore_errors=True)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"{name}.log"), "w") as log:
            subprocess.run([sys.executable, "-m", "gptjax.train", "--config",
                            "configs/grpo_addition.py", f"--config.init_from={args.sft}",
                            f"--config.lora.rank={rank}", f"--config.optim.lr={lr}",
                            f"--config.optim.min_lr={lr}", f"--config.train.steps={args.steps}",
                            "--config.grpo.eval_at_start=False", "--config.grpo.eval_prompts=0",
                            "--config.train.progress=False", "--workdir", wd],
                           cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
        with open(os.path.join(wd, "metrics.jsonl")) as f:
            metrics = [json.loads(line) for line in f][2:]  # steps 1-2 hold compilation
        ckpt = os.path.join(wd, "checkpoints", str(args.steps))
        disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ckpt) for f in fs)
        rows.append({"run": name, **state_bytes(wd), "checkpoint_bytes": disk,
                     **{k: statistics.median(m[k] for m in metrics if k in m) for k in PHASES}})
    print("| run | trainable parameters | AdamW state | train state on disk | "
          + " | ".join(k[5:] + " s" for k in PHASES) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(PHASES))
    for r in rows:
        print(f"| {r['run']} | {r['trainable']:,} | {r['optimizer_bytes'] / 2**20:.2f} MiB | "
              f"{r['checkpoint_bytes'] / 2**20:.2f} MiB | "
              + " | ".join(f"{r[k]:.3f}" for k in PHASES) + " |")


if __name__ == "__main__":
    main()
