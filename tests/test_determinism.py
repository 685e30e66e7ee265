"""The same command, run twice from scratch on CPU, writes the same metrics, for every stage.

Through the CLI only (so it holds whatever the loops look like inside): the values of every
metrics.jsonl record but the timing ones (tokens_per_sec, mfu) must be equal, and so must the
reports a stage writes. Tiny runs: the pretraining one is conftest's `trained` workdir run once
more; SFT and the reward model start from it on a small copying task; PPO runs on the
hand-built workdirs of tests/test_ppo_stage.py.
"""

from __future__ import annotations

import json
import os

import pytest
from conftest import TRAINED_ARGS, run_cli
from test_ppo_stage import ppo_args, workdirs  # noqa: F401 (workdirs: a fixture)

TIMING = {"tokens_per_sec", "mfu"}  # and every per-phase "time_*" wall time
WORDS = ("king", "queen", "sword", "crown", "night", "love", "death", "rose", "ghost", "storm",
         "heart", "blood")
SHORT = ("--config.train.steps=6", "--config.train.log_every=1", "--config.train.eval_every=3",
         "--config.train.eval_batches=1", "--config.train.checkpoint_every=6",
         "--config.optim.decay_steps=6")


def _values(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items()
                 if k not in TIMING and not k.startswith("time_")} for line in f]


def _json(workdir, name):
    with open(os.path.join(workdir, name)) as f:
        return json.load(f)


def _twice(tmp_path, *args) -> tuple[str, str]:
    out = []
    for name in ("first", "second"):
        wd = str(tmp_path / name)
        r = run_cli(*args, "--workdir", wd, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        out.append(wd)
    return out[0], out[1]


@pytest.fixture(scope="module")
def copy_task(tmp_path_factory):
    """`say <word>?` -> `<word>.`: GSM8K-shaped SFT records and preference pairs (Tiny
    Shakespeare's characters only, so the char tokenizer encodes them)."""
    root = tmp_path_factory.mktemp("copy_task")
    (root / "gsm8k").mkdir()
    pairs = [(a, b) for a in WORDS for b in WORDS if a != b][:80]
    with open(root / "gsm8k" / "train.jsonl", "w") as f:
        for a, _ in pairs:
            f.write(json.dumps({"question": f"say {a}?", "answer": f"{a}."}) + "\n")
    prefs = root / "prefs.jsonl"
    with open(prefs, "w") as f:
        for a, b in pairs:
            f.write(json.dumps({"prompt": f"say {a}?", "chosen": f"{a}.", "rejected": f"{b}."})
                    + "\n")
    return str(root), str(prefs)


def test_pretrain_twice_same_metrics(trained, tmp_path):
    again = str(tmp_path / "again")
    r = run_cli(*TRAINED_ARGS, "--workdir", again)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _values(trained), _values(again)
    assert len(a) == 6 and a == b


def test_sft_twice_same_metrics(trained, copy_task, tmp_path):
    a, b = _twice(tmp_path, *TRAINED_ARGS[:4], *SHORT, "--config.stage=sft",
                  f"--config.init_from={trained}", f"--config.data.root={copy_task[0]}",
                  "--config.data.mixture=gsm8k")
    assert len(_values(a)) == 6 and any("val_loss" in x for x in _values(a))
    assert _values(a) == _values(b)
    assert _json(a, "data_stats.json") == _json(b, "data_stats.json")


def test_reward_twice_same_metrics(trained, copy_task, tmp_path):
    a, b = _twice(tmp_path, *TRAINED_ARGS[:4], *SHORT, "--config.stage=reward",
                  f"--config.init_from={trained}", f"--config.data.mixture={copy_task[1]}",
                  "--config.reward.normalize_prompts=0")  # (sampling: PPO's test covers it)
    assert len(_values(a)) == 6 and _values(a) == _values(b)
    assert _json(a, "reward_eval.json") == _json(b, "reward_eval.json")


def test_ppo_twice_same_metrics(workdirs, tmp_path):  # noqa: F811 (the imported fixture)
    a, b = (str(tmp_path / n) for n in ("first", "second"))
    for wd in (a, b):
        r = run_cli(*ppo_args(workdirs, wd, 3), timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    assert len(_values(a)) == 3 and _values(a) == _values(b)
