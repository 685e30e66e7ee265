"""DPO on the shipped human preference pairs (hh-rlhf harmless-base): held-out preference
accuracy of the implicit reward, from a small model trained here.

The chain is `benchmarks/reward_accuracy.py`'s (prepare_english 4,000-token BPE -> a 4-layer,
128-wide GPT pretrained on the shipped C4 + Wikipedia samples -> SFT on Topical-Chat,
Self-Instruct, GSM8K); the stages missing under --root are built here with its settings (or
pass --sft to start from any SFT workdir). Then stage `dpo` runs on hh-rlhf (configs/dpo.py;
the reference is the SFT model) and this prints dpo_eval.json: over every held-out pair, the
accuracy of r_w > r_l with r = beta log(pi / pi_ref), its standard error, the margin, and how
the policy's log-probs of the chosen and rejected answers moved from the reference's (both
falling is the known failure; the run warns when it happens). With --lora_rank > 0 it trains
LoRA adapters instead of every weight. A finished DPO run of the same name is reused.

With --judge_steps N > 0 it also measures the win rate of the DPO policy over the SFT model
with stage `eval` (configs/eval_winrate.py: both answer the 80 Vicuna questions, twice each,
sampled at temperature 0.7, at most --max_new_tokens tokens), judged by a reward model trained
here for N steps from the same SFT workdir on hh-rlhf (ROOT/judge_hh-rlhf, reused when there),
and prints the eval's tables (eval.md: the judge's own held-out accuracy, the win rate with its
bootstrap interval, the length-matched win rate).

    python benchmarks/dpo_accuracy.py [--root runs/bench_reward] [--steps 300] [--lora_rank 0]
        [--judge_steps 0] [--max_new_tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reward_accuracy import MODEL, ROOT, schedule, train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="runs/bench_reward")
    ap.add_argument("--sft", default="", help="an SFT workdir to start from (default: ROOT/sft)")
    ap.add_argument("--data_root", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--pretrain_steps", type=int, default=800)
    ap.add_argument("--sft_steps", type=int, default=500)
    ap.add_argument("--n_layer", type=int, default=4, help="of a chain built here")
    ap.add_argument("--chain_batch", type=int, default=16, help="pretrain / SFT batch")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--loss", default="sigmoid")
    ap.add_argument("--lora_rank", type=int, default=0)
    ap.add_argument("--name", default="", help="the DPO workdir under ROOT (default dpo_<...>)")
    ap.add_argument("--judge_steps", type=int, default=0, help="> 0: train a judge, win rate")
    ap.add_argument("--max_new_tokens", type=int, default=64, help="win rate answers")
    args = ap.parse_args()
    root = os.path.abspath(args.root)
    sft = os.path.abspath(args.sft) if args.sft else os.path.join(root, "sft")
    seconds = {}
    if not os.path.isdir(os.path.join(sft, "checkpoints")):
        if args.sft:
            sys.exit(f"--sft {sft} holds no checkpoint")
        wd = {k: os.path.join(root, k) for k in ("prepare", "pretrain")}
        model = [f"--config.model.n_layer={args.n_layer}" if m.startswith(
            "--config.model.n_layer=") else m for m in MODEL]
        batch = f"--config.train.batch_size={args.chain_batch}"
        if not os.path.isdir(os.path.join(wd["prepare"], "prepared")):
            seconds["prepare"] = train(wd["prepare"], "--config", "configs/prepare_english.py")
        if not os.path.isdir(os.path.join(wd["pretrain"], "checkpoints")):
            seconds["pretrain"] = train(
                wd["pretrain"], "--config", "configs/base.py", *model,
                "--config.model.vocab_size=0", f"--config.data.prepared_dir={wd['prepare']}",
                batch, "--config.optim.warmup_steps=100",
                *schedule(args.pretrain_steps, 1e-3))
        seconds["sft"] = train(
            sft, "--config", "configs/sft_dialogues.py", f"--config.init_from={wd['pretrain']}",
            f"--config.data.root={args.data_root}",
            "--config.data.mixture=topical-chat:1,self-instruct:0.5,gsm8k:0.5",
            batch, *schedule(args.sft_steps, 3e-4))
    name = args.name or (f"dpo_{args.loss}" + (f"_lora{args.lora_rank}" if args.lora_rank else ""))
    out = os.path.join(root, name)
    if not os.path.isfile(os.path.join(out, "dpo_eval.json")):  # (written once it finished)
        seconds["dpo"] = train(
            out, "--config", "configs/dpo.py", f"--config.init_from={sft}",
            f"--config.data.root={args.data_root}", "--config.data.mixture=hh-rlhf",
            f"--config.train.batch_size={args.batch}", f"--config.dpo.beta={args.beta}",
            f"--config.dpo.loss={args.loss}", f"--config.lora.rank={args.lora_rank}",
            "--config.optim.warmup_steps=20", *schedule(args.steps, args.lr),
            "--config.train.eval_every=50")  # after schedule(), which sets it to the last step
    with open(os.path.join(out, "dpo_eval.json")) as f:
        r = json.load(f)
    with open(os.path.join(out, "data_stats.json")) as f:
        stats = json.load(f)["hh-rlhf"]
    z = (r["accuracy"] - r["chance"]) / max(r["stderr"], 1e-9)
    print(f"\nDPO ({args.loss}, beta {args.beta}, lr {args.lr}, {args.steps} steps x "
          f"{args.batch} pairs" + (f", LoRA rank {args.lora_rank}" if args.lora_rank else "")
          + f") from {sft}; hh-rlhf harmless-base: {stats['train']} training / {stats['val']} "
          f"held-out records ({stats['too_long']} too long)\n")
    print("| held-out pairs | accuracy | std. error | (accuracy - 0.5) / s.e. | margin | "
          "chosen log-prob change | rejected log-prob change | displacement warnings |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {r['pairs']} | {r['accuracy']:.3f} | {r['stderr']:.3f} | {z:.1f} | "
          f"{r['margin']:.3f} | {r['logps_chosen'] - r['ref_logps_chosen']:+.2f} | "
          f"{r['logps_rejected'] - r['ref_logps_rejected']:+.2f} | "
          f"{r['displacement_warnings']} |")
    if args.judge_steps > 0:
        judge = os.path.join(root, "judge_hh-rlhf")
        if not os.path.isfile(os.path.join(judge, "reward_eval.json")):
            seconds["judge"] = train(
                judge, "--config", "configs/reward_preferences.py", f"--config.init_from={sft}",
                f"--config.data.root={args.data_root}", "--config.data.mixture=hh-rlhf",
                "--config.train.batch_size=8", "--config.reward.normalize_prompts=32",
                *schedule(args.judge_steps, 1e-4))
        ev = os.path.join(root, f"eval_{name}_vs_sft")
        seconds["eval"] = train(
            ev, "--config", "configs/eval_winrate.py", f"--config.eval.a={out}",
            f"--config.eval.b={sft}", f"--config.eval.judge={judge}",
            f"--config.data.root={args.data_root}",
            f"--config.eval.win_rate.max_new_tokens={args.max_new_tokens}")
        with open(os.path.join(ev, "eval.md")) as f:
            print(f"\nwin rate of {out} over {sft} ({ev}/eval.md):\n\n{f.read()}")
    print("\nwall seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
