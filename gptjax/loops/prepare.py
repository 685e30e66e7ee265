"""Stage `prepare`: raw text -> cleaned corpus, report, tokenizer, token shards. `run(config,
workdir)`.

Outputs, all under `<workdir>/prepared/`:
  corpus/{train,val}-*.jsonl    the cleaned, filtered, deduplicated documents
  tokenizer.json                the trained tokenizer (sentencepiece model embedded)
  tokens/{train,val}-*.bin      token shards, tokens/meta.json (read by pretraining through
                                `data.prepared_dir=<workdir>`)
  report.json, length_histogram.png
  meta.json                     the reuse key (written last: its presence marks a finished run)

A run works in `<workdir>/.prepare-tmp/` and only a finished run replaces `prepared/`, so a run
that fails (bad input, Ctrl-C) leaves the previous outputs as they were. The reuse key is the
sha256 of every input file's content plus the `prepare` config section: a rerun with the same
key returns the existing outputs without redoing any work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Any

import ml_collections

from gptjax import config as config_lib
from gptjax.data import pipeline, readers, report as report_lib
from gptjax.data.filters import load_blocklist
from gptjax.data.shards import PREPARED, finished_key, write_meta
from gptjax.data.tokenizer import save_tokenizer
from gptjax.errors import GptjaxError

PIPELINE_VERSION = 1  # bump when a change makes old outputs stale for the same config
OUT, TMP, OLD = PREPARED, ".prepare-tmp", ".prepare-old"


@dataclasses.dataclass
class PrepareResult:
    out_dir: str
    report: dict[str, Any]
    reused: bool
    seconds: dict[str, float]
    interrupted_by: int | None = None  # the train entry point's contract


def _file_digest(path: str) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def input_key(files: list[str], prepare: ml_collections.ConfigDict) -> str:
    """sha256 over the pipeline version, the prepare config section and the bytes of each input
    file and of the URL blocklist. Paths are left out (the contents are what count), so moved
    or copied data is still recognised."""
    section = json.loads(config_lib.to_json(prepare))
    section.pop("inputs")
    blocklist = section["filters"].pop("url_blocklist")
    h = hashlib.sha256(json.dumps({"version": PIPELINE_VERSION, "prepare": section},
                                  sort_keys=True).encode())
    for path in files + ([blocklist] if blocklist else []):
        h.update(_file_digest(path))
    return h.hexdigest()


def _recover(workdir: str) -> None:
    """Finish an interrupted swap: if prepared/ is gone but the old copy exists, restore it."""
    out, old = os.path.join(workdir, OUT), os.path.join(workdir, OLD)
    if not os.path.exists(out) and os.path.exists(old):
        os.replace(old, out)
    shutil.rmtree(old, ignore_errors=True)


def run(config: ml_collections.ConfigDict, workdir: str) -> PrepareResult:
    p = config.prepare
    config_lib.validate_prepare(p)
    files = readers.expand_inputs(p.inputs)
    load_blocklist(p.filters.url_blocklist)  # a missing blocklist fails before any work
    os.makedirs(workdir, exist_ok=True)
    _recover(workdir)
    out = os.path.join(workdir, OUT)
    t0 = time.perf_counter()
    key = input_key(files, p)
    if finished_key(out) == key:
        with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
            rep = json.load(f)
        print(f"gptjax prepare: inputs and config unchanged; reusing {out}", flush=True)
        return PrepareResult(out, rep, True, {"hash": time.perf_counter() - t0})

    tmp = os.path.join(workdir, TMP)
    shutil.rmtree(tmp, ignore_errors=True)
    corpus_dir, tokens_dir = os.path.join(tmp, "corpus"), os.path.join(tmp, "tokens")
    os.makedirs(corpus_dir)
    os.makedirs(tokens_dir)
    seconds = {"hash": time.perf_counter() - t0}
    try:
        rep = report_lib.Report()
        stats = readers.ReadStats()
        docs = readers.read_documents(files, p.text_field, p.url_field, p.text_unit, stats)
        t = time.perf_counter()
        kept = pipeline.filter_documents(docs, p, rep)
        pipeline.write_corpus(kept, corpus_dir, p.val_fraction, p.num_shards, rep)
        seconds["clean_dedup"] = time.perf_counter() - t
        rep.input.update(dataclasses.asdict(stats))
        _check_counts(rep, files)

        t = time.perf_counter()
        tok = pipeline.train_tokenizer(corpus_dir, p.tokenizer, p.num_shards)
        save_tokenizer(tok, os.path.join(tmp, "tokenizer.json"))
        seconds["tokenizer_train"] = time.perf_counter() - t

        t = time.perf_counter()
        meta = pipeline.tokenize_corpus(corpus_dir, tokens_dir, tok, p.num_shards)
        seconds["tokenize"] = time.perf_counter() - t
        write_meta(tokens_dir, meta)
        rep.output.update(tokens=meta["tokens"], vocab_size=tok.vocab_size)
        rep.extra["tokenizer"] = {
            "kind": tok.kind, "vocab_size": tok.vocab_size,
            # EOS after each document counts: these are the tokens a model trains on
            "tokens_per_char": round(meta["tokens"] / max(meta["characters"], 1), 4)}
        report = rep.to_dict()
        report_lib.write_json(report, os.path.join(tmp, "report.json"))
        report_lib.plot_lengths(report, os.path.join(tmp, "length_histogram.png"))
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({"key": key, "files": files, "version": PIPELINE_VERSION}, f, indent=1)
            f.write("\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous outputs stay untouched
        raise
    _swap(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config_lib.to_json(config))
    seconds["total"] = time.perf_counter() - t0
    for line in report_lib.summary_lines(report):
        print(line, flush=True)
    print(f"gptjax prepare: wrote {out} in {seconds['total']:.1f}s "
          f"(clean+dedup {seconds['clean_dedup']:.1f}s, tokenizer "
          f"{seconds['tokenizer_train']:.1f}s, tokenize {seconds['tokenize']:.1f}s)", flush=True)
    return PrepareResult(out, report, False, seconds)


def _check_counts(rep: report_lib.Report, files: list[str]) -> None:
    if not rep.input["documents"]:
        raise GptjaxError(f"the inputs ({len(files)} files: {', '.join(files[:3])}"
                          f"{', ...' if len(files) > 3 else ''}) hold no documents: is the "
                          "corpus empty?")
    if not rep.output["documents"]:
        top = sorted(rep.removed.items(), key=lambda kv: -kv[1]["documents"])[:3]
        reasons = ", ".join(f"{k}: {v['documents']}" for k, v in top)
        raise GptjaxError(f"every one of the {rep.input['documents']} documents was removed "
                          f"({reasons}); relax those filters in prepare.* (or switch them off)")
    if not rep.output["val_documents"] or not rep.output["train_documents"]:
        raise GptjaxError(f"only {rep.output['documents']} documents survive cleaning: too few "
                          "for both a train and a validation split; raise prepare.val_fraction "
                          "or give more text")


def _swap(workdir: str) -> None:
    out, tmp, old = (os.path.join(workdir, n) for n in (OUT, TMP, OLD))
    if os.path.exists(out):
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
