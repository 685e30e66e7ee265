"""Starting the pipeline from existing weights: a Hugging Face GPT-2 folder (a tiny random model
and a byte-level BPE trained here, no downloads) -> `convert --from-hf` (weights, and the
vocabulary read by Hugging Face `tokenizers`) -> configs/chatgpt_gpt2_124m.py's SFT stage."""

from __future__ import annotations

import gzip
import json
import os

import pytest
from conftest import random_hf_gpt2, run_cli

from gptjax.data.hf_tokenizer import HFTokenizer
from gptjax.data.lm import embedded_path
from gptjax.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, with_special_tokens

SAMPLES = ["Hello there, how are you?  Ünïcode ✓ <|endoftext|> done", " leading space",
           "tabs\tand\nnewlines", "", "numbers 1234567 and symbols #$%"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    d = tmp_path_factory.mktemp("hf_gpt2")
    with gzip.open(embedded_path("c4_demo.jsonl.gz"), "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f][:150]  # the shipped C4 sample
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=2000, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(d))  # GPT-2's vocab.json + merges.txt
    bpe.save(str(d / "bpe_tokenizer.json"))
    model = random_hf_gpt2(vocab_size=bpe.get_vocab_size(), n_positions=128, n_embd=32,
                           n_layer=1, n_head=2)
    model.save_pretrained(str(d))
    return d


def test_the_vocabulary_is_gpt2s_tokenizer_read_by_tokenizers(hf_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    ref = transformers.GPT2Tokenizer.from_pretrained(str(hf_dir))
    tok = HFTokenizer.from_folder(str(hf_dir))
    for text in SAMPLES:
        assert tok.encode(text) == ref.encode(text), text
        assert tok.decode(tok.encode(text)) == text
    one = tmp_path / "one"  # a fast tokenizer's tokenizer.json reads the same
    one.mkdir()
    os.replace(hf_dir / "bpe_tokenizer.json", one / "tokenizer.json")
    assert [HFTokenizer.from_folder(str(one)).encode(t) for t in SAMPLES] == [
        tok.encode(t) for t in SAMPLES]
    chat = with_special_tokens(tok)  # GPT-2's ids stay; the chat tokens follow them
    n = tok.vocab_size
    assert [chat.specials[t] for t in SPECIAL_TOKENS[1:]] == [n, n + 1, n + 2, n + 3]
    assert chat.encode("<|user|> hi<|end|>")[0] == n + 1 and chat.encode("hi") == tok.encode("hi")


def test_the_pipeline_starts_from_a_converted_gpt2(hf_dir, tmp_path):
    gpt2, wd = str(tmp_path / "gpt2"), str(tmp_path / "chatgpt_gpt2")
    r = run_cli("gptjax.convert", "--from-hf", str(hf_dir), "--workdir", gpt2)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "tokenizer.json from its tokenizer files" in r.stdout
    assert load_tokenizer(os.path.join(gpt2, "tokenizer.json")).kind == "hf"
    sft = [f"--config.stages.sft.{k}" for k in (
        f"init_from={gpt2}", "model.dtype=float32", "train.steps=4", "train.batch_size=8",
        "train.eval_every=4", "train.eval_batches=1", "train.checkpoint_every=4",
        "train.progress=False", "optim.warmup_steps=1", "optim.decay_steps=4")]
    r = run_cli("gptjax.train", "--config", "configs/chatgpt_gpt2_124m.py", "--workdir", wd,
                "--config.order=('sft',)", "--config.report.enabled=False", *sft, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = os.path.join(wd, "sft")
    tok = load_tokenizer(os.path.join(out, "tokenizer.json"))
    hf_vocab = HFTokenizer.from_folder(str(hf_dir)).vocab_size
    assert tok.kind == "hf" and tok.vocab_size == hf_vocab + 4
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["init_from"] == gpt2 and cfg["model"]["vocab_size"] == hf_vocab + 4
    rows = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    assert rows[-1]["step"] == 4 and rows[-1]["val_loss"] < 100
