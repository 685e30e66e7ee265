"""SFT: the chat format and its loss mask, packing, the data readers, and bad input."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED_DATA

from gptjax import losses
from gptjax.data import sft as sft_data
from gptjax.data.chat import parse_human_assistant, render, render_prompt
from gptjax.data.tokenizer import (ASSISTANT, END_OF_TURN, SYSTEM, USER, CharTokenizer)
from gptjax.errors import GptjaxError
from gptjax.loops.sft import sft_loss_fn
from gptjax.model import GPT, GPTConfig

TOK = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz ?!.,'")
CONV = [{"role": "system", "content": "be nice"},
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "how are you?"},
        {"role": "assistant", "content": "fine."}]


def test_render_marks_only_the_assistants_tokens():
    ids, mask = render(CONV, TOK)
    sp = TOK.specials
    expected, want = [], []
    for turn in CONV:
        role = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}[turn["role"]]
        body = TOK.encode(turn["content"]) + [sp[END_OF_TURN]]
        expected += [sp[role]] + body
        want += [0.0] + [1.0 if turn["role"] == "assistant" else 0.0] * len(body)
    assert ids.tolist() == expected and mask.tolist() == want
    assert TOK.decode(ids[mask > 0]) == f"hello!{END_OF_TURN}fine.{END_OF_TURN}"


def test_render_prompt_asks_for_the_next_assistant_turn():
    ids = render_prompt(CONV[:2], TOK)
    assert TOK.decode(ids) == f"{SYSTEM}be nice{END_OF_TURN}{USER}hi there{END_OF_TURN}{ASSISTANT}"
    full, _ = render(CONV[:3], TOK)
    assert full[:len(ids)].tolist() == ids  # the training rendering starts the same way


@pytest.mark.parametrize("conv, message", [
    ([{"role": "user", "content": "hi"}], "no assistant turn"),
    ([], "no turns"),
    ([{"role": "bot", "content": "hi"}], "role 'bot'"),
    ([{"role": "user"}], "no text"),
])
def test_render_rejects_bad_conversations(conv, message):
    with pytest.raises(GptjaxError, match=message):
        render(conv, TOK)


def test_parse_human_assistant():
    text = "\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: bye\n\nAssistant: ok."
    assert parse_human_assistant(text) == [
        {"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "bye"}, {"role": "assistant", "content": "ok."}]


# --- the loss mask: user tokens and padding contribute exactly zero -----------------------------

def test_masked_tokens_have_zero_loss_and_gradient():
    ids, mask = render(CONV, TOK)
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(1, len(ids) - 1, 64)), jnp.float32)
    targets, weights = jnp.asarray(ids[None, 1:]), jnp.asarray(mask[None, 1:])
    grad = jax.grad(losses.sft_loss)(logits, targets, weights)
    assert not np.asarray(grad)[0, np.asarray(weights)[0] == 0].any()
    assert np.abs(np.asarray(grad)[0, np.asarray(weights)[0] > 0]).sum() > 0
    # Replacing every masked-out target changes nothing.
    other = jnp.where(weights > 0, targets, (targets + 7) % 64)
    assert losses.sft_loss(logits, other, weights) == losses.sft_loss(logits, targets, weights)


CFG = GPTConfig(vocab_size=TOK.vocab_size, vocab_multiple=64, block_size=128, n_layer=2,
                n_head=2, n_embd=16)


def _params():
    return GPT(CFG).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]


def _unpacked_batch(examples, width):
    b = len(examples)
    out = {k: np.zeros((b, width), np.int32) for k in ("tokens", "segment_ids", "positions")}
    out["weights"] = np.zeros((b, width), np.float32)
    for i, (ids, m) in enumerate(examples):
        n = len(ids)
        out["tokens"][i, :n], out["weights"][i, :n] = ids, m
        out["segment_ids"][i, :n], out["positions"][i, :n] = 1, np.arange(n)
    return out


def test_packed_and_unpacked_batches_give_the_same_loss_and_gradients():
    convs = [CONV, CONV[1:3], [{"role": "user", "content": "why?"},
                               {"role": "assistant", "content": "because."}]]
    examples = [render(c, TOK) for c in convs]
    width = sum(len(e[0]) for e in examples) + 3
    packed = sft_data.val_batches(examples, width - 1, global_batch=1, num_batches=1)
    packed = {k: v[0] for k, v in packed.items()}
    assert packed["segment_ids"].max() == 3  # all three conversations in one row
    assert (packed["positions"][0][packed["segment_ids"][0] == 2] == np.arange(
        len(examples[1][0]))).all()  # positions restart per conversation
    loss_fn = sft_loss_fn(GPT(CFG), dropout=False)
    params = _params()
    grad_fn = jax.value_and_grad(lambda p, b: loss_fn(p, b, None)[0])
    l_packed, g_packed = grad_fn(params, packed)
    l_alone, g_alone = grad_fn(params, _unpacked_batch(examples, width))
    np.testing.assert_allclose(l_packed, l_alone, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_packed), jax.tree.leaves(g_alone)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_packing_isolates_conversations():
    """Changing one packed conversation leaves the other's logits bit-identical."""
    a, b = render(CONV, TOK), render(CONV[1:3], TOK)
    b2 = render([CONV[1], {"role": "assistant", "content": "zzzz, zz"}], TOK)
    model, params = GPT(CFG), _params()

    def logits_of(pair):
        batch = sft_data.val_batches(pair, 63, global_batch=1, num_batches=1)
        x = {k: jnp.asarray(v[0]) for k, v in batch.items()}
        return np.asarray(model.apply({"params": params}, x["tokens"], positions=x["positions"],
                                      segment_ids=x["segment_ids"]))
    n = len(a[0])
    np.testing.assert_array_equal(logits_of([a, b])[0, :n], logits_of([a, b2])[0, :n])


# --- data -------------------------------------------------------------------------------------

def test_fit_window_keeps_whole_turns_ending_with_the_assistant():
    full = len(render(CONV, TOK)[0])
    ids, mask = sft_data.fit_window(CONV, TOK, full - 1)
    assert ids.tolist() == render(CONV[:3], TOK)[0].tolist()
    assert sft_data.fit_window(CONV, TOK, 5) is None


def test_train_iterator_is_deterministic_and_resumes():
    examples = [render(c, TOK) for c in (CONV, CONV[1:3], CONV[:3])]
    it = sft_data.train_iterator([examples, examples[:1]], [1.0, 0.5], 63, 4, seed=3)
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    after = next(it)
    it2 = sft_data.train_iterator([examples, examples[:1]], [1.0, 0.5], 63, 4, seed=3)
    assert all((next(it2)["tokens"] == f["tokens"]).all() for f in first)
    it2.set_state(state)
    assert (next(it2)["tokens"] == after["tokens"]).all()
    assert first[0]["tokens"].shape == (4, 64)


def test_mixture_parsing_errors():
    assert sft_data.parse_mixture("gsm8k:0.5, kdconv") == [("gsm8k", 0.5), ("kdconv", 1.0)]
    for bad, msg in [("nope:1", "unknown data set"), ("gsm8k:x", "not a number"),
                     ("gsm8k:0", "must be > 0"), ("", "empty")]:
        with pytest.raises(GptjaxError, match=msg):
            sft_data.parse_mixture(bad)


@pytest.mark.parametrize("name", sorted(sft_data.READERS))
def test_readers_give_conversations_with_assistant_turns(name):
    convs = sft_data.READERS[name](str(SHARED_DATA))
    assert len(convs) > 100
    for conv in convs[:50]:
        assert conv[0]["role"] == "user" and any(t["role"] == "assistant" for t in conv)
        assert all(isinstance(t["content"], str) for t in conv)


def test_missing_data_root_is_a_clear_error(tmp_path):
    with pytest.raises(GptjaxError, match="data.root"):
        sft_data.read_gsm8k(str(tmp_path))


# --- starting from another workdir -------------------------------------------------------------

def _sft_config(init_from):
    from conftest import load_config
    c = load_config("sft_dialogues")
    c.init_from = str(init_from)
    return c


def test_start_from_a_missing_or_same_workdir_is_a_clear_error(tmp_path):
    from gptjax.loops import finetune
    with pytest.raises(GptjaxError, match="init_from"):
        finetune.start(_sft_config(""), str(tmp_path / "out"))
    with pytest.raises(GptjaxError, match="no such directory"):
        finetune.start(_sft_config(tmp_path / "nope"), str(tmp_path / "out"))
    with pytest.raises(GptjaxError, match="the same folder"):
        finetune.start(_sft_config(tmp_path / "out"), str(tmp_path / "out"))


def test_start_grows_the_vocabulary_and_rejects_a_foreign_tokenizer(trained, tmp_path):
    import shutil

    from gptjax.data.tokenizer import SPECIAL_TOKENS, save_tokenizer
    from gptjax.loops import finetune
    from gptjax.workdir import grow_vocab, load_host
    old = tmp_path / "old"
    shutil.copytree(trained, old)
    base = load_host(str(old))
    # A workdir from before the special tokens: its tokenizer has the 65 characters only.
    save_tokenizer(CharTokenizer(base.tokenizer.chars), str(old / "tokenizer.json"))
    s = finetune.start(_sft_config(old), str(tmp_path / "sft"))
    assert s.tokenizer.vocab_size == 65 + len(SPECIAL_TOKENS) == s.cfg.vocab_size  # 70 rows
    np.testing.assert_array_equal(s.params["wte"]["embedding"], base.params["wte"]["embedding"])
    # A model whose vocabulary has 65 rows grows to 70: new rows at the mean embedding.
    small = dataclasses.replace(base.cfg, vocab_size=65)
    params, cfg = grow_vocab(base.params, small, 70)
    wte, before = params["wte"]["embedding"], base.params["wte"]["embedding"]
    assert cfg.vocab_size == 70
    np.testing.assert_array_equal(wte[:65], before[:65])
    np.testing.assert_allclose(wte[65:70], np.broadcast_to(before[:65].mean(0), (5, wte.shape[1])),
                               rtol=1e-5)
    assert not wte[70:].any()
    # A tokenizer with more tokens than the checkpoint's model: not this model's vocabulary.
    save_tokenizer(CharTokenizer([chr(0x4e00 + i) for i in range(200)]),
                   str(old / "tokenizer.json"))
    with pytest.raises(GptjaxError, match="another vocabulary"):
        finetune.start(_sft_config(old), str(tmp_path / "sft2"))
