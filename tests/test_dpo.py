"""DPO / IPO / hinge: the losses by hand, the pair data, and stage `dpo` on a planted preference
rule (full fine-tuning with a per-batch reference; LoRA with precomputed reference log-probs)."""

from __future__ import annotations

import json
import math
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config
from test_ppo_stage import TEXT, write_workdir

from gptjax import config as config_lib
from gptjax import losses, lora
from gptjax import workdir as workdir_lib
from gptjax.checkpoint import Checkpointer
from gptjax.data import dpo as dpo_data, preferences
from gptjax.data.tokenizer import CharTokenizer
from gptjax.errors import GptjaxError
from gptjax.loops import dpo
from gptjax.model import GPT, GPTConfig


def nls(x):  # -log sigmoid(x), written out
    return math.log(1 + math.exp(-x))


# Record 0: K = 2, answer 0 preferred. Record 1: K = 3 ranked [0, 1, 1] (pairs 0>1, 0>2; 1 and 2
# tie). Record 2: padding (no pairs). rho = logps - ref: record 0 (1, -1), record 1 (1, -1, -3),
# so the pairs have h = rho_w - rho_l = 2 | 2, 4, weighted 1/2 | 1/4, 1/4.
LOGPS = [[-3.0, -5.0, 0.0], [-2.0, -4.0, -6.0], [-1.0, -1.0, -1.0]]
REF = [[-4.0, -4.0, 0.0], [-3.0, -3.0, -3.0], [-2.0, -2.0, -2.0]]
PREF = np.zeros((3, 3, 3), np.float32)
PREF[0, 0, 1] = PREF[1, 0, 1] = PREF[1, 0, 2] = 1.0


@pytest.mark.parametrize("kind, beta, eps, want", [
    # (1/2) l(2) + (1/4) (l(2) + l(4)), l(h) = -(1 - eps) log s(beta h) - eps log s(-beta h)
    ("sigmoid", 0.5, 0.0, 0.75 * nls(1.0) + 0.25 * nls(2.0)),
    ("sigmoid", 0.5, 0.1, 0.75 * (0.9 * nls(1.0) + 0.1 * nls(-1.0))
     + 0.25 * (0.9 * nls(2.0) + 0.1 * nls(-2.0))),
    ("ipo", 0.5, 0.0, 0.75 * (2 - 1) ** 2 + 0.25 * (4 - 1) ** 2),  # (h - 1/(2 beta))^2 = 3
    ("hinge", 0.2, 0.0, 0.75 * (1 - 0.4) + 0.25 * (1 - 0.8)),  # max(0, 1 - beta h) = 0.5
    ("hinge", 0.5, 0.0, 0.0),  # every margin beyond 1/beta: no loss
])
def test_dpo_loss_by_hand(kind, beta, eps, want):
    loss, m = losses.dpo_loss(jnp.asarray(LOGPS), jnp.asarray(REF), jnp.asarray(PREF), beta,
                              kind, eps)
    assert float(loss) == pytest.approx(want, rel=1e-6, abs=1e-7)
    # TRL's metrics, weighted over pairs like the loss: r_w = beta, beta, beta; r_l = -beta,
    # -beta, -3 beta
    assert float(m["rewards_chosen"]) == pytest.approx(beta)
    assert float(m["rewards_rejected"]) == pytest.approx(-1.5 * beta)
    assert float(m["rewards_margins"]) == pytest.approx(2.5 * beta)
    assert float(m["rewards_accuracies"]) == 1.0
    assert float(m["logps_chosen"]) == pytest.approx(0.5 * -3 + 0.25 * -2 + 0.25 * -2)
    assert float(m["logps_rejected"]) == pytest.approx(0.5 * -5 + 0.25 * -4 + 0.25 * -6)


def test_dpo_loss_gradient_is_the_policys_and_ties_count_as_wrong():
    grad_pol, grad_ref = jax.grad(lambda p, r: losses.dpo_loss(p, r, PREF, 0.1)[0],
                                  argnums=(0, 1))(jnp.asarray(LOGPS), jnp.asarray(REF))
    assert np.all(np.asarray(grad_ref) == 0)
    # d/d logp_w of the pair loss -log s(beta h) is -beta (1 - s(beta h)) < 0: raise chosen
    assert grad_pol[0, 0] < 0 < grad_pol[0, 1] and np.all(np.asarray(grad_pol[2]) == 0)
    same = jnp.asarray(REF)  # policy = reference: rho = 0, loss log 2, no pair won
    loss, m = losses.dpo_loss(same, same, PREF, 0.1)
    assert float(loss) == pytest.approx(math.log(2)) and float(m["rewards_accuracies"]) == 0.0


def test_sequence_logprobs_sum_or_mean_over_the_answer():
    logits = jnp.log(jnp.asarray([[[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]]]))
    targets, mask = jnp.asarray([[0, 1, 0]]), jnp.asarray([[0.0, 1.0, 1.0]])
    want = math.log(0.75) + math.log(0.9)
    assert float(losses.sequence_logprobs(logits, targets, mask)[0]) == pytest.approx(want)
    assert float(losses.sequence_logprobs(logits, targets, mask, average=True)[0]) == \
        pytest.approx(want / 2)


TOK = CharTokenizer.train(TEXT)


def test_encode_masks_only_the_last_answer_and_fits_whole_turns():
    prompt = [{"role": "user", "content": "say abc?"}, {"role": "assistant", "content": "abc"},
              {"role": "user", "content": "say d?"}]
    rec = preferences.from_ranks(prompt, ["d", "zz", "q"], [0, 1, 1])
    e = dpo_data.encode(rec, TOK, 32, 4)
    end = TOK.specials["<|end|>"]
    for k, answer in enumerate(rec.answers):
        on = e["tokens"][k][e["mask"][k] > 0].tolist()
        assert on == TOK.encode(answer) + [end]  # the answer and its end, nothing of the prompt
    assert e["valid"].tolist() == [True, True, True, False]
    assert e["pref"][0, 1] == e["pref"][0, 2] == 1 and e["pref"].sum() == 2
    # A window of 12 tokens keeps the last turn only (the answer needs 3: 'zz' + <|end|>).
    short = dpo_data.encode(rec, TOK, 12, 3)
    n = int(short["mask"][1].argmax())
    assert TOK.decode(short["tokens"][1][:n].tolist()).count("say") == 1
    assert dpo_data.encode(rec, TOK, 2, 3) is None  # no room for the prompt: too long


def rule_data(path, n: int, seed: int = 0) -> str:
    """The planted rule: the chosen answer is made of letters a..m, the rejected one of n..z."""
    rng = np.random.default_rng(seed)
    good, bad = list("abcdefghijklm"), list("nopqrstuvwxyz")
    with open(path, "w") as f:
        for _ in range(n):
            q = "".join(rng.choice(list(TEXT[:26]), size=int(rng.integers(2, 6))))
            k = int(rng.integers(3, 7))
            f.write(json.dumps({"prompt": f"say {q}?", "chosen": "".join(rng.choice(good, k)),
                                "rejected": "".join(rng.choice(bad, k))}) + "\n")
    return str(path)


def test_load_weighs_the_mixture_and_counts_what_it_leaves_out(tmp_path):
    a, b = rule_data(tmp_path / "a.jsonl", 10), rule_data(tmp_path / "b.jsonl", 6, seed=1)
    with open(b, "a") as f:  # a character the char tokenizer lacks, and a too-long answer
        f.write(json.dumps({"prompt": "say a?", "chosen": "ab\u00e9", "rejected": "xy"}) + "\n")
        f.write(json.dumps({"prompt": "say a?", "chosen": "a" * 40, "rejected": "z"}) + "\n")
    data = dpo_data.load("unused", f"{a}:2,{b}", TOK, 24, 0.2)
    assert data.weights == [2.0, 1.0] and data.k_max == 2 and len(data.train) == 2
    assert data.stats[b] == {"records": 8, "train": 5, "val": 1, "not_encodable": 1,
                             "too_long": 1}
    assert len(data.val) == data.stats[a]["val"] + 1


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo_inputs")
    cfg = GPTConfig(vocab_size=TOK.vocab_size, vocab_multiple=8, block_size=32, n_layer=1,
                    n_head=2, n_embd=32)
    params = nn.unbox(GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])
    sft = write_workdir(root / "sft", "sft", TOK, cfg, params)
    return sft, rule_data(root / "pairs.jsonl", 240)


def dpo_config(inputs, steps: int, **overrides):
    config = load_config("dpo")
    config_lib.overrides_from_dict(config, {
        "init_from": inputs[0], "data.mixture": inputs[1], "data.val_fraction": 0.2,
        "train.steps": steps, "train.batch_size": 8, "train.eval_every": steps,
        "train.eval_batches": 2, "train.checkpoint_every": steps, "train.log_every": steps,
        "train.progress": False, "optim.lr": 1e-2, "optim.min_lr": 1e-3,
        "optim.warmup_steps": 0, "optim.decay_steps": steps, **overrides})
    return config


def metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(x) for x in f]


KEYS = ("rewards_chosen", "rewards_rejected", "rewards_margins", "rewards_accuracies",
        "logps_chosen", "logps_rejected")


def test_dpo_learns_a_planted_preference_rule(inputs, tmp_path):
    wd = str(tmp_path / "dpo")
    dpo.run(dpo_config(inputs, 12), wd)
    m = metrics(wd)
    start, last = m[0], m[-1]
    # Step 0 evaluates the SFT policy against itself: rho = 0, loss log 2, no pair won.
    assert start["step"] == 0 and start["val_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert start["val_rewards_accuracies"] == 0.0
    assert last["step"] == 12 and set(KEYS) <= set(last)
    assert {f"val_{k}" for k in KEYS} | {"val_chosen_logp_change"} <= set(last)
    report = json.load(open(os.path.join(wd, dpo.EVAL_FILE)))
    assert report["records"] == report["pairs"] == 48  # 20% of 240 held out, one pair each
    assert report["accuracy"] >= 0.9, report
    assert report["margin"] > 0 and report["logps_rejected"] < report["ref_logps_rejected"]


def test_lora_dpo_training_wte_in_full_keeps_the_sft_reference(inputs, tmp_path):
    """With lora.train=wte the frozen base lacks wte: the per-batch reference must read the SFT
    embedding (step 0 scores the policy against itself: rho = 0, loss log 2 exactly)."""
    wd = str(tmp_path / "lora_wte")
    dpo.run(dpo_config(inputs, 2, **{"lora.rank": 4, "lora.train": "wte"}), wd)
    m = metrics(wd)
    assert m[0]["step"] == 0 and m[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert m[-1]["step"] == 2 and math.isfinite(m[-1]["val_loss"])


def test_lora_dpo_with_precomputed_reference(inputs, tmp_path):
    wd = str(tmp_path / "lora")
    config = dpo_config(inputs, 12, **{"lora.rank": 4, "dpo.reference": "precomputed",
                                       "optim.lr": 5e-2, "optim.min_lr": 5e-3})
    dpo.run(config, wd)
    assert metrics(wd)[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-6)  # B = 0 at start
    report = json.load(open(os.path.join(wd, dpo.EVAL_FILE)))
    assert report["accuracy"] >= 0.9, report
    assert os.path.isfile(os.path.join(wd, dpo.REF_CACHE))
    # The checkpoint holds the adapters alone (rank 4 x in/out of the 4 projections).
    ckpt = Checkpointer(wd)
    saved = ckpt.manager.item_metadata(12)["state"]["params"]
    ckpt.close()
    assert set(saved) == {"lora"} and set(saved["lora"]["h_0"]) == {"attn", "mlp"}
    assert saved["lora"]["h_0"]["mlp"]["c_fc"]["kernel"]["lora_a"].shape == (32, 4)
    # Read back, the workdir is the SFT model with the adapters merged in.
    model, base = workdir_lib.load_host(wd), workdir_lib.load_host(inputs[0])
    assert model.step == 12
    np.testing.assert_array_equal(model.params["wte"]["embedding"],
                                  base.params["wte"]["embedding"])
    assert not np.allclose(model.params["h_0"]["mlp"]["c_fc"]["kernel"],
                           base.params["h_0"]["mlp"]["c_fc"]["kernel"])
    assert workdir_lib.lora_spec(wd) == lora.LoraSpec(4, 16.0, tuple(
        lora.DEFAULT_TARGETS.split(",")), 0.0)
    # --merge-lora writes a plain workdir of that model, which exports to Hugging Face.
    from gptjax import convert
    out, hf = tmp_path / "merged", tmp_path / "hf"
    assert convert.main(["--workdir", wd, "--merge-lora", str(out)]) == 0
    assert workdir_lib.lora_spec(str(out)) is None
    assert not (out / workdir_lib.LORA_BASE_FILE).exists()
    plain = workdir_lib.load_host(str(out))
    assert plain.step == 12
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(model.params)):
        np.testing.assert_array_equal(a, b)
    assert convert.main(["--workdir", str(out), "--to-hf", str(hf)]) == 0
    from safetensors.numpy import load_file
    w = load_file(str(hf / "model.safetensors"))["transformer.h.0.mlp.c_fc.weight"]
    np.testing.assert_array_equal(w, model.params["h_0"]["mlp"]["c_fc"]["kernel"])
    # --to-hf on the LoRA workdir itself exports the same merged weights
    assert convert.main(["--workdir", wd, "--to-hf", str(tmp_path / "hf_direct")]) == 0
    direct = load_file(str(tmp_path / "hf_direct" / "model.safetensors"))
    assert direct.keys() == load_file(str(hf / "model.safetensors")).keys()
    np.testing.assert_array_equal(direct["transformer.h.0.mlp.c_fc.weight"], w)
    with pytest.raises(GptjaxError, match="trained no LoRA adapters"):
        workdir_lib.merge_lora(str(out), str(tmp_path / "again"))


def test_identical_chosen_and_rejected_is_one_line(inputs, tmp_path, capsys, monkeypatch):
    from gptjax import train
    bad = tmp_path / "bad.jsonl"
    bad.write_text(open(inputs[1]).readline() + json.dumps(
        {"prompt": "say a?", "chosen": "abc", "rejected": "abc"}) + "\n")
    with pytest.raises(GptjaxError, match="line 2: two answers are identical"):
        dpo.run(dpo_config(inputs, 1, **{"data.mixture": str(bad)}), str(tmp_path / "run"))
    argv = ["--config", "configs/dpo.py", f"--config.init_from={inputs[0]}",
            f"--config.data.mixture={bad}", "--workdir", str(tmp_path / "cli")]
    monkeypatch.setattr(sys, "argv", ["gptjax.train", *argv])  # config_flags reads sys.argv
    code = train.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "identical" in err[0]
