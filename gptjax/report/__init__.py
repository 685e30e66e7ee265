"""The pipeline report: report.json (every number), report/*.png (figures), report.md and
report.html (the same content, the HTML with its images embedded), all from the run's files.

`write(workdir)` rewrites them from scratch; it trains and samples nothing, so it can be rerun
at any time: `python -c "from gptjax.report import write; write('runs/chatgpt')"`.
"""

from __future__ import annotations

import json
import os

from gptjax import workdir as workdir_lib
from gptjax.report import content, plots, render
from gptjax.report.collect import collect

REPORT_JSON, REPORT_MD, REPORT_HTML, FIGURES = "report.json", "report.md", "report.html", "report"


def write(workdir: str, answers: int | None = None) -> str:
    """Write the report of a pipeline workdir; returns report.md's path."""
    rep = collect(workdir)
    if answers is None:
        answers = int(workdir_lib.run_config(workdir).get("report", {}).get("answers", 4))
    fig_dir = os.path.join(workdir, FIGURES)
    os.makedirs(fig_dir, exist_ok=True)
    stages = [(s["name"], s["kind"]) for s in rep["stages"]]
    made = {
        "wall_time": plots.wall_time(rep["stages"], os.path.join(fig_dir, "wall_time.png")),
        "prepare": plots.prepare(rep["prepare"], os.path.join(fig_dir, "prepare.png")),
        "losses": plots.losses(workdir, stages, os.path.join(fig_dir, "losses.png")),
        "reward_accuracy": plots.reward_accuracy(rep["reward_models"],
                                                 os.path.join(fig_dir, "reward_accuracy.png")),
        "win_rates": plots.win_rates(rep["win_rates"], os.path.join(fig_dir, "win_rates.png")),
    }
    for name in rep["ppo"]:
        made[f"ppo_{name}"] = plots.ppo(workdir, name, os.path.join(fig_dir, f"ppo_{name}.png"))
    figs = {k: v for k, v in made.items() if v is not None}
    blocks = content.blocks(rep, figs, answers)
    workdir_lib.write_json(workdir, REPORT_JSON, rep)
    md = os.path.join(workdir, REPORT_MD)
    _write_text(md, render.markdown(blocks, workdir))
    _write_text(os.path.join(workdir, REPORT_HTML),
                render.to_html(blocks, f"{rep['pipeline'] or 'pipeline'} report"))
    return md


def _write_text(path: str, text: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def results(workdir: str) -> dict:
    """report.json without the times (what two runs of the same pipeline agree on)."""
    with open(os.path.join(workdir, REPORT_JSON)) as f:
        rep = json.load(f)
    return _drop_times(rep)


def _drop_times(x):
    from gptjax.report.collect import TIMES
    if isinstance(x, dict):
        return {k: _drop_times(v) for k, v in x.items() if k not in TIMES}
    if isinstance(x, list):
        return [_drop_times(v) for v in x]
    return x
