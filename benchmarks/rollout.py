"""PPO rollout and iteration speed of gptjax, next to TRL's PPO and RLOO trainers, in one run.

    python benchmarks/rollout.py [--shapes chain,gpt2_124m] [--peers ppo,rloo] [--rounds 3]
        [--iters 3] [--threads N] [--out rollout.json]

Tables: (1) K answers per prompt sampled by one jitted program (`rollout.sample`, vmapped over
K) vs a Python loop calling `sampling.generate` once per answer; (2) gptjax's PPO iteration and
its split into rollout / scoring / update; (3) gptjax vs TRL's PPOTrainer (TRL 1.12.0) and
RLOOTrainer (TRL 1.16.0) at the same shapes: episodes/s, tokens/s, the split and the ratios.

Every side runs in its own process, pinned to the same --threads cores (the gptjax workers with
this repository's Python, the TRL ones with the peer virtual environments' Python; see
benchmarks/README.md for making them). The sides alternate: each of --rounds rounds runs gptjax,
then TRL PPO, then TRL RLOO, each timing --iters iterations after --warmup; the tables give
medians over all timed iterations, the ratios the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "benchmarks")
CORES = sorted(os.sched_getaffinity(0))

# The model shape and the run shape of each benchmark shape. `chain`: the README's Shakespeare
# chain (configs/shakespeare_char.py's model; its PPO run: 16 prompts x 4 answers of 24 tokens
# after prompts of 64 - 24 = 40 slots, 4 epochs). `gpt2_124m`: GPT-2 124M, with a batch, prompt
# and answer length small enough for a few iterations per side on a 2-core CPU.
SHAPES = {
    "chain": dict(model=dict(vocab_size=70, block_size=64, n_layer=4, n_head=4, n_embd=128,
                             bias=False),
                  prompts=16, samples=4, prompt_len=40, new_tokens=24, epochs=4, minibatches=1,
                  loop_prompts=16),
    "gpt2_124m": dict(model=dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12,
                                 n_embd=768, bias=True),
                      prompts=1, samples=4, prompt_len=32, new_tokens=32, epochs=4,
                      minibatches=1, loop_prompts=1),
}
PEERS = {"ppo": ("TRL PPOTrainer", ".venv-trl-ppo"), "rloo": ("TRL RLOOTrainer", ".venv-trl")}


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def run_worker(python: str, script: str, mode: str, spec: dict[str, Any],
               threads: int) -> dict[str, Any]:
    """One worker process pinned to the first `threads` cores; its RESULT line as a dict."""
    cpus = set(CORES[:threads])
    cmd = [python, os.path.join(HERE, script), mode, json.dumps(spec)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env, preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        sys.exit(f"worker {script} {mode} exited with code {proc.returncode}")
    return json.loads(lines[-1][len("RESULT "):])


def peer_python(args: argparse.Namespace, peer: str) -> str | None:
    path = getattr(args, f"{peer}_python") or os.path.join(ROOT, PEERS[peer][1], "bin", "python")
    return path if os.path.exists(path) else None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"loop": {}, "rounds": {}}
    spec_of = {s: dict(SHAPES[s], iters=args.iters, warmup=args.warmup,
                       torch_threads=args.threads) for s in args.shapes}
    if not args.skip_loop:
        for shape in args.shapes:
            spec = dict(spec_of[shape], samples=args.loop_samples,
                        prompts=SHAPES[shape]["loop_prompts"], repeats=args.loop_repeats)
            print(f"[{shape}] one jit vs Python loop, {spec['prompts']} prompts x "
                  f"{spec['samples']} answers", file=sys.stderr, flush=True)
            out["loop"][shape] = dict(run_worker(sys.executable, "rollout_gptjax.py", "loop",
                                                 spec, args.threads), spec=spec)
    for shape in args.shapes:
        rounds = out["rounds"][shape] = []
        for r in range(args.rounds):
            sides = {}
            print(f"[{shape}] round {r + 1}/{args.rounds}: gptjax", file=sys.stderr, flush=True)
            sides["gptjax"] = run_worker(sys.executable, "rollout_gptjax.py", "iteration",
                                         spec_of[shape], args.threads)
            for peer in args.peers:
                python = peer_python(args, peer)
                if python is None:
                    continue
                print(f"[{shape}] round {r + 1}/{args.rounds}: {PEERS[peer][0]}",
                      file=sys.stderr, flush=True)
                sides[peer] = run_worker(python, "rollout_trl.py", peer, spec_of[shape],
                                         args.threads)
            rounds.append(sides)
    out["specs"] = spec_of
    return out


def fmt(x: float, digits: int = 2) -> str:
    return "–" if x != x else f"{x:,.{digits}f}"


def loop_table(res: dict[str, Any], sfx: str) -> str:
    rows = []
    for shape, r in res.items():
        s = r["spec"]
        one, loop = median(r["one_jit" + sfx]), median(r["loop" + sfx])
        n = s["prompts"] * s["samples"]
        rows.append(f"| {shape} | {s['prompts']} x {s['samples']} | {s['new_tokens']} | "
                    f"{fmt(one, 3)} | {fmt(loop, 3)} | {fmt(n / one, 1)} | {fmt(n / loop, 1)} | "
                    f"**{fmt(loop / one, 1)}x** | {r['same_answers']} of {n} |")
    return ("| shape | prompts x answers | new tokens | one jit s | Python loop s | answers/s one "
            "jit | answers/s loop | one jit / loop | identical answers |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows))


def side_stats(rounds: list[dict[str, Any]], side: str, sfx: str) -> dict[str, Any] | None:
    """Medians over every timed iteration of one side, on the clock `sfx` ('_s' wall, '_cpu_s'
    CPU), and its per-round medians of both clocks."""
    rs = [r[side] for r in rounds if side in r]
    if not rs:
        return None
    key = "fused" if side == "gptjax" else "iteration"
    every = lambda k: [x for r in rs for x in r[k]]  # noqa: E731
    st = {"iteration": median(every(key + sfx))}
    for k in ("rollout", "scoring", "update"):
        st[k] = median(every(k + sfx))
    st["split_sum"] = st["rollout"] + st["scoring"] + st["update"]
    st["per_round"] = {c: [median(r[key + c]) for r in rs] for c in ("_s", "_cpu_s")}
    st["versions"] = {k: rs[0][k] for k in ("jax", "trl", "torch", "transformers") if k in rs[0]}
    if side == "gptjax":
        st["compile"] = median([r["compile_s"]["fused"] for r in rs])
    return st


def split_table(results: dict[str, Any], sfx: str) -> str:
    rows = []
    for shape, rounds in results.items():
        s, g = SHAPES[shape], side_stats(rounds, "gptjax", sfx)
        tot = g["split_sum"]
        rows.append(
            f"| {shape} | {s['prompts']} x {s['samples']}, P {s['prompt_len']}, N "
            f"{s['new_tokens']}, {s['epochs']} x {s['minibatches']} | {fmt(g['iteration'], 3)} | "
            + " | ".join(f"{fmt(g[k], 3)} ({g[k] / tot:.0%})"
                         for k in ("rollout", "scoring", "update"))
            + f" | {fmt(g['compile'], 1)} |")
    return ("| shape | prompts x answers, prompt / new tokens, epochs x minibatches | iteration s "
            "(one jit) | rollout s | scoring s | update s | compile s (wall) |\n"
            "|---|---|---:|---:|---:|---:|---:|\n" + "\n".join(rows))


def peer_table(shape: str, rounds: list[dict[str, Any]], peers: list[str], sfx: str
               ) -> tuple[str, dict]:
    s = SHAPES[shape]
    rows_per_it = s["prompts"] * s["samples"]
    tokens_per_it = rows_per_it * (s["prompt_len"] + s["new_tokens"])
    names = {"gptjax": "gptjax (one jit)", **{p: PEERS[p][0] for p in peers}}
    g = side_stats(rounds, "gptjax", sfx)
    lines, ratios = [], {}
    for side in ["gptjax", *peers]:
        st = side_stats(rounds, side, sfx)
        if st is None:
            continue
        cells = ["–", "–"]
        if side != "gptjax":
            ratios[side] = {}
            for j, c in enumerate(("_s", "_cpu_s")):
                per = [a / b for a, b in zip(st["per_round"][c], g["per_round"][c])]
                ratios[side][c] = {"median": median(per), "per_round": per}
                cells[j] = f"**{median(per):.2f}x** ({', '.join(f'{x:.2f}' for x in per)})"
        v = st["versions"]
        lines.append(
            f"| {names[side]} {v.get('trl', v.get('jax'))} | {fmt(st['iteration'], 3)} | "
            f"{fmt(rows_per_it / st['iteration'], 1)} | {fmt(tokens_per_it / st['iteration'], 0)} "
            f"| {fmt(st['rollout'], 3)} | {fmt(st['scoring'], 3)} | {fmt(st['update'], 3)} | "
            f"{cells[0]} | {cells[1]} |")
    head = ("| side | iteration s | episodes/s | tokens/s | rollout s | scoring s | update s | "
            "gptjax speed-up, wall (rounds) | gptjax speed-up, CPU (rounds) |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    return head + "\n".join(lines), {"ratios": ratios, "gptjax": g}


def report(args: argparse.Namespace, res: dict[str, Any]) -> dict[str, Any]:
    sfx = "_s" if args.clock == "wall" else "_cpu_s"
    print(f"# PPO rollouts and iterations: gptjax vs TRL ({args.threads} of {len(CORES)} cores "
          f"per worker, load average {os.getloadavg()[0]:.1f} at the end; times in {args.clock} "
          "seconds)\n")
    if res["loop"]:
        print(f"## 1. {args.loop_samples} answers per prompt in one jit (`rollout.sample`) vs a "
              "Python loop of `sampling.generate` calls (one per answer, batch 1)\n\n"
              + loop_table(res["loop"], sfx) + "\n\n"
              "- same model, prompts, settings (temperature 1, no top-k / top-p, no end token) "
              "and per-answer keys; the loop's calls are dispatched without waiting (one wait at "
              f"the end). Medians of {args.loop_repeats} alternating runs after a warm-up. "
              "'identical answers': the loop's answer equals the one-jit answer of the same key "
              "token for token (batch-1 and batched forwards round differently).\n")
    print("## 2. gptjax PPO iteration, time split\n\n" + split_table(res["rounds"], sfx)
          + "\n\n- iteration: the whole iteration as one jitted program, as the `ppo` stage runs "
          "it; rollout / scoring / update: the same work as three jitted programs, each waited "
          "for, alternating with it (rollout = `rollout.sample`; scoring = `rollout.evaluate` "
          "(policy, reference, critic, reward model) + `to_transitions` (KL-shaped rewards, GAE, "
          "whitening); update = `ppo.ppo_update` (epochs x minibatches AdamW steps on policy and "
          "critic) + the KL controller). Percentages of the three's sum.\n")
    summary = {}
    for i, (shape, rounds) in enumerate(res["rounds"].items()):
        s = SHAPES[shape]
        table, summary[shape] = peer_table(shape, rounds, args.peers, sfx)
        print(f"## 3{'abcd'[i]}. vs TRL, {shape}: {s['prompts']} prompts x {s['samples']} "
              f"answers, prompt {s['prompt_len']} + {s['new_tokens']} new tokens, {s['epochs']} "
              f"epochs x {s['minibatches']} minibatches\n\n" + table + "\n")
    missing = [p for p in args.peers if peer_python(args, p) is None]
    print("- episodes = answers (prompt + answer pairs); tokens/s = episodes x (prompt + new "
          "tokens) / iteration s. Speed-up = peer iteration time / gptjax iteration time, the "
          "median of the rounds' ratios (each round's in brackets), on wall and on CPU time "
          "(the process's CPU seconds, which a loaded machine inflates less). TRL's split: "
          "rollout = its generation, scoring = its no-grad forwards (reference, critic, reward "
          "model; RLOO: with the text round trip to the reward model's tokenizer), update = the "
          "rest of the iteration (PPO: GAE and whitening in Python loops, the optimizer steps).")
    if missing:
        print(f"- not run (no virtual environment): {', '.join(missing)}; see "
              "benchmarks/README.md.")
    print("\nNumbers taken while other processes use the cores are unreliable.")
    return {"machine": {"cores": len(CORES), "threads": args.threads,
                        "load_avg": os.getloadavg()},
            "args": vars(args), "results": res, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", type=lambda s: s.split(","), default=list(SHAPES))
    ap.add_argument("--peers", type=lambda s: [p for p in s.split(",") if p],
                    default=list(PEERS))
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the sides")
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per side and round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first iterations")
    ap.add_argument("--threads", type=int, default=len(CORES),
                    help="cores every worker is pinned to (torch threads too); 1 is steadier "
                         "when other processes share the cores")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="the clock of the tables' times (cpu: the workers' CPU seconds, steadier "
                         "on a loaded machine; the speed-ups are given on both)")
    ap.add_argument("--loop-samples", type=int, default=16, help="answers per prompt, table 1")
    ap.add_argument("--loop-repeats", type=int, default=3)
    ap.add_argument("--skip-loop", action="store_true", help="leave out table 1")
    ap.add_argument("--ppo-python", help="the TRL 1.12 venv's python (default .venv-trl-ppo)")
    ap.add_argument("--rloo-python", help="the TRL 1.16 venv's python (default .venv-trl)")
    ap.add_argument("--out", help="write every number as JSON here")
    args = ap.parse_args(argv)
    for s in args.shapes:
        if s not in SHAPES:
            ap.error(f"unknown shape {s!r}; choose from {', '.join(SHAPES)}")
    for p in args.peers:
        if p not in PEERS:
            ap.error(f"unknown peer {p!r}; choose from {', '.join(PEERS)}")
    if not 1 <= args.threads <= len(CORES):
        ap.error(f"--threads must lie in [1, {len(CORES)}]")
    out = report(args, measure(args))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
