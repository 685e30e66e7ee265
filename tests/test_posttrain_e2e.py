"""End to end through the CLI: pretrain -> SFT on shipped dialogues -> reward model.

A tiny char-level model is pretrained on the KdConv training utterances (Chinese dialogues:
short turns, so a 2-layer model learns the turn structure in a few hundred steps), fine-tuned
with stage `sft` on KdConv conversations, and must then answer held-out prompts in the assistant
role and stop at <|end|>. The reward stage starts from that SFT workdir and must learn a known
preference rule to >= 95% held-out accuracy.
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
from conftest import SHARED_DATA, run_cli

from gptjax.data import preferences, sft as sft_data
from gptjax.data.chat import render_prompt
from gptjax.data.tokenizer import ASSISTANT, END_OF_TURN, SYSTEM, USER

pytestmark = pytest.mark.slow
COMMON = ("--config", "configs/tiny.py", "--config.model.block_size=128",
          "--config.train.batch_size=16", "--config.train.steps=300",
          "--config.optim.decay_steps=300", "--config.train.eval_every=300",
          "--config.train.checkpoint_every=300", "--config.train.progress=False")


@pytest.fixture(scope="module")
def sft_workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("posttrain")
    # Pretraining text: the utterances of 90% of the conversations. (SFT then holds out 10% of
    # the conversations this char vocabulary can encode, which may include some of this text:
    # the test checks turn-taking and stopping, not recall of the utterances.)
    train, _ = sft_data.split(sft_data.read_kdconv(str(SHARED_DATA)), 0.1)
    text = root / "kdconv_train.txt"
    text.write_text("\n".join(t["content"] for c in train for t in c), encoding="utf-8")
    pre, sft = str(root / "pretrain"), str(root / "sft")
    r = run_cli("gptjax.train", *COMMON, "--workdir", pre, f"--config.data.text_path={text}",
                "--config.model.vocab_size=0", "--config.optim.warmup_steps=20", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("gptjax.train", *COMMON, "--workdir", sft, "--config.stage=sft",
                f"--config.init_from={pre}", "--config.data.mixture=kdconv",
                f"--config.data.root={SHARED_DATA}", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "sft data kdconv:" in r.stdout
    return sft


def test_sft_model_answers_in_role_and_stops_at_end_of_turn(sft_workdir):
    import jax

    from gptjax import sampling, workdir as workdir_lib
    model = workdir_lib.load(sft_workdir)
    tok = model.tokenizer
    metrics = [json.loads(x) for x in open(os.path.join(sft_workdir, "metrics.jsonl"))]
    assert metrics[-1]["val_loss"] < metrics[0]["loss"]
    # The conversations the SFT run held out: its split of the usable ones (window T+1 = 129).
    usable, _ = sft_data.tokenize(sft_data.read_kdconv(str(SHARED_DATA)), tok, 129)
    _, held_out = sft_data.split(usable, 0.1)
    prompts = [render_prompt(conv[:1], tok) for conv, _ in held_out[:32]]
    batch, prompt_lengths = sampling.left_pad(prompts)
    end = tok.specials[END_OF_TURN]
    out, _, lengths = sampling.generate(
        model.params, model.cfg, batch, prompt_lengths,
        jax.random.split(jax.random.key(0), len(prompts)), 64, temperature=0.0, eos_id=end)
    out, lengths = np.asarray(out), np.asarray(lengths)
    roles = {tok.specials[t] for t in (USER, SYSTEM, ASSISTANT)}
    in_role = [row[n - 1] == end and not roles & set(row[:n - 1].tolist())
               for row, n in zip(out, lengths)]
    replies = [tok.decode(row[:n - 1]) for row, n in zip(out, lengths)]
    assert sum(in_role) >= 0.85 * len(prompts), (sum(in_role), replies[:5])
    assert sum(len(r) > 0 for r in replies) >= 0.85 * len(prompts)


def test_chat_cli_speaks_in_turns(sft_workdir):
    r = run_cli("gptjax.chat", "--workdir", sft_workdir, "--temperature", "0",
                "--max_new_tokens", "48", input="你好，你知道这部电影吗？\n你喜欢音乐吗？\n/quit\n")
    assert r.returncode == 0, r.stderr
    assert "chat template" in r.stderr
    replies = [x for x in r.stdout.splitlines() if x.startswith("model> ")]
    assert len(replies) == 2 and not any(END_OF_TURN in x or USER in x for x in replies)


KEYWORDS = ["电影", "音乐", "旅游", "北京", "演员", "歌曲", "上海", "导演"]


def _synthetic_preferences(path, n, seed):
    """The chosen answer mentions the keyword the prompt asks for; others mention another one.
    Every third prompt has K = 3 answers with the two wrong ones tied."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            kw, *others = rng.sample(KEYWORDS, 3)
            answers = [f"我想说{kw}。", f"我想说{others[0]}。"]
            ranks = [0, 1]
            if i % 3 == 0:
                answers.append(f"我想说{others[1]}。")
                ranks.append(1)
            order = rng.sample(range(len(answers)), len(answers))
            f.write(json.dumps({"prompt": f"请说说{kw}。",
                                "answers": [answers[j] for j in order],
                                "ranks": [ranks[j] for j in order]}, ensure_ascii=False) + "\n")
    return str(path)


def test_reward_model_learns_a_known_preference_rule(sft_workdir, tmp_path):
    data = _synthetic_preferences(tmp_path / "keyword.jsonl", 600, seed=0)
    wd = str(tmp_path / "reward")
    r = run_cli("gptjax.train", *COMMON[:2], "--config.stage=reward", "--workdir", wd,
                f"--config.init_from={sft_workdir}", f"--config.data.mixture={data}",
                "--config.data.val_fraction=0.2", "--config.train.batch_size=8",
                "--config.train.steps=200", "--config.optim.decay_steps=200",
                "--config.optim.warmup_steps=10", "--config.optim.lr=1e-3",
                "--config.train.eval_every=100", "--config.train.checkpoint_every=200",
                "--config.reward.normalize_prompts=16", "--config.train.progress=False",
                timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.load(open(os.path.join(wd, "reward_eval.json")))
    _, held_out = sft_data.split(preferences.read_file(data), 0.2)
    assert report["records"] == len(held_out) == 120
    assert report["pairs"] == sum(len(rec.pairs) for rec in held_out)  # K = 3 prompts: 2 pairs
    assert report["accuracy"] >= 0.95, report
    norm = json.load(open(os.path.join(wd, "reward_normalization.json")))
    assert norm["prompts"] == 16 and np.isfinite(norm["offset"])

    from gptjax import reward_model
    scorer = reward_model.load(wd)
    prompt = [{"role": "user", "content": "请说说音乐。"}]
    s = scorer.score([(prompt, "我想说音乐。"), (prompt, "我想说北京。")])
    assert s[0] > s[1]
