"""Pieces shared by benchmarks/overoptimization.py and benchmarks/rlhf_heldout.py.

Stages run through the real CLI (`python -m gptjax.train`), each in its own workdir; a stage
whose workdir already holds its final result is not run again, so an interrupted benchmark
reruns from where it stopped. Win rates run the eval stage in-process
(`gptjax.loops.eval.run(config, workdir, judge=...)`) so that any judge object can decide them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
MODEL_ROLES = {"user", "assistant", "system"}
# this checkout's gptjax, not whichever one the environment has installed
sys.path.insert(0, ROOT)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def finished(workdir: str, steps: int, files: tuple[str, ...] = ()) -> bool:
    """Whether a run saved its step-`steps` checkpoint (and wrote `files` after it)."""
    ckpt = os.path.join(workdir, "checkpoints", str(steps), "commit_success.txt")
    return os.path.exists(ckpt) and all(os.path.exists(os.path.join(workdir, f)) for f in files)


def train(workdir: str, steps: int, *args: str, files: tuple[str, ...] = ()) -> float:
    """`python -m gptjax.train ARGS --workdir workdir` unless it already finished; seconds."""
    if finished(workdir, steps, files):
        log(f"{workdir}: done already")
        return 0.0
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "gptjax.train", *args, f"--config.train.steps={steps}",
           "--config.train.progress=False", "--workdir", workdir]
    log(" ".join(cmd))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "stdout.log"), "a") as out:
        r = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        with open(os.path.join(workdir, "stdout.log")) as f:
            sys.exit(f"failed: {' '.join(cmd)}\n{f.read()[-3000:]}")
    return time.perf_counter() - t0


def train_chain(chain: str, data_root: str) -> None:
    """prepare -> pretrain -> SFT -> reward models under `chain` (benchmarks/reward_accuracy.py)."""
    log(f"building the chain under {chain} (benchmarks/reward_accuracy.py)")
    r = subprocess.run([sys.executable, "benchmarks/reward_accuracy.py", "--root", chain,
                        "--data_root", data_root], cwd=ROOT)
    if r.returncode != 0:
        sys.exit("failed: benchmarks/reward_accuracy.py")


def schedule(steps: int, lr: float, min_lr: float | None = None) -> tuple[str, ...]:
    return (f"--config.optim.decay_steps={steps}", f"--config.optim.lr={lr}",
            f"--config.optim.min_lr={lr / 10 if min_lr is None else min_lr}",
            f"--config.train.checkpoint_every={steps}", f"--config.train.eval_every={steps}")


def jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(x) for x in f if x.strip()]


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


_TURN = re.compile(r"<\|(user|assistant|system)\|>(.*?)<\|end\|>", re.S)


def parse_prompt(text: str) -> list[dict[str, str]]:
    """The turns of a rendered chat prompt ("<|user|>...<|end|>...<|assistant|>"), as PPO's
    samples.jsonl stores it."""
    turns = [{"role": r, "content": c.strip()} for r, c in _TURN.findall(text)]
    if not turns:
        raise ValueError(f"no chat turns in {text[:80]!r}")
    return turns


def eval_samples(workdir: str, mode: str = "sampled") -> dict[int, list[dict]]:
    """PPO's eval answers by step: {step: [{'prompt': turns, 'answer', 'score', 'truncated'}]}."""
    out: dict[int, list[dict]] = {}
    for r in jsonl(os.path.join(workdir, "samples.jsonl")):
        if r["mode"] == mode:
            out.setdefault(r["step"], []).append({**r, "prompt": parse_prompt(r["prompt"])})
    return out


def snapshot(workdir: str, step: int, dest: str) -> str:
    """A workdir holding only `workdir`'s step-`step` checkpoint (what the eval stage loads as
    the latest), beside its config.json and tokenizer.json."""
    if not os.path.exists(os.path.join(dest, "checkpoints", str(step))):
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(os.path.join(dest, "checkpoints"))
        for f in ("config.json", "tokenizer.json"):
            shutil.copy(os.path.join(workdir, f), dest)
        shutil.copytree(os.path.join(workdir, "checkpoints", str(step)),
                        os.path.join(dest, "checkpoints", str(step)))
    return dest


def load_config(name: str) -> Any:
    """configs/<name>.py's get_config()."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def win_rate(a: str, b: str, out: str, judge: Any = None, judge_workdir: str = "",
             overrides: dict[str, Any] | None = None) -> dict:
    """The eval stage's win rate of workdir a over b (eval.json's win_rate), judged by `judge`
    (an object) or the reward workdir `judge_workdir`; cached in out/eval.json."""
    path = os.path.join(out, "eval.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    from gptjax import config as config_lib
    from gptjax.loops import eval as eval_loop
    c = load_config("eval_winrate")
    c.data.root = DATA
    c.eval.reward_accuracy.enabled = False
    values = {"eval.a": a, "eval.b": b, "eval.judge": judge_workdir, **(overrides or {})}
    config_lib.overrides_from_dict(c, values)
    t0 = time.perf_counter()
    log(f"win rate {a} over {b} -> {out}")
    result = eval_loop.run(c, out, judge=judge).report
    log(f"win rate done in {time.perf_counter() - t0:.0f} s")
    return result


BOUNDS = {"distinct_2": ("min", 0.10), "digit_symbol_share": ("max", 0.10),
          "base_perplexity": ("max", 0.25)}


def within_bounds(a: dict, b: dict) -> dict[str, dict]:
    """Issue 12's bounds of A's degeneration measures against B's (the SFT model):
    distinct-2 at most 10% below, the digit + symbol share at most 10% above, the base-model
    perplexity at most 25% above. {measure: {a, b, change (relative), ok}}."""
    out = {}
    for k, (side, tol) in BOUNDS.items():
        if a.get(k) is None or b.get(k) is None:
            continue
        change = a[k] / b[k] - 1.0 if b[k] else float("inf")
        ok = change >= -tol if side == "min" else change <= tol
        out[k] = {"a": a[k], "b": b[k], "change": change, "ok": bool(ok)}
    return out
