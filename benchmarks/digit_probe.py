"""What a digit string is worth to a reward model, and what it costs in KL to the SFT model.

The hh-rlhf PPO run of issue 12 collapsed into answers ending in digit strings
("... 10000000001000000000000"). For each reward workdir given, on the SFT model's own sampled
answers to the first --prompts held-out hh-rlhf prompts: the mean score (minus the workdir's
offset, in units of its SFT score std) of the answers as they are, with a digit string
appended, and of the digit string alone; and the SFT model's mean -log pi per token of the
answers' own tokens and of the appended digit tokens (what the KL penalty charges per token
is log pi/pi_SFT, which a policy pays less for where pi_SFT is already high).

    python benchmarks/digit_probe.py --sft runs/chain/sft runs/heldout/reward_A \
        runs/chain/reward_hh-rlhf
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rlhf_runs as rr  # noqa: E402

DIGITS = " 10000000001000000000000"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rewards", nargs="+")
    ap.add_argument("--sft", default="runs/chain/sft")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--data_root", default=rr.DATA)
    args = ap.parse_args()
    from gptjax import reward_model, workdir as workdir_lib
    from gptjax.data.chat import render
    from gptjax.evals import answers as ans, perplexity, prompts as prompt_sets
    prompts = prompt_sets.load("hh-rlhf", args.data_root, 0.1, args.prompts)
    m = ans.load_model(args.sft)
    s = ans.Sampling(48, 1.0, 0, 1.0, 1, 0, 32)
    width = ans.prompt_width(m, 48)
    ids = [ans.fit_prompt(p, m, width) for p in prompts]
    keep = [i for i, x in enumerate(ids) if x is not None]
    texts = [row[0] for row in ans.answer(m, [ids[i] for i in keep], s, keep).texts]
    prompts = [prompts[i] for i in keep]
    variants = {"as sampled": texts, "+ digits": [t + DIGITS for t in texts],
                "digits alone": [DIGITS.strip()] * len(texts)}
    print(f"\n{len(texts)} SFT answers (temperature 1, 48 tokens); digits = {DIGITS.strip()!r}\n")
    print("| reward model | " + " | ".join(variants) + " | share where + digits scores higher |")
    print("|---|" + "---:|" * (len(variants) + 1))
    for wd in args.rewards:
        sc = reward_model.load(wd)
        norm = workdir_lib.read_json(wd, reward_model.NORMALIZATION_FILE) or {}
        sd = float(norm.get("std", 1.0)) or 1.0
        got = {k: sc.score(list(zip(prompts, v))) / sd for k, v in variants.items()}
        better = float(np.mean(got["+ digits"] > got["as sampled"]))
        print(f"| {wd} | " + " | ".join(f"{v.mean():+.2f}" for v in got.values())
              + f" | {better:.2f} |")
    # -log pi_SFT per token: the answer's own tokens vs the appended digit tokens
    tok = m.trained.tokenizer
    rows, n_digit = [], []
    for p, t in zip(prompts, texts):
        full, mask = render([*p, {"role": "assistant", "content": t + DIGITS}], tok)
        base, _ = render([*p, {"role": "assistant", "content": t}], tok)
        k = len(full) - len(base)  # the appended tokens, just before the end token
        full = full[-(m.trained.cfg.block_size + 1):]
        mask = np.asarray(mask[-len(full):], np.float32)
        w_digit = np.zeros_like(mask)
        w_digit[len(full) - 1 - k:len(full) - 1] = 1.0
        own = mask * (1 - w_digit)
        own[-1] = 0.0  # not the end token
        rows.append((np.asarray(full), own))
        rows.append((np.asarray(full), w_digit))
        n_digit.append(k)
    nll, count = perplexity.row_nll(m.trained, rows, 16)
    own = nll[0::2].sum() / count[0::2].sum()
    dig = nll[1::2].sum() / count[1::2].sum()
    print(f"\nSFT -log pi per token: the answers' own tokens {own:.2f}, the appended digit "
          f"tokens {dig:.2f} (mean {np.mean(n_digit):.1f} tokens)")


if __name__ == "__main__":
    main()
