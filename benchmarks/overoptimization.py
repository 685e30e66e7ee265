"""Reward-model over-optimisation against a gold judge (Gao, Schulman & Hilton 2022), end to end.

Issue 12, section 2. From a chain built by `benchmarks/reward_accuracy.py` (--chain: its
`pretrain` and `sft` workdirs; built there first if missing):

1. gold: the reward stage from the SFT model on all the shipped human preferences (hh-rlhf
   and FineGrainedRLHF, 5% held out for its accuracy), overruled by the degeneration rules of
   `gptjax.evals.gold` (the base-model perplexity rule reads the pretrained model). No training
   stage sees it: the proxy sees only its rankings, PPO only the proxy;
2. rankings: the SFT model answers each of --rank_prompts hh-rlhf training prompts K = 4
   times (PPO's sampling: temperature 1, 48 new tokens, prompts of <= 96 tokens); the gold
   ranks the K answers; out/rankings.jsonl holds {"prompt", "answers", "ranks", "scores"};
3. proxy: the reward stage from the SFT model on those rankings (InstructGPT's C(K, 2) pairs
   per prompt, the stage's own loss), 10% of the prompts held out;
4. PPO from the SFT model against the proxy on hh-rlhf training prompts, twice: with a fixed
   KL penalty (--beta, on scores in units of the SFT answers' proxy-score std:
   ppo.normalize_scores) and without one (ppo.init_kl_coef=0, ppo.target_kl=0); every
   --eval_every iterations each run answers the first --eval_prompts held-out prompts
   (samples.jsonl), every checkpoint kept;
5. the curve: at every eval point, the mean gold and proxy score of the sampled answers, each
   minus its mean over the step-0 eval answers (the SFT model's own: 0 = the SFT model),
   against sqrt(KL to SFT), the mean per-answer sum_t log pi/pi_SFT of the next training
   rollout (the policy the eval used); out/overoptimization.csv and .png;
6. the win rate over SFT under the gold at the KL run's best eval point (and the no-KL run's
   last) on the held-out prompts not used to pick it, by the eval stage
   (`gptjax.loops.eval.run(config, workdir, judge=gold)`), with the degeneration measures.

    python benchmarks/overoptimization.py [--chain runs/chain] [--out runs/over] \
        [--iterations 60] [--eval_every 5] [--beta 0.1] [--ppo_overrides "--config.ppo.a=v ..."]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rlhf_runs as rr  # noqa: E402

NEW_TOKENS, PROMPT_TOKENS, K = 48, 96, 4


def gold_judge(args, gold_wd: str, pretrain: str):
    from gptjax.evals import gold
    rules = gold.Rules(max_base_perplexity=args.max_base_perplexity)
    return gold.load_gold_judge(gold_wd, pretrain, rules, fail_sd=args.fail_sd)


def hh_split(data_root: str) -> tuple[list, list]:
    """(training, held-out) hh-rlhf prompts, split as PPO splits them (gptjax.data.prompts)."""
    from gptjax.data import prompts, sources
    found, _ = prompts.read_prompts("hh-rlhf", data_root)
    return sources.split(found, rr.load_config("ppo").data.val_fraction)


def unseen_heldout(args, sft: str) -> list[dict]:
    """The held-out hh-rlhf prompts PPO's eval did not answer: PPO keeps the first
    --eval_prompts distinct held-out prompts that fit (gptjax.data.prompts.load_prompts)."""
    from gptjax import workdir as workdir_lib
    from gptjax.data.prompts import fit_prompt
    from gptjax.errors import TokenizerCoverageError
    tok = workdir_lib.read_tokenizer(sft)
    _, held = hh_split(args.data_root)
    used: set[tuple] = set()
    rest = []
    for p in held:
        try:
            x = fit_prompt(p, tok, PROMPT_TOKENS)
        except TokenizerCoverageError:
            x = None
        if x is not None and len(used) < args.eval_prompts and tuple(x) not in used:
            used.add(tuple(x))
        elif x is None or tuple(x) not in used:
            rest.append({"prompt": p})
    return rest[:args.winrate_prompts] if args.winrate_prompts else rest


def make_rankings(args, sft: str, judge, path: str) -> dict:
    """Step 2: K SFT answers per training prompt, ranked by the gold, to `path`."""
    from gptjax.evals import answers as ans, rankings
    train, _ = hh_split(args.data_root)
    seen, prompts = set(), []
    for p in train:
        key = json.dumps(p, sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append(p)
    prompts = prompts[:args.rank_prompts]
    model = ans.load_model(sft, "--chain sft")
    s = ans.Sampling(NEW_TOKENS, 1.0, 0, 1.0, K, args.seed, 64)
    records, counts = rankings.rank_answers(model, judge, prompts, s, PROMPT_TOKENS)
    rankings.write_jsonl(path, records)
    counts["gold_failed"] = dict(judge.failed)
    counts["answers_scored"] = judge.scored
    return counts


def ppo(args, name: str, sft: str, proxy: str, beta: float) -> str:
    wd = os.path.join(args.out, f"ppo_{name}")
    n_evals = args.iterations // args.eval_every + 1
    rr.train(wd, args.iterations, "--config", "configs/ppo.py", f"--config.init_from={sft}",
             f"--config.ppo.reward_from={proxy}", f"--config.data.root={args.data_root}",
             "--config.data.mixture=hh-rlhf", f"--config.ppo.init_kl_coef={beta}",
             "--config.ppo.target_kl=0", "--config.ppo.batch_prompts=8",
             f"--config.ppo.samples_per_prompt={K}", f"--config.ppo.max_new_tokens={NEW_TOKENS}",
             f"--config.ppo.max_prompt_tokens={PROMPT_TOKENS}", "--config.ppo.epochs=2",
             "--config.ppo.num_minibatches=2", f"--config.ppo.eval_prompts={args.eval_prompts}",
             "--config.ppo.offset_prompts=32", "--config.train.eval_batches=2",
             f"--config.train.eval_every={args.eval_every}",
             f"--config.train.checkpoint_every={args.eval_every}",
             f"--config.train.keep_checkpoints={n_evals}", f"--config.optim.lr={args.lr}",
             f"--config.optim.min_lr={args.lr}", "--config.optim.warmup_steps=8",
             "--config.ppo.normalize_scores=True",
             f"--config.seed={args.seed}", *args.ppo_overrides.split())
    return wd


def curve(run: str, wd: str, gold, proxy) -> list[dict]:
    """Step 5 for one run: a row per eval point."""
    import numpy as np
    metrics = {m["step"]: m for m in rr.jsonl(os.path.join(wd, "metrics.jsonl"))
               if "kl" in m}
    last = max(metrics)
    rows = []
    for step, samples in sorted(rr.eval_samples(wd).items()):
        prompts = [x["prompt"] for x in samples]
        answers = [x["answer"] for x in samples]
        g, fails = gold.verdicts(prompts, answers)
        p = proxy.score(prompts, answers)
        # the eval at step s used the policy after s updates, which sampled iteration s + 1
        kl = 0.0 if step == 0 else metrics[min(step + 1, last)]["kl"]
        rows.append({"run": run, "step": step, "kl": kl, "sqrt_kl": math.sqrt(max(kl, 0.0)),
                     "gold": float(np.mean(g)), "proxy": float(np.mean(p)),
                     "gold_failed": float(np.mean([bool(f) for f in fails])),
                     "ppo_score": float(np.mean([x["score"] for x in samples])),
                     "truncated": float(np.mean([x["truncated"] for x in samples])),
                     "mean_chars": float(np.mean([len(a) for a in answers])),
                     "train_rm_score": metrics[step]["rm_score"] if step in metrics else 0.0})
    # relative to the SFT model: the step-0 eval answers are its own, on the same prompts (the
    # judges' offsets were measured on other prompts with other sampling settings)
    for r in rows:
        r["gold_abs"], r["proxy_abs"] = r["gold"], r["proxy"]
        r["gold"] -= rows[0]["gold_abs"]
        r["proxy"] -= rows[0]["proxy_abs"]
    return rows


def plot(rows: list[dict], per_iteration: dict[str, list[dict]], path: str, beta: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    titles = {"kl": f"PPO with a KL penalty (beta = {beta:g})", "nokl": "PPO without a KL penalty"}
    for ax, run in zip(axes, ("kl", "nokl")):
        r = [x for x in rows if x["run"] == run]
        if not r:
            continue
        x = [p["sqrt_kl"] for p in r]
        ax.plot(x, [p["gold"] for p in r], "o-", color="tab:orange", label="gold (eval answers)")
        ax.plot(x, [p["proxy"] for p in r], "s--", color="tab:blue",
                label="proxy (eval answers)")
        it = per_iteration.get(run, [])
        ax.plot([math.sqrt(max(m["kl"], 0.0)) for m in it], [m["rm_score"] for m in it], "-",
                color="tab:blue", alpha=0.25, lw=1, label="proxy (training rollouts)")
        ax.axhline(0.0, color="gray", lw=0.6)
        ax.set_title(titles[run])
        ax.set_xlabel("sqrt(KL to SFT), nats^0.5 per answer")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score minus the SFT answers' mean")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chain", default="runs/chain")
    ap.add_argument("--out", default="runs/over")
    ap.add_argument("--data_root", default=rr.DATA)
    ap.add_argument("--gold_steps", type=int, default=300)
    ap.add_argument("--gold_from", default="",
                    help="a reward workdir trained on human preferences to use as the gold's "
                         "reward model instead of training one (e.g. the chain's reward_hh-rlhf)")
    ap.add_argument("--proxy_steps", type=int, default=200)
    ap.add_argument("--rank_prompts", type=int, default=1024)
    ap.add_argument("--max_base_perplexity", type=float, default=2000.0)
    ap.add_argument("--fail_sd", type=float, default=3.0)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--eval_every", type=int, default=5)
    ap.add_argument("--eval_prompts", type=int, default=64)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=2, help="answers per prompt in win rates")
    ap.add_argument("--winrate_prompts", type=int, default=0,
                    help="the first n unseen held-out prompts for the win rates (0 = all)")
    ap.add_argument("--ppo_overrides", default="",
                    help="more configs/ppo.py overrides for both PPO runs, space-separated, e.g. "
                         "'--config.ppo.truncated=end --config.ppo.ptx_coef=1.0'")
    ap.add_argument("--until", default="", help="stop after: gold, rankings, proxy, ppo, curve")
    args = ap.parse_args()
    args.chain, args.out = os.path.abspath(args.chain), os.path.abspath(args.out)
    chain, out = args.chain, args.out
    sft, pretrain = os.path.join(chain, "sft"), os.path.join(chain, "pretrain")
    if not os.path.isdir(os.path.join(sft, "checkpoints")):
        rr.train_chain(chain, args.data_root)
    os.makedirs(out, exist_ok=True)
    seconds = {}
    gold_wd = args.gold_from or os.path.join(out, "gold")
    seconds["gold"] = 0.0 if args.gold_from else rr.train(
        gold_wd, args.gold_steps, "--config", "configs/reward_preferences.py",
        f"--config.init_from={sft}", f"--config.data.root={args.data_root}",
        "--config.data.mixture=hh-rlhf,finegrained-rlhf", "--config.data.val_fraction=0.05",
        "--config.train.batch_size=8", "--config.train.eval_batches=4",
        "--config.reward.normalize_prompts=64", *rr.schedule(args.gold_steps, 1e-4),
        files=("reward_normalization.json",))
    if args.until == "gold":
        return
    gold = gold_judge(args, gold_wd, pretrain)
    ranked = os.path.join(out, "rankings.jsonl")
    if not os.path.exists(ranked):
        counts = make_rankings(args, sft, gold, ranked)
        with open(os.path.join(out, "rankings_stats.json"), "w") as f:
            json.dump(counts, f, indent=2)
        rr.log(f"rankings: {counts}")
    if args.until == "rankings":
        return
    proxy_wd = os.path.join(out, "proxy")
    seconds["proxy"] = rr.train(
        proxy_wd, args.proxy_steps, "--config", "configs/reward_preferences.py",
        f"--config.init_from={sft}", f"--config.data.mixture={ranked}",
        "--config.data.val_fraction=0.1", "--config.train.batch_size=8",
        "--config.train.eval_batches=4", "--config.reward.normalize_prompts=64",
        *rr.schedule(args.proxy_steps, 1e-4), files=("reward_normalization.json",))
    if args.until == "proxy":
        return
    runs = {"kl": ppo(args, "kl", sft, proxy_wd, args.beta),
            "nokl": ppo(args, "nokl", sft, proxy_wd, 0.0)}
    if args.until == "ppo":
        return
    from gptjax.evals import judge as judge_lib
    proxy = judge_lib.load_reward_judge(proxy_wd)
    rows = [row for name, wd in runs.items() for row in curve(name, wd, gold, proxy)]
    per_iteration = {name: [m for m in rr.jsonl(os.path.join(wd, "metrics.jsonl")) if "kl" in m]
                     for name, wd in runs.items()}
    with open(os.path.join(out, "overoptimization.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, per_iteration, os.path.join(out, "overoptimization.png"), args.beta)
    if args.until == "curve":
        return
    # Step 6: the win rate at the KL run's best point (by the gold on the eval prompts), on the
    # held-out prompts PPO's eval did not answer (so the choice of the point does not bias it).
    prompts_path = os.path.join(out, "winrate_prompts.jsonl")
    rest = unseen_heldout(args, sft)
    rr.write_jsonl(prompts_path, rest)
    best = max((r for r in rows if r["run"] == "kl" and r["step"] > 0), key=lambda r: r["gold"])
    last_nokl = max((r for r in rows if r["run"] == "nokl"), key=lambda r: r["step"])
    results = {"seconds": seconds, "curve": rows, "winrate_prompts": len(rest),
               "rankings": json.load(open(os.path.join(out, "rankings_stats.json"))),
               "proxy_eval": json.load(open(os.path.join(proxy_wd, "reward_eval.json"))),
               "gold_eval": json.load(open(os.path.join(gold_wd, "reward_eval.json"))),
               "win_rates": {}}
    for label, point in (("kl_best", best), ("nokl_last", last_nokl)):
        snap = rr.snapshot(runs[point["run"]], point["step"],
                           os.path.join(out, f"snap_{point['run']}_{point['step']}"))
        judge = gold_judge(args, gold_wd, pretrain)
        w = rr.win_rate(snap, sft, os.path.join(out, f"eval_{label}"), judge=judge, overrides={
            "eval.base": pretrain, "eval.win_rate.prompts": prompts_path,
            "eval.win_rate.samples_per_prompt": args.samples,
            "eval.win_rate.max_new_tokens": NEW_TOKENS, "eval.win_rate.temperature": 1.0,
            "seed": args.seed})["win_rate"]
        w["gold_failed"] = dict(judge.failed)
        results["win_rates"][label] = {"step": point["step"], "kl": point["kl"], **w}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    report(results, out)


def report(results: dict, out: str) -> None:
    print(f"\nGold / proxy curve ({out}/overoptimization.csv, .png)\n")
    print("| run | step | KL | sqrt KL | proxy | gold | gold-failed share | cut at the limit | "
          "mean chars |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["curve"]:
        print(f"| {r['run']} | {r['step']} | {r['kl']:.2f} | {r['sqrt_kl']:.2f} | "
              f"{r['proxy']:+.3f} | {r['gold']:+.3f} | {r['gold_failed']:.2f} | "
              f"{r['truncated']:.2f} | {r['mean_chars']:.0f} |")
    print(f"\nWin rate over SFT under the gold, {results['winrate_prompts']} held-out prompts\n")
    print("| point | PPO wins / ties / SFT wins | win rate (95% interval) | length-matched | "
          "distinct-2 PPO / SFT | digit+symbol PPO / SFT | base ppl PPO / SFT | bounds |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for label, w in results["win_rates"].items():
        d = w["degeneration"]
        a, b = d[w["a"]], d[w["b"]]
        ok = rr.within_bounds(a, b)
        lm = w["length_matched"]
        print(f"| {label} (step {w['step']}, KL {w['kl']:.1f}) | {w['wins']} / {w['ties']} / "
              f"{w['losses']} | {w['win_rate']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}] | "
              f"{lm['win_rate']:.3f} of {lm['comparisons']} | "
              f"{a['distinct_2']:.3f} / {b['distinct_2']:.3f} | "
              f"{a['digit_symbol_share']:.3f} / {b['digit_symbol_share']:.3f} | "
              f"{a.get('base_perplexity', math.nan):.0f} / "
              f"{b.get('base_perplexity', math.nan):.0f} | "
              + ", ".join(f"{k} {v['change']:+.0%} {'ok' if v['ok'] else 'OUT'}"
                          for k, v in ok.items()) + " |")


if __name__ == "__main__":
    main()
