"""The one-command pipeline (configs/chatgpt_tiny.py, made small by tests/pipeline_small.py)
through the CLI: every stage in its folder, the report with every figure and table filled, a run
killed by SIGKILL during SFT resuming to the same numbers, a changed stage redone with the ones
after it, and the bad-input cases. (tests/test_notebook.py chats with the pipeline's workdir.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_cli

import pipeline_small as small
from gptjax import train
from gptjax.report.collect import collect, metrics

pytestmark = pytest.mark.slow
STAGES = ["prepare", "pretrain", "sft", "reward", "judge", "ppo", "eval_sft", "eval_ppo"]
FIGURES = {"wall_time.png", "prepare.png", "losses.png", "reward_accuracy.png", "ppo_ppo.png",
           "win_rates.png"}


def args(cache: str) -> tuple[str, ...]:
    """The small pipeline's command (conftest's small_pipeline ran it), with its compile cache."""
    return ("gptjax.train", "--config", small.CONFIG, *small.flags(compile_cache=cache))


def _env():
    return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"PYTHONUNBUFFERED": "1"}


def test_every_stage_runs_in_its_folder_and_the_report_is_filled(small_pipeline):
    wd, err, _ = small_pipeline
    for i, name in enumerate(STAGES, 1):
        assert f"gptjax pipeline: stage {i} of {len(STAGES)}: {name}" in err
        mark = json.load(open(os.path.join(wd, name, "pipeline_stage.json")))
        assert mark["done"] and mark["seconds"] > 0
    assert set(os.listdir(os.path.join(wd, "report"))) == FIGURES
    rep = json.load(open(os.path.join(wd, "report.json")))
    prep = rep["prepare"]["prepare"]
    assert prep["tokens"] > 0 and prep["vocab_size"] == 512 and prep["removed"]
    assert {n for n in rep["training"]} == {"pretrain", "sft", "reward", "judge", "ppo"}
    assert rep["reward_models"]["reward"]["optimised_by"] == "ppo"
    assert rep["reward_models"]["judge"]["judge_of"] in ("eval_sft", "eval_ppo")
    assert rep["reward_models"]["judge"]["optimised_by"] is None  # an independent judge
    assert {n: (w["a"], w["b"], w["judge"]) for n, w in rep["win_rates"].items()} == {
        "eval_sft": ("sft", "pretrain", "judge"), "eval_ppo": ("ppo", "sft", "judge")}
    for w in rep["win_rates"].values():
        # (of the first 8 held-out prompts, those that fit the 64-token context beside 8 new)
        assert w["ci_low"] <= w["win_rate"] <= w["ci_high"] and 3 <= w["prompts"] <= 8
        n = w["length_matched_comparisons"]  # the eval's length-matched pairs, read through
        assert (w["length_matched_win_rate"] is None) == (n == 0) and 0 <= n <= 8
    ppo = rep["ppo"]["ppo"]
    for key in ("score", "kl", "beta", "response_length", "ptx_loss"):
        assert ppo[f"last_{key}"] is not None, key
    assert len(rep["answers"]) == 4 and all({"pretrain", "sft", "ppo"} <= set(a)
                                            for a in rep["answers"])
    md = open(os.path.join(wd, "report.md"), encoding="utf-8").read()
    for heading in ("Stages and wall time", "Data and tokenizer", "Training curves",
                    "Reward models", "PPO (ppo", "Win rates", "The same held-out prompts"):
        assert f"## {heading}" in md, heading
    for png in FIGURES:
        assert f"(report/{png})" in md
    html = open(os.path.join(wd, "report.html"), encoding="utf-8").read()
    assert html.count("src='data:image/png;base64,") == len(FIGURES)


def _kill_when(proc: subprocess.Popen, path: str, timeout: float = 600) -> None:
    t0 = time.time()
    while not os.path.isdir(path):
        assert proc.poll() is None, "the pipeline ended before the checkpoint to kill it at"
        assert time.time() - t0 < timeout, f"no {path} after {timeout} s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_killed_during_sft_resumes_there_and_reports_the_same_numbers(small_pipeline, tmp_path):
    """The same pipeline's first three stages (so the test does not rerun the rest): prepare and
    pretrain as a first run left them, SFT killed by SIGKILL after a checkpoint, then resumed."""
    wd_ref, _, cache = small_pipeline
    wd = str(tmp_path / "chatgpt")
    os.makedirs(wd)
    for name in ("prepare", "pretrain"):  # finished stages, as a first run would have left them
        shutil.copytree(os.path.join(wd_ref, name), os.path.join(wd, name))
    cmd = (*args(cache), "--workdir", wd, "--config.order=('prepare','pretrain','sft')",
           "--config.report.enabled=False")
    proc = subprocess.Popen([sys.executable, "-m", *cmd], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, os.path.join(wd, "sft", "checkpoints", "10"))
    assert proc.returncode == -signal.SIGKILL
    assert not json.load(open(os.path.join(wd, "sft", "pipeline_stage.json")))["done"]
    r = run_cli(*cmd, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stage 2 of 3: pretrain: done earlier" in r.stderr
    assert "stage 3 of 3: sft (sft) in" in r.stderr and "(resuming)" in r.stderr
    assert re.search(r"gptjax sft: .*resumed at step (10|20|30)", r.stderr)
    assert json.load(open(os.path.join(wd, "sft", "pipeline_stage.json")))["done"]

    def losses(root):
        return {r["step"]: (r.get("loss"), r.get("val_loss"))
                for r in metrics(os.path.join(root, "sft"))}
    assert losses(wd) == losses(wd_ref)  # the same losses, step by step
    assert collect(wd)["training"]["sft"] == collect(wd_ref)["training"]["sft"]


def _copy(wd_ref, tmp_path) -> str:
    wd = str(tmp_path / "copy")
    shutil.copytree(wd_ref, wd)
    return wd


def test_another_pipeline_in_the_workdir_is_refused_and_nothing_is_written(small_pipeline,
                                                                           tmp_path):
    wd_ref, _, cache = small_pipeline
    wd = str(tmp_path / "other")
    os.makedirs(wd)
    shutil.copy(os.path.join(wd_ref, "config.json"), wd)
    before = open(os.path.join(wd, "config.json")).read()
    r = run_cli(*args(cache), "--workdir", wd, "--config.name=chatgpt_other",
                "--config.order=('prepare','pretrain')", timeout=120)
    assert r.returncode == 2
    assert r.stderr.count("gptjax: error:") == 1 and "Traceback" not in r.stderr
    assert "holds another pipeline" in r.stderr and "name 'chatgpt_tiny' there" in r.stderr
    assert "order" in r.stderr
    assert os.listdir(wd) == ["config.json"]
    assert open(os.path.join(wd, "config.json")).read() == before


def test_a_changed_stage_is_redone_with_the_stages_after_it(small_pipeline, tmp_path):
    wd = _copy(small_pipeline[0], tmp_path)
    r = run_cli(*args(small_pipeline[2]), "--workdir", wd,
                "--config.stages.eval_sft.eval.win_rate.max_prompts=2", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [x for x in r.stderr.splitlines() if "config changed" in x]
    assert len(lines) == 1, r.stderr
    assert "stage eval_sft's config changed" in lines[0] and "max_prompts: 8 -> 2" in lines[0]
    assert "redoing eval_sft and the 1 stages after it (eval_ppo)" in lines[0]
    for i, name in enumerate(STAGES[:-2], 1):
        assert f"stage {i} of 8: {name}: done earlier" in r.stderr
    assert "stage 7 of 8: eval_sft (eval) in" in r.stderr
    assert "stage 8 of 8: eval_ppo (eval) in" in r.stderr
    assert sorted(os.listdir(os.path.join(wd, "superseded"))) == ["eval_ppo", "eval_sft"]
    rates = json.load(open(os.path.join(wd, "report.json")))["win_rates"]
    before = json.load(open(os.path.join(small_pipeline[0], "report.json")))["win_rates"]
    assert rates["eval_sft"]["prompts"] <= 2 < before["eval_sft"]["prompts"]
    assert rates["eval_ppo"] == before["eval_ppo"]  # redone, and the same


def _mount_tmpfs(path, options):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


@pytest.mark.parametrize("options, cause", [("ro,size=1m", "Read-only file system"),
                                            ("size=64k", "No space left on device")])
def test_a_read_only_or_full_workdir_is_one_line(small_pipeline, tmp_path, options, cause):
    mnt = tmp_path / "disk"
    _mount_tmpfs(mnt, options)
    try:
        r = run_cli(*args(small_pipeline[2]), "--workdir", str(mnt / "chatgpt"), timeout=300)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [x for x in r.stderr.splitlines() if x.startswith("gptjax: error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert cause in errors[0] and "rerun the same command" in errors[0]
    assert str(mnt) in errors[0]  # where it could not write


@pytest.mark.parametrize("extra, words", [
    (("--config.order=('prepare','pretrain','nosuch')",),
     "order names stage 'nosuch', which has no config"),
    (("--config.stages.sft.stage=dpo_nope",), "stages.sft.stage='dpo_nope': a pipeline stage is"),
    (("--config.stages.sft.init_from=@ppo",), "'ppo' is not a stage before 'sft'"),
])
def test_an_unknown_stage_is_one_line_and_writes_nothing(tmp_path, capsys, extra, words):
    wd = tmp_path / "chatgpt"  # (in this process: the checks come before any device is set up)
    assert train.main(["--config", small.CONFIG, "--workdir", str(wd), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("gptjax: error:") == 1 and "Traceback" not in err
    assert words in err
    assert not wd.exists()


def test_a_workdir_of_a_single_stage_run_is_refused(tmp_path, capsys):
    wd = tmp_path / "sft_run"
    wd.mkdir()
    (wd / "config.json").write_text(json.dumps({"stage": "sft"}))
    assert train.main(["--config", small.CONFIG, "--workdir", str(wd)]) == 2
    err = capsys.readouterr().err
    assert err.count("gptjax: error:") == 1 and "Traceback" not in err
    assert "holds a 'sft' run" in err and "not a pipeline" in err
    assert sorted(os.listdir(wd)) == ["config.json"]
