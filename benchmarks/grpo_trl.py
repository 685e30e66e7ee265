"""A GRPO iteration of gptjax next to TRL's GRPOTrainer, same shapes, in one run on this CPU.

    python benchmarks/grpo_trl.py [--shapes small,long,gpt2_124m] [--rounds 3] [--iters 4]
        [--warmup 2] [--threads N] [--trl_python .venv-trl/bin/python] [--out grpo_trl.json]

Both sides: a GPT-2 of the shape (random init; TRL: `transformers.GPT2LMHeadModel`), B prompts
of P random tokens, K answers each of exactly N tokens (no end token; sampling at temperature 1,
no top-k / top-p), the reward a Python check of the decoded answers, the group advantages, the
reference model's log-probs (beta = 0.04) and one on-policy AdamW step per iteration (TRL:
num_iterations = 1, steps_per_generation = 1; gptjax: grpo.epochs = num_minibatches = 1, the
stage `grpo` run by the one trainer, `trainer.fit`). tokens/s = B * K * (P + N) / the median
iteration's seconds (compilation and TRL's first steps left out: --warmup iterations each).
A round's time per iteration is the mean over its timed iterations (gptjax reads metrics one
step late, so only the sum of its logged windows is exact); the table gives the median over
rounds.

Every side runs in its own process pinned to the same --threads cores (gptjax's with this
Python, TRL's with the peer virtual environment's: make it with
`python3.11 -m venv .venv-trl && .venv-trl/bin/pip install torch==2.13.0 trl==1.16.0
transformers==5.24.0`). The sides alternate, --rounds times, and the ratio is the median of the
per-round ratios (the machine's speed drifts from minute to minute when it is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORES = sorted(os.sched_getaffinity(0))

SHAPES = {
    # a small model: the per-iteration overheads (Python, dispatch, decoding) matter most
    "small": dict(model=dict(vocab_size=256, block_size=128, n_layer=4, n_head=4, n_embd=128),
                  prompts=8, samples=8, prompt_len=32, new_tokens=32),
    # the same model, answers four times as long as the prompts (as reasoning answers are)
    "long": dict(model=dict(vocab_size=256, block_size=256, n_layer=4, n_head=4, n_embd=128),
                 prompts=8, samples=8, prompt_len=32, new_tokens=128),
    # GPT-2 124M: the matmuls matter most
    "gpt2_124m": dict(model=dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12,
                                 n_embd=768),
                      prompts=2, samples=4, prompt_len=32, new_tokens=32),
}


def gptjax_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Stage grpo on a synthetic task of the spec's shape, run by trainer.fit."""
    sys.path.insert(0, ROOT)  # this checkout's gptjax
    import jax
    import jax.numpy as jnp
    import flax.linen as nn
    import numpy as np

    from gptjax import config as config_lib
    from gptjax.data.tokenizer import CharTokenizer
    from gptjax.loops import grpo as grpo_loop, trainer
    from gptjax.model import GPT
    from gptjax.rl import rollout, tasks

    m, b, k = spec["model"], spec["prompts"], spec["samples"]
    p, n = spec["prompt_len"], spec["new_tokens"]
    c = config_lib.base_config()
    c.stage = "grpo"
    c.model.update(vocab_size=m["vocab_size"], block_size=m["block_size"], n_layer=m["n_layer"],
                   n_head=m["n_head"], n_embd=m["n_embd"], bias=True, dropout=0.0)
    c.grpo.update(batch_prompts=b, samples_per_prompt=k, max_new_tokens=n, max_prompt_tokens=p,
                  beta=spec["beta"], epochs=1, num_minibatches=1, eval_prompts=0)
    c.train.update(steps=spec["warmup"] + spec["iters"], log_every=1, eval_every=10 ** 9,
                   checkpoint_every=10 ** 9, progress=False)
    c.mesh.update(data=1, fsdp=1, tensor=1)
    c.optim.update(lr=1e-5, warmup_steps=0)
    cfg = config_lib.gpt_config(c)
    # V - 5 characters (digits first) + the 5 special tokens: token ids decode to text
    chars = "0123456789" + "".join(chr(0x100 + i) for i in range(m["vocab_size"] - 15))
    tok = CharTokenizer.train(chars)
    assert tok.vocab_size == m["vocab_size"]
    rng = np.random.default_rng(0)
    ids = rng.integers(0, m["vocab_size"] - 5, (256, p)).tolist()
    params = jax.device_get(nn.unbox(GPT(cfg).init(jax.random.key(0),
                                                   jnp.zeros((1, 1), jnp.int32))["params"]))
    su = grpo_loop.Setup(
        cfg, tok, params, {"exact_match": 1.0}, None, None,
        tasks.Task("bench", "####", [], []), tasks.Encoded(ids, ["1"] * len(ids), {}),
        tasks.Encoded([], [], {}),
        rollout.RolloutConfig(samples_per_prompt=k, max_new_tokens=n, eos_id=None),
        grpo_loop.hparams(c))
    with tempfile.TemporaryDirectory() as wd:
        trainer.fit(c, wd, grpo_loop.stage(c, su, wd))
        with open(os.path.join(wd, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
    tokens = b * k * (p + n)
    # Step 1 holds compilation. Each logged step's tokens/s is over the time since the previous
    # one was logged (read one step late), so the windows after the warmup add up to the wall
    # time of the timed iterations: their mean is exact, a single one is not.
    times = [tokens / r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r]
    timed = times[spec["warmup"] - 1:]
    return {"iteration_s": [sum(timed) / len(timed)] * len(timed), "jax": jax.__version__,
            "phases": {k2: statistics.median(r[k2] for r in rows[spec["warmup"]:])
                       for k2 in rows[-1] if k2.startswith("time_")}}


def run_worker(cmd: list[str], threads: int) -> dict[str, Any]:
    cpus = set(CORES[:threads])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env, preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        sys.exit(f"worker {cmd[1]} exited with code {proc.returncode}")
    return json.loads(lines[-1][len("RESULT "):])


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="small")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--threads", type=int, default=len(CORES))
    ap.add_argument("--trl_python", default=os.path.join(ROOT, ".venv-trl", "bin", "python"))
    ap.add_argument("--out", default="")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(gptjax_worker(json.loads(args.worker))), flush=True)
        return 0
    if not os.path.exists(args.trl_python):
        sys.exit(f"no TRL environment at {args.trl_python}: make it (see this file's docstring) "
                 "or pass --trl_python")
    results = {}
    for shape in args.shapes.split(","):
        spec = dict(SHAPES[shape], iters=args.iters, warmup=args.warmup, beta=args.beta,
                    threads=args.threads)
        rounds = []
        for r in range(args.rounds):
            sides = {}
            for side, cmd in (("gptjax", [sys.executable, __file__, "--worker", json.dumps(spec)]),
                              ("trl", [args.trl_python,
                                       os.path.join(ROOT, "benchmarks", "grpo_trl_peer.py"),
                                       json.dumps(spec)])):
                print(f"[{shape}] round {r + 1}/{args.rounds}: {side}", file=sys.stderr,
                      flush=True)
                sides[side] = run_worker(cmd, args.threads)
            rounds.append(sides)
        results[shape] = {"spec": spec, "rounds": rounds}
    rows = []
    for shape, res in results.items():
        s = res["spec"]
        tokens = s["prompts"] * s["samples"] * (s["prompt_len"] + s["new_tokens"])
        per = {side: [mean(rd[side]["iteration_s"]) for rd in res["rounds"]]
               for side in ("gptjax", "trl")}
        g, t = median(per["gptjax"]), median(per["trl"])
        ratio = median([b / a for a, b in zip(per["gptjax"], per["trl"])])
        res.update(per_round_s=per, ratio=ratio)
        rows.append(f"| {shape} | {s['prompts']} x {s['samples']} | {s['prompt_len']} + "
                    f"{s['new_tokens']} | {g:.3f} | {t:.3f} | {tokens / g:,.0f} | "
                    f"{tokens / t:,.0f} | **{ratio:.1f}x** |")
    print("| shape | prompts x answers | P + N tokens | gptjax s/iter | TRL s/iter | gptjax "
          "tokens/s | TRL tokens/s | gptjax / TRL (median of rounds) |\n"
          "|---|---|---|---:|---:|---:|---:|---:|\n" + "\n".join(rows))
    for shape, res in results.items():
        per = res["per_round_s"]
        print(f"{shape}: per-round s/iter gptjax {[round(x, 3) for x in per['gptjax']]}, TRL "
              f"{[round(x, 2) for x in per['trl']]}; gptjax phases (last round, median s): "
              f"{res['rounds'][-1]['gptjax']['phases']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
