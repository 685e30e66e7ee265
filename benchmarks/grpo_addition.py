"""GRPO on the shipped addition task, end to end through the CLI: the held-out exact-match curve.

    python benchmarks/grpo_addition.py [--out runs/grpo_addition] [--grpo_steps 300] [--minutes 15]
        [--pretrain_steps 600] [--sft_steps 300]
        [--skip_to grpo] [--extra --config.grpo.advantage=rloo ...]

1. `python -m gptjax.data.addition --text` writes the 400 worked training examples as text;
2. stage pretrain (configs/addition_pretrain.py): a 2-layer, 128-wide char GPT learns them as
   plain text (the only data it ever sees besides the RL prompts);
3. stage sft (configs/addition_sft.py): the same 400 examples as chat turns;
4. stage grpo (configs/grpo_addition.py): GRPO on the task's training problems (prompts and the
   verifier only, no worked answers), the SFT model's greedy exact match on 200 held-out test
   problems measured at step 0 and every 20 iterations.

GRPO stops after --grpo_steps iterations or --minutes of wall time (SIGTERM: the trainer saves
and exits), whichever is first. Prints the curve (iteration, wall seconds, held-out exact match)
as a markdown table and the gain over the SFT start. A rerun reuses finished stages (each stage
resumes from its own workdir); --skip_to grpo reruns only GRPO into a fresh folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args: str, log: str, timeout: float | None = None) -> float:
    """Run `python -m gptjax.train ...` (or another module); the wall seconds it took."""
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", *args, "--config.train.progress=False"]
                                if args[0] == "gptjax.train" else [sys.executable, "-m", *args],
                                cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # the trainer saves the step it is at and exits
            proc.wait()
    if proc.returncode not in (0, 128 + signal.SIGTERM):
        sys.exit(f"{' '.join(args[:3])} failed with code {proc.returncode}; see {log}")
    return time.perf_counter() - t


def done(workdir: str) -> bool:
    return os.path.exists(os.path.join(workdir, "metrics.jsonl")) and os.path.isdir(
        os.path.join(workdir, "checkpoints"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "grpo_addition"))
    ap.add_argument("--grpo_steps", type=int, default=300)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--pretrain_steps", type=int, default=600)
    ap.add_argument("--sft_steps", type=int, default=300,
                    help="fewer SFT steps leave a weaker start, with more for GRPO to gain")
    ap.add_argument("--skip_to", choices=("pretrain", "grpo"), default="pretrain")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                    help="more --config flags for the grpo stage")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    pre, sft, grpo = (os.path.join(out, n) for n in ("pretrain", "sft", "grpo"))
    text = os.path.join(out, "addition.txt")
    walls = {}
    if args.skip_to == "pretrain":
        cli("gptjax.data.addition", "--text", text, "--examples", "400",
            log=os.path.join(out, "text.log"))
        for name, wd, cmd in (
                ("pretrain", pre, ("--config", "configs/addition_pretrain.py",
                                   f"--config.data.text_path={text}",
                                   f"--config.train.steps={args.pretrain_steps}",
                                   f"--config.optim.decay_steps={args.pretrain_steps}")),
                ("sft", sft, ("--config", "configs/addition_sft.py",
                              f"--config.init_from={pre}",
                              f"--config.train.steps={args.sft_steps}",
                              f"--config.optim.decay_steps={args.sft_steps}",
                              f"--config.train.checkpoint_every={args.sft_steps}"))):
            if not done(wd):
                walls[name] = cli("gptjax.train", *cmd, "--workdir", wd,
                                  log=os.path.join(out, f"{name}.log"))
    shutil.rmtree(grpo, ignore_errors=True)
    walls["grpo"] = cli("gptjax.train", "--config", "configs/grpo_addition.py",
                        f"--config.init_from={sft}", f"--config.train.steps={args.grpo_steps}",
                        *args.extra, "--workdir", grpo, log=os.path.join(out, "grpo.log"),
                        timeout=args.minutes * 60)
    with open(os.path.join(grpo, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    t_iter = {r["step"]: sum(v for k, v in r.items() if k.startswith("time_")) for r in rows}
    print(f"wall seconds: {json.dumps({k: round(v) for k, v in walls.items()})}")
    print("| iteration | GRPO seconds (phases, cumulative) | held-out exact match, greedy | "
          "held-out exact match, sampled (T = 1) | training answers' exact match (sampled) |"
          "\n|---:|---:|---:|---:|---:|")
    evals = [r for r in rows if "eval_exact_match" in r]
    for r in evals:
        secs = sum(v for k, v in t_iter.items() if k <= r["step"])
        print(f"| {r['step']} | {secs:.0f} | {r['eval_exact_match']:.3f} | "
              f"{r['eval_exact_match_sampled']:.3f} | {r.get('exact_match', float('nan')):.3f} |")
    first, last = evals[0], evals[-1]
    for key, what in (("eval_exact_match", "greedy"), ("eval_exact_match_sampled", "sampled")):
        print(f"held-out exact match ({what}) {first[key]:.3f} -> {last[key]:.3f} "
              f"({100 * (last[key] - first[key]):+.1f} points) in {last['step']} iterations")
    print(f"{walls['grpo']:.0f} s of wall time for the grpo command")
    return 0


if __name__ == "__main__":
    sys.exit(main())
