"""PPO on real human preferences, judged by a reward model trained on other humans' pairs.

Issue 12, section 3. From a chain built by `benchmarks/reward_accuracy.py` (--chain: its
`pretrain` and `sft` workdirs):

1. the shipped hh-rlhf harmless-base pairs are split by prompt (records sharing a prompt stay
   together) into A (45%), B (45%) and C (10%), seed 0: out/split/{A,B}.jsonl as
   {"prompt", "chosen", "rejected"} records, out/split/C.jsonl as {"prompt"} records;
2. RM-A and RM-B: the reward stage from the SFT model on A and on B (disjoint humans' pairs);
3. PPO from the SFT model against RM-A on A's prompts, once per run of --runs (RUNS below:
   the shipped settings, and the settings that keep the answers from degenerating);
4. each PPO model against the SFT model on C's prompts, which no stage saw, judged by RM-A
   (the reward model PPO optimised) and by RM-B (the independent judge), with the degeneration
   measures and the perplexity under the pretrained model beside them, checked against the
   issue's bounds (distinct-2 and the digit + symbol share within 10% of SFT's, perplexity
   within 25%).

    python benchmarks/rlhf_heldout.py [--chain runs/chain] [--out runs/heldout] \
        [--runs issue,shipped,end,end_only,end_clip] [--iterations 60]

Prints a markdown table; everything lands in out/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rlhf_runs as rr  # noqa: E402

PPO_COMMON = ("--config.ppo.batch_prompts=8", "--config.ppo.samples_per_prompt=4",
              "--config.ppo.max_new_tokens=48", "--config.ppo.max_prompt_tokens=96",
              "--config.ppo.num_minibatches=2", "--config.ppo.eval_prompts=16",
              "--config.train.eval_batches=2", "--config.optim.lr=3e-5",
              "--config.optim.min_lr=3e-5")
# name -> (what it is, overrides of configs/ppo.py beside PPO_COMMON)
RUNS = {
    "issue": ("as issue 12 ran it: a truncated answer scored at its last token, the reward "
              "workdir's offset, the critic at the raw reward model",
              ("--config.ppo.truncated=none", "--config.ppo.offset_prompts=0",
               "--config.ppo.center_critic=False")),
    "shipped": ("configs/ppo.py as shipped: truncated answers penalised, the offset measured "
                "with PPO's sampling, the critic on the scores' scale",
                ("--config.ppo.offset_prompts=32",)),
    "end": ("shipped, but a truncated answer scored with <|end|> appended (no push to end "
            "early), scores in SFT stds clipped at 3, and the pretraining mix (ptx_coef 1)",
            ("--config.ppo.offset_prompts=32", "--config.ppo.truncated=end",
             "--config.ppo.normalize_scores=True", "--config.ppo.score_clip=3.0",
             "--config.ppo.ptx_coef=1.0")),
    "end_only": ("shipped, but a truncated answer scored with <|end|> appended (of 'end', only "
                 "the change to truncated answers)",
                 ("--config.ppo.offset_prompts=32", "--config.ppo.truncated=end")),
    "end_clip": ("'end' without the pretraining mix (of 'end', the truncated-answer rule and the "
                 "clipped SFT-std scores)",
                 ("--config.ppo.offset_prompts=32", "--config.ppo.truncated=end",
                  "--config.ppo.normalize_scores=True", "--config.ppo.score_clip=3.0")),
}


def split_hh(data_root: str, out: str, seed: int = 0) -> dict[str, int]:
    """hh-rlhf harmless-base records into A / B / C by prompt (45 / 45 / 10%)."""
    from gptjax.data import preferences
    os.makedirs(out, exist_ok=True)
    recs = preferences.read_hh_rlhf(data_root)
    groups: dict[str, list] = {}
    for r in recs:
        groups.setdefault(json.dumps(r.prompt, sort_keys=True), []).append(r)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n = len(keys)
    parts = {"A": keys[:int(0.45 * n)], "B": keys[int(0.45 * n):int(0.9 * n)],
             "C": keys[int(0.9 * n):]}
    counts = {}
    for name, ks in parts.items():
        rows = [r for k in ks for r in groups[k]]
        if name == "C":
            out_rows = [{"prompt": groups[k][0].prompt} for k in ks]
        else:
            out_rows = [{"prompt": r.prompt, "chosen": r.answers[0], "rejected": r.answers[1]}
                        for r in rows]
        rr.write_jsonl(os.path.join(out, f"{name}.jsonl"), out_rows)
        counts[name] = len(out_rows)
    return counts


def ppo(args: argparse.Namespace, name: str) -> tuple[str, float]:
    """Step 3: PPO run `name` of RUNS against RM-A on A's prompts; (workdir, seconds)."""
    chain, out = os.path.abspath(args.chain), os.path.abspath(args.out)
    split = os.path.join(out, "split")
    wd = os.path.join(out, f"ppo_{name}")
    seconds = rr.train(
        wd, args.iterations, "--config", "configs/ppo.py",
        f"--config.init_from={os.path.join(chain, 'sft')}",
        f"--config.ppo.reward_from={os.path.join(out, 'reward_A')}",
        f"--config.data.root={args.data_root}",
        f"--config.data.mixture={os.path.join(split, 'A.jsonl')}", *PPO_COMMON,
        f"--config.train.eval_every={args.eval_every}",
        f"--config.train.checkpoint_every={args.iterations}", *RUNS[name][1])
    return wd, seconds


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chain", default="runs/chain")
    ap.add_argument("--out", default="runs/heldout")
    ap.add_argument("--data_root", default=rr.DATA)
    ap.add_argument("--reward_steps", type=int, default=200)
    ap.add_argument("--runs", default=",".join(RUNS))
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--eval_every", type=int, default=10)
    ap.add_argument("--samples", type=int, default=2, help="answers per C prompt and model")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--until", default="", help="stop after this step: split, rewards, ppo")
    return ap


def main() -> None:
    args = parser().parse_args()
    chain, out = os.path.abspath(args.chain), os.path.abspath(args.out)
    sft, pretrain = os.path.join(chain, "sft"), os.path.join(chain, "pretrain")
    split = os.path.join(out, "split")
    if not os.path.exists(os.path.join(split, "C.jsonl")):
        rr.log(f"split: {split_hh(args.data_root, split)}")
    if args.until == "split":
        return
    rms = {}
    for part in ("A", "B"):
        rms[part] = os.path.join(out, f"reward_{part}")
        rr.train(rms[part], args.reward_steps, "--config", "configs/reward_preferences.py",
                 f"--config.init_from={sft}", f"--config.data.root={args.data_root}",
                 f"--config.data.mixture={os.path.join(split, part + '.jsonl')}",
                 "--config.train.batch_size=8", "--config.reward.normalize_prompts=32",
                 *rr.schedule(args.reward_steps, 1e-4), files=("reward_normalization.json",))
    if args.until == "rewards":
        return
    results = {}
    for name in [r for r in args.runs.split(",") if r]:
        what = RUNS[name][0]
        wd, seconds = ppo(args, name)
        if args.until == "ppo":
            continue
        results[name] = {"what": what, "ppo_seconds": seconds, "judges": {}}
        for part in ("A", "B"):
            w = rr.win_rate(wd, sft, os.path.join(out, f"eval_{name}_rm{part}"),
                            judge_workdir=rms[part], overrides={
                                "eval.base": pretrain,
                                "eval.win_rate.prompts": os.path.join(split, "C.jsonl"),
                                "eval.win_rate.samples_per_prompt": args.samples,
                                "eval.win_rate.max_new_tokens": 48,
                                "eval.win_rate.temperature": args.temperature})
            results[name]["judges"][f"RM-{part}"] = w["win_rate"]
    if not results:
        return
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    report(results, out)


def report(results: dict, out: str) -> None:
    print(f"\nPPO against RM-A, judged on the C prompts ({out})\n")
    print("| run | judge | PPO wins / ties / SFT wins | win rate of PPO (95% interval) | "
          "length-matched | mean chars PPO / SFT |")
    print("|---|---|---:|---:|---:|---:|")
    for name, r in results.items():
        for judge, w in r["judges"].items():
            lm = w["length_matched"]
            print(f"| {name} | {judge} | {w['wins']} / {w['ties']} / {w['losses']} | "
                  f"{w['win_rate']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}] | "
                  f"{lm['win_rate']:.3f} of {lm['comparisons']} | "
                  f"{w['mean_length_a']:.0f} / {w['mean_length_b']:.0f} |")
    print("\n| run | distinct-2 PPO / SFT | digit+symbol share PPO / SFT | base perplexity "
          "PPO / SFT | cut at the limit PPO / SFT | within the bounds |")
    print("|---|---:|---:|---:|---:|---|")
    for name, r in results.items():
        w = r["judges"]["RM-B"]
        d = w["degeneration"]
        a, b = d[w["a"]], d[w["b"]]
        ok = rr.within_bounds(a, b)
        print(f"| {name} | {a['distinct_2']:.3f} / {b['distinct_2']:.3f} | "
              f"{a['digit_symbol_share']:.3f} / {b['digit_symbol_share']:.3f} | "
              f"{a.get('base_perplexity', float('nan')):.0f} / "
              f"{b.get('base_perplexity', float('nan')):.0f} | "
              f"{a['truncated_fraction']:.2f} / {b['truncated_fraction']:.2f} | "
              + ", ".join(f"{k} {v['change']:+.0%} {'ok' if v['ok'] else 'OUT'}"
                          for k, v in ok.items()) + " |")


if __name__ == "__main__":
    main()
