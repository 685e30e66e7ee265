"""A verifiable task shipped in the package: multi-digit addition, written out column by column.

A problem is "a+b" with a and b of 1 to `DIGITS` digits. Its worked answer adds the columns from
the ones digit up, each as "x+y=s" ("x+y+1=s" with a carry; a missing digit is 0), then states
the sum after "so":

    prompt  "47+586"
    answer  "7+6=13 4+8+1=13 0+5+1=6 so 633"

Everything is generated, nothing downloaded, and deterministically (Python's `random` with fixed
seeds, whose sequences are stable across versions): the same problems on every machine.

Split: a problem belongs to the test split when (a * 7919 + b * 104729) % 16 == 0 (1/16 of all
problems), to the train split otherwise; test problems never appear in training data. `problems`
draws n distinct problems of a split, uniformly over operand lengths then values.

- `sft_conversations(n)`: n worked training examples as chat conversations (SFT data; stage sft
  reads them as data set `addition`, see gptjax/data/sft.py).
- `prompts(split, n)`: (conversation, reference sum) pairs: what GRPO answers and checks.
- `text(n)`: the same n worked examples as plain lines "47+586: 7+6=13 ... so 633" (a
  pretraining corpus for a model that must first learn the characters:
  `python -m gptjax.data.addition --text FILE`).
"""

from __future__ import annotations

import argparse
import random
import sys

DIGITS = 3
TEST_MODULUS = 16
MARKER = "so"  # the final sum follows it


def is_test(a: int, b: int) -> bool:
    return (a * 7919 + b * 104729) % TEST_MODULUS == 0


def worked(a: int, b: int) -> str:
    """The written-out sum of a and b (the module docstring's format)."""
    xs, ys = str(a)[::-1], str(b)[::-1]
    steps, carry, digits = [], 0, []
    for i in range(max(len(xs), len(ys))):
        x = int(xs[i]) if i < len(xs) else 0
        y = int(ys[i]) if i < len(ys) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}" + ("+1" if carry else "") + f"={s}")
        carry, digits = s // 10, digits + [s % 10]
    total = ("1" if carry else "") + "".join(str(d) for d in reversed(digits))
    assert int(total) == a + b
    return " ".join(steps) + f" {MARKER} {total}"


def problems(split: str, n: int, seed: int = 0) -> list[tuple[int, int]]:
    """n distinct problems of split 'train' or 'test', drawn deterministically from seed."""
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}: use 'train' or 'test'")
    rng = random.Random(f"addition-{split}-{seed}")
    out, seen = [], set()
    while len(out) < n:
        la, lb = rng.randint(1, DIGITS), rng.randint(1, DIGITS)
        a = rng.randint(10 ** (la - 1) if la > 1 else 0, 10 ** la - 1)
        b = rng.randint(10 ** (lb - 1) if lb > 1 else 0, 10 ** lb - 1)
        if (a, b) in seen or is_test(a, b) != (split == "test"):
            continue
        seen.add((a, b))
        out.append((a, b))
    return out


def question(a: int, b: int) -> str:
    return f"{a}+{b}"


def sft_conversations(n: int = 400, seed: int = 0) -> list[list[dict[str, str]]]:
    """n worked training examples as [user question, assistant worked answer] conversations."""
    return [[{"role": "user", "content": question(a, b)},
             {"role": "assistant", "content": worked(a, b)}] for a, b in problems("train", n, seed)]


def prompts(split: str, n: int, seed: int = 0) -> list[tuple[list[dict[str, str]], str]]:
    """n (prompt conversation, reference sum as text) pairs of a split."""
    return [([{"role": "user", "content": question(a, b)}], str(a + b))
            for a, b in problems(split, n, seed)]


def text(n: int = 400, seed: int = 0) -> str:
    """The n worked training examples of `sft_conversations`, one "question: answer" a line."""
    return "".join(f"{question(a, b)}: {worked(a, b)}\n" for a, b in problems("train", n, seed))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="write the addition task's worked examples as text")
    ap.add_argument("--text", required=True, help="output file (UTF-8, one example a line)")
    ap.add_argument("--examples", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    with open(args.text, "w", encoding="utf-8") as f:
        f.write(text(args.examples, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
