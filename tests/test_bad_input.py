"""Every command answers bad input with one line naming it and exit code 2, never a traceback.

Table-driven, in-process: each case calls the command's `main(argv)` (the function the
`python -m` entry runs) and reads what reached the file descriptors. A few cases run as real
subprocesses too. The cases share one tiny trained workdir (conftest `trained`, copied where a
case could write into it); all of them fail before any training step.
"""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import run_cli

from gptjax import chat, convert, prepare, sample, train, verify

TINY = ("--config", "configs/tiny.py", "--config.train.progress=False")
SFT = (*TINY, "--config.stage=sft")
PREP = ("--config", "configs/prepare_english.py")

# (id, command, argv, what the one line must name); {name} = a path from the `paths` fixture.
CASES = [
    # train: config file, flags, keys, types, counts
    ("config-missing", train, ["--config", "configs/nope.py"], "configs/nope.py"),
    ("config-is-dir", train, ["--config", "configs"], "configs"),
    ("config-required", train, ["--workdir", "{work}"], "--config"),
    ("unknown-flag", train, [*TINY, "--bogus=1"], "bogus"),
    ("unknown-key", train, [*TINY, "--config.model.n_layr=3"], "n_layr"),
    ("wrong-type-int", train, [*TINY, "--config.model.n_layer=two"], "two"),
    ("wrong-type-bool", train, [*TINY, "--config.train.async_checkpoint=maybe"], "maybe"),
    ("wrong-type-float", train, [*TINY, "--config.optim.lr=fast"], "fast"),
    ("unknown-stage", train, [*TINY, "--config.stage=pretrian"], "pretrian"),
    ("steps-negative", train, [*TINY, "--config.train.steps=-5"], "train.steps=-5"),
    ("steps-zero", train, [*TINY, "--config.train.steps=0"], "train.steps=0"),
    ("batch-zero", train, [*TINY, "--config.train.batch_size=0"], "train.batch_size=0"),
    ("log-every-zero", train, [*TINY, "--config.train.log_every=0"], "train.log_every=0"),
    ("eval-every-zero", train, [*TINY, "--config.train.eval_every=0"], "train.eval_every=0"),
    ("checkpoint-every-zero", train, [*TINY, "--config.train.checkpoint_every=0"],
     "train.checkpoint_every=0"),
    ("keep-zero", train, [*TINY, "--config.train.keep_checkpoints=0"],
     "train.keep_checkpoints=0"),
    ("eval-batches-negative", train, [*TINY, "--config.train.eval_batches=-1"],
     "train.eval_batches=-1"),
    ("lr-negative", train, [*TINY, "--config.optim.lr=-0.1"], "optim.lr=-0.1"),
    ("layers-zero", train, [*TINY, "--config.model.n_layer=0"], "model.n_layer=0"),
    ("resume-unknown", train, [*TINY, "--config.train.resume=oldest"], "oldest"),
    ("seq-too-long", train, [*TINY, "--config.data.seq_len=64"], "data.seq_len=64"),
    # train: workdir
    ("workdir-is-file", train, [*TINY, "--workdir", "{file}"], "{file}"),
    ("workdir-other-stage", train, [*SFT, "--config.init_from={trained}", "--workdir", "{copy}"],
     "{copy}"),
    ("workdir-other-shape", train, [*TINY, "--config.model.n_embd=32", "--workdir", "{copy}"],
     "model.n_embd=64"),
    # train: data
    ("text-is-dir", train, [*TINY, "--config.data.text_path={dir}", "--workdir", "{work}"],
     "{dir}"),
    ("text-missing", train, [*TINY, "--config.data.text_path={missing}", "--workdir", "{work}"],
     "{missing}"),
    ("text-empty", train, [*TINY, "--config.data.text_path={empty}", "--workdir", "{work}"],
     "{empty}"),
    ("text-not-utf8", train, [*TINY, "--config.data.text_path={latin}", "--workdir", "{work}"],
     "{latin}"),
    ("prepared-dir-missing", train,
     [*TINY, "--config.data.prepared_dir={missing}", "--workdir", "{work}"], "{missing}"),
    ("mesh-does-not-fit", train, [*TINY, "--config.mesh.data=16", "--workdir", "{work}"],
     "16 devices"),
    # fine-tuning stages
    ("sft-no-init", train, [*SFT, "--workdir", "{work}"], "init_from"),
    ("sft-init-is-file", train, [*SFT, "--config.init_from={file}", "--workdir", "{work}"],
     "{file}"),
    ("sft-init-is-reward", train, [*SFT, "--config.init_from={reward}", "--workdir", "{work}"],
     "{reward}"),
    ("sft-root-missing", train,
     [*SFT, "--config.init_from={trained}", "--config.data.root={missing}",
      "--config.data.mixture=gsm8k", "--workdir", "{work}"], "{missing}"),
    ("reward-jsonl-not-utf8", train,
     [*TINY, "--config.stage=reward", "--config.init_from={trained}",
      "--config.data.mixture={latin_jsonl}", "--workdir", "{work}"], "{latin_jsonl}"),
    ("reward-jsonl-missing", train,
     [*TINY, "--config.stage=reward", "--config.init_from={trained}",
      "--config.data.mixture={missing}.jsonl", "--workdir", "{work}"], "{missing}.jsonl"),
    ("ppo-no-reward-from", train, ["--config", "configs/ppo.py", "--config.train.progress=False",
                                   "--config.init_from={trained}", "--workdir", "{work}"],
     "reward_from"),
    # prepare
    ("prepare-config-missing", prepare, ["--config", "configs/nope.py"], "configs/nope.py"),
    ("prepare-wrong-stage", prepare, [*TINY, "--workdir", "{work}"], "'pretrain'"),
    ("prepare-workdir-is-file", prepare, [*PREP, "--workdir", "{file}"], "{file}"),
    ("prepare-input-missing", prepare,
     [*PREP, "--config.prepare.inputs=('{missing}',)", "--workdir", "{work}"], "{missing}"),
    ("prepare-input-empty", prepare,
     [*PREP, "--config.prepare.inputs=('{empty}',)", "--workdir", "{work}"], "{empty}"),
    ("prepare-shards-zero", prepare,
     [*PREP, "--config.prepare.num_shards=0", "--workdir", "{work}"], "num_shards=0"),
    # sample
    ("sample-workdir-missing", sample, ["--workdir", "{missing}", "--prompt", "hi"], "{missing}"),
    ("sample-workdir-is-file", sample, ["--workdir", "{file}", "--prompt", "hi"], "{file}"),
    ("sample-workdir-not-gptjax", sample, ["--workdir", "{dir}", "--prompt", "hi"], "{dir}"),
    ("sample-workdir-is-reward", sample, ["--workdir", "{reward}", "--prompt", "hi"], "{reward}"),
    ("sample-no-prompt", sample, ["--workdir", "{trained}"], "--prompt"),
    ("sample-empty-prompt", sample, ["--workdir", "{trained}", "--prompt", ""], "--prompt"),
    ("sample-bad-int", sample, ["--workdir", "{trained}", "--prompt", "hi", "--num_samples", "x"],
     "'x'"),
    ("sample-zero-samples", sample,
     ["--workdir", "{trained}", "--prompt", "hi", "--num_samples", "0"], "--num_samples 0"),
    ("sample-negative-temperature", sample,
     ["--workdir", "{trained}", "--prompt", "hi", "--temperature", "-1"], "--temperature -1"),
    ("sample-top-p", sample, ["--workdir", "{trained}", "--prompt", "hi", "--top_p", "2"],
     "--top_p 2"),
    ("sample-unknown-character", sample, ["--workdir", "{trained}", "--prompt", "日本"], "日"),
    # chat
    ("chat-workdir-is-file", chat, ["--workdir", "{file}"], "{file}"),
    ("chat-workdir-is-reward", chat, ["--workdir", "{reward}"], "{reward}"),
    ("chat-reply-too-long", chat, ["--workdir", "{trained}", "--max_new_tokens", "999"], "999"),
    ("chat-negative-top-k", chat, ["--workdir", "{trained}", "--top_k", "-2"], "--top_k -2"),
    # convert
    ("convert-no-direction", convert, ["--workdir", "{work}"], "--from-hf"),
    ("convert-hf-missing", convert, ["--from-hf", "{missing}", "--workdir", "{work}"],
     "{missing}"),
    ("convert-hf-no-weights", convert, ["--from-hf", "{hf}", "--workdir", "{work}"],
     "model.safetensors"),
    ("convert-hf-wrong-type", convert, ["--from-hf", "{hf_bad}", "--workdir", "{work}"],
     "n_embd"),
    ("convert-into-file", convert, ["--from-hf", "{hf}", "--workdir", "{file}"], "{file}"),
    ("convert-to-file", convert, ["--workdir", "{trained}", "--to-hf", "{file}"], "{file}"),
    ("convert-from-missing", convert, ["--workdir", "{missing}", "--to-hf", "{work}"],
     "{missing}"),
    ("convert-from-reward", convert, ["--workdir", "{reward}", "--to-hf", "{work}"], "{reward}"),
    # verify
    ("verify-no-workdir", verify, [], "--workdir"),
    ("verify-workdir-missing", verify, ["--workdir", "{missing}"], "{missing}"),
    ("verify-workdir-is-file", verify, ["--workdir", "{file}"], "{file}"),
    ("verify-no-checkpoints", verify, ["--workdir", "{dir}"], "{dir}"),
]


@pytest.fixture(scope="module")
def paths(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    (root / "afile.txt").write_text("not a folder\n")
    (root / "adir").mkdir()
    (root / "empty.txt").write_bytes(b"")
    (root / "latin1.txt").write_bytes("café au lait\n".encode("latin-1") * 10)
    (root / "latin1.jsonl").write_bytes(
        json.dumps({"prompt": "x", "chosen": "a", "rejected": "b"}).encode() + b"\n"
        + '{"prompt": "café"}\n'.encode("latin-1"))
    gpt2 = {"model_type": "gpt2", "n_embd": 32, "n_head": 4, "n_layer": 2, "vocab_size": 100,
            "n_positions": 32}
    (root / "hf").mkdir()
    (root / "hf" / "config.json").write_text(json.dumps(gpt2))
    (root / "hf_bad").mkdir()
    (root / "hf_bad" / "config.json").write_text(json.dumps({**gpt2, "n_embd": "wide"}))
    # A reward stage's workdir, as far as its config.json tells (no command reads further).
    (root / "reward").mkdir()
    config = json.loads(open(f"{trained}/config.json").read())
    (root / "reward" / "config.json").write_text(json.dumps({**config, "stage": "reward"}))
    shutil.copy(f"{trained}/tokenizer.json", root / "reward")
    shutil.copytree(trained, root / "copy")
    return {"trained": trained, "copy": str(root / "copy"), "file": str(root / "afile.txt"),
            "dir": str(root / "adir"), "empty": str(root / "empty.txt"),
            "latin": str(root / "latin1.txt"), "latin_jsonl": str(root / "latin1.jsonl"),
            "missing": str(root / "not_there"), "hf": str(root / "hf"),
            "hf_bad": str(root / "hf_bad"), "reward": str(root / "reward")}


@pytest.mark.parametrize("command, argv, needle", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(command, argv, needle, paths, tmp_path, capfd):
    values = {**paths, "work": str(tmp_path / "work")}
    if command in (train, prepare) and "--workdir" not in argv:
        argv = [*argv, "--workdir", "{work}"]  # (never the default runs/<config name>)
    argv = [a.format(**values) for a in argv]
    needle = needle.format(**values)
    rc = command.main(argv)
    out, err = capfd.readouterr()
    assert rc == 2, (rc, err[-2000:])
    assert "Traceback" not in out + err, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gptjax: error: "), err[-3000:]
    assert needle in lines[0], lines[0]


def test_the_copied_workdir_was_not_touched(paths, trained):
    """The cases that point at a copy of the trained workdir refused it before writing."""
    assert open(f"{paths['copy']}/config.json").read() == open(f"{trained}/config.json").read()


@pytest.mark.parametrize("argv, needle", [
    (("gptjax.train", "--config", "configs/nope.py"), "configs/nope.py"),
    (("gptjax.sample", "--workdir", "{file}", "--prompt", "hi"), "{file}"),
], ids=["train-config-missing", "sample-workdir-is-file"])
def test_bad_input_through_python_m(argv, needle, paths):
    argv = [a.format(**paths) for a in argv]
    r = run_cli(*argv)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle.format(**paths) in lines[0], r.stderr
