"""RL prompts from any file: plain prompts, SFT conversations, preference records and pairs, in
.jsonl or .parquet; rejected rows counted; pooled without weights."""

from __future__ import annotations

import pytest
from conftest import write_rows
from test_formats import as_format

from gptjax.config import base_config
from gptjax.data import preferences, prompts, sources
from gptjax.data.chat import render_prompt
from gptjax.data.lm import embedded_path
from gptjax.data.tokenizer import CharTokenizer
from gptjax.errors import GptjaxError

SYSTEM = {"role": "system", "content": "Be brief."}
CONVS = [[{"role": "user", "content": f"question {i}?"},
          {"role": "assistant", "content": f"answer {i}."}] for i in range(6)]
CONVS.append([SYSTEM, {"role": "user", "content": "first?"}, {"role": "assistant", "content": "1"},
              {"role": "user", "content": "second?"}, {"role": "assistant", "content": "2"}])
# a prompt is what comes before the conversation's last answer
WANT = [c[:-1] for c in CONVS]


@pytest.mark.parametrize("fmt", ["messages", "prompt_completion", "alpaca", "sharegpt", "pairs",
                                 "prompt"])
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_prompts_of_every_format(tmp_path, fmt, suffix):
    if fmt == "pairs":
        rows = [{"chosen": c, "rejected": [*c[:-1], {"role": "assistant", "content": "no."}]}
                for c in CONVS]
    elif fmt == "prompt":
        rows = [{"prompt": c[:-1]} for c in CONVS]
    else:
        rows = [as_format(c, fmt, i) for i, c in enumerate(CONVS)]
    got, reports = prompts.read_prompts(write_rows(tmp_path / f"p{suffix}", rows), "")
    assert got == WANT and reports[0].used == len(CONVS) and not reports[0].rejected


def test_prompt_only_records(tmp_path):
    path = write_rows(tmp_path / "p.jsonl", [
        {"prompt": "Tell me a joke."},
        {"messages": [SYSTEM, {"role": "user", "content": "Hi?"}]},  # no answer: all turns
        {"instruction": "Summarise.", "input": "A long text."},  # Alpaca without output
        {"messages": [SYSTEM]},  # no user turn: rejected
        {"prompt": ""},  # empty: rejected
        {"title": "no prompt"}])
    got, (rep,) = prompts.read_prompts(path, "")
    assert got == [[{"role": "user", "content": "Tell me a joke."}],
                   [SYSTEM, {"role": "user", "content": "Hi?"}],
                   [{"role": "user", "content": "Summarise.\nA long text."}]]
    assert dict(rep.rejected) == {"missing_field": 2, "empty_turn": 1}
    assert rep.first["missing_field"] == f"{path} line 4 has no user turn before its answer"


def _config(mixture):
    c = base_config()
    c.data.mixture, c.data.val_fraction = mixture, 0.2
    return c


def test_load_prompts_parquet_equals_jsonl_and_rejects_weights(tmp_path):
    rows = [{"prompt": f"say {i} {'x' * (i % 7)}?", "chosen": "a", "rejected": "b"}
            for i in range(30)]
    a, b = write_rows(tmp_path / "p.jsonl", rows), write_rows(tmp_path / "p.parquet", rows)
    tok = CharTokenizer.train("say 0123456789x?ab")
    ids_a, stats_a = prompts.load_prompts(_config(a), tok, 64)
    ids_b, stats_b = prompts.load_prompts(_config(b), tok, 64)
    assert ids_a == ids_b and stats_a[a] == stats_b[b]
    assert stats_a[a]["records"] == 24 == len(ids_a)  # the fixed 20% held out
    # the prompts of the reward stage's training split of that file
    train, _ = sources.split(preferences.read_source(a, ""), 0.2)
    assert ids_a == [render_prompt(r.prompt, tok) for r in train]
    with pytest.raises(GptjaxError, match="RL pools the prompts"):
        prompts.load_prompts(_config(f"{a}:2"), tok, 64)
    with pytest.raises(GptjaxError, match="unknown source of prompts 'nope'"):
        prompts.load_prompts(_config("nope"), tok, 64)


def test_a_file_without_prompts_is_one_error(tmp_path):
    path = write_rows(tmp_path / "p.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(GptjaxError, match=r"p.jsonl: none of its 2 rows is a usable prompt "
                                          r"\(2 missing_field \(first: .*line 1 has no 'prompt'"):
        prompts.read_prompts(path, "")


def test_shipped_prompt_example():
    got, (rep,) = prompts.read_prompts(embedded_path("examples/prompts.jsonl"), "")
    assert len(got) == 3 and not rep.rejected and got[2][0]["role"] == "system"
