"""Rewards a program can check: final-number exact match, a format reward, and their weighted sum.

The final number of an answer is read as GSM8K's references write theirs (Cobbe et al. 2021):
the number after the last `marker` ("####" for GSM8K, "so" for the addition task) when one
follows it, otherwise the last number anywhere in the text. Numbers compare as values: "1,000",
"$1000", "1000.00" and "1000" are equal. An answer with no number cannot be parsed: it scores 0
and is counted (`unparsed`), never an error. (The eval stage's gptjax/evals/gsm8k.py reads
numbers by the same rules; this small copy keeps the RL pieces free of the eval stage.)

    exact_match  1 if the final number equals the reference's, else 0
    format       1 if the answer ends with "<marker> <number>", else 0
    reward_model the reward model's score (computed on the devices, gptjax/loops/grpo.py)

`grpo.rewards` names a weighted sum, e.g. "exact_match:1,format:0.1".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

import numpy as np

from gptjax.errors import GptjaxError

REWARDS = ("exact_match", "format", "reward_model")
HOST_REWARDS = ("exact_match", "format")  # checked by a program on the host

# 1,000 / 1000 / 1000.5 / .5, optionally signed and with a dollar sign
_NUMBER = re.compile(r"-?\$?\s*(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\$?\s*\.\d+")


class RewardSpecError(GptjaxError):
    """grpo.rewards names an unknown reward or a weight that is not a number."""


def parse_rewards(spec: str) -> dict[str, float]:
    """"exact_match:1,format:0.1" -> {'exact_match': 1.0, 'format': 0.1} (no weight = 1)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, w = part.partition(":")
        name = name.strip()
        if name not in REWARDS:
            raise RewardSpecError(f"grpo.rewards names unknown reward {name!r}; rewards are "
                                  f"{REWARDS}, e.g. 'exact_match:1,format:0.1'")
        try:
            out[name] = float(w) if w.strip() else 1.0
        except ValueError:
            raise RewardSpecError(f"grpo.rewards weight {w!r} of {name} is not a number") from None
    if not out:
        raise RewardSpecError("grpo.rewards is empty; name at least one reward, e.g. "
                              "'exact_match:1'")
    return out


def normalize(number: str) -> str | None:
    """A number's canonical text ("1,000.50" -> "1000.5", "$-3" -> "-3"), None if none."""
    s = number.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def last_number(text: str) -> str | None:
    for m in reversed(_NUMBER.findall(text)):
        n = normalize(m)
        if n is not None:
            return n
    return None


def final_number(text: str, marker: str = "####") -> str | None:
    """The answer's final number (the module docstring's rule), None when it has none."""
    if marker and marker in text:
        tail = last_number(text.rsplit(marker, 1)[1].split("\n", 1)[0])
        if tail is not None:
            return tail
    return last_number(text)


def follows_format(text: str, marker: str) -> bool:
    """The answer ends with "<marker> <number>" (trailing spaces allowed)."""
    pattern = re.escape(marker) + r"\s*" + _NUMBER.pattern.join("()") + r"\s*$"
    return re.search(pattern, text) is not None


SCORES = ("host_reward", "exact_match", "format", "unparsed")  # what `score` returns


def score(answers: Sequence[str], references: Sequence[str], weights: dict[str, float],
          marker: str) -> dict[str, np.ndarray]:
    """The host rewards of decoded answers: {'host_reward': weighted sum of the host rewards,
    'exact_match', 'format' (each 0/1, float32), 'unparsed' (1 where no number was found)}
    over the B answers (references: the reference number of each answer's prompt)."""
    n = len(answers)
    exact, fmt, unparsed = (np.zeros(n, np.float32) for _ in range(3))
    for i, (text, ref) in enumerate(zip(answers, references)):
        got = final_number(text, marker)
        if got is None:
            unparsed[i] = 1.0
        else:
            exact[i] = float(got == normalize(ref))
        fmt[i] = float(follows_format(text, marker))
    total = weights.get("exact_match", 0.0) * exact + weights.get("format", 0.0) * fmt
    return dict(zip(SCORES, (total.astype(np.float32), exact, fmt, unparsed)))
