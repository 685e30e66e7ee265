"""Throughput of the prepare stage on the shipped corpora, and tokens per character.

    python benchmarks/prepare_throughput.py [--corpora english,english-parquet,chinese]
        [--repeats 3] [--out results.json]
    python benchmarks/prepare_throughput.py --corpora none --parquet-mb 200   # memory run

For each corpus the real stage runs once into a fresh temporary workdir
(`gptjax.loops.prepare.run` with the corpus's config file; `english-parquet` is the English
corpus's documents written as one Parquet file, so its row compares reading Parquet with
reading the same documents from JSONL and text), then:
  clean+dedup MB/s  UTF-8 bytes of the raw documents / wall time of the documents pass (read,
                    clean, langid, Gopher filters, exact and MinHash dedup, corpus write);
  tokenize MB/s     UTF-8 bytes of the cleaned corpus / wall time of gptjax's tokenize pass
                    (read the corpus shards, encode, write the token shards), and of
                    `SentencePieceTokenizer.encode_batch` alone, both next to the reference:
                    the sentencepiece library's own `SentencePieceProcessor.encode(texts,
                    num_threads=<cores>)` on the same texts with the same model (best of
                    --repeats; ratio > 1: gptjax is faster);
  tokens per char   on the validation split of the cleaned corpus (EOS not counted), for the
                    trained sentencepiece BPE and for a char tokenizer of the same corpus.

--parquet-mb N writes a Parquet file of N MB (10^6 bytes on disk; distinct documents of
sentences drawn from the shipped English samples, row groups of 1,000 documents, snappy) and
runs `python -m gptjax.prepare` on it in a child process, reporting the child's peak RSS
(getrusage's ru_maxrss), wall time and MB/s; two more children only stream the documents
(`readers.read_documents`) of that file and of one a tenth its size, to show that reading
memory does not grow with the file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing the package

CORPORA = {  # name -> config file (its inputs are the shipped data)
    "english": "configs/prepare_english.py",
    "english-parquet": "configs/prepare_english.py",  # the same documents, as Parquet
    "chinese": "configs/prepare_chinese_classics.py",
}
CORES = len(os.sched_getaffinity(0))
TMP = {"dir": ""}  # a scratch folder for main(), removed at exit
MB = 1e6


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(name: str, repeats: int) -> dict:
    from gptjax.data import pipeline, readers
    from gptjax.data.tokenizer import CharTokenizer, load_tokenizer
    from gptjax.loops import prepare

    config = runpy.run_path(os.path.join(ROOT, CORPORA[name]))["get_config"]()
    p = config.prepare
    if name.endswith("-parquet"):
        p.inputs = (as_parquet(readers.read_documents(readers.expand_inputs(p.inputs),
                                                      p.text_field, p.url_field, p.text_unit),
                               os.path.join(TMP["dir"], f"{name}.parquet")),)
    files = readers.expand_inputs(p.inputs)
    raw_bytes = sum(len(d.text.encode("utf-8")) for d in
                    readers.read_documents(files, p.text_field, p.url_field, p.text_unit))
    with tempfile.TemporaryDirectory() as wd:
        result = prepare.run(config, wd)
        out = result.out_dir
        corpus = os.path.join(out, "corpus")
        texts = {s: [t for _, t in pipeline.corpus_texts(corpus, s, p.num_shards)]
                 for s in ("train", "val")}
        tok = load_tokenizer(os.path.join(out, "tokenizer.json"))
        all_texts = texts["train"] + texts["val"]
        clean_bytes = sum(len(t.encode("utf-8")) for t in all_texts)

        def tokenize_pass():
            with tempfile.TemporaryDirectory() as td:
                pipeline.tokenize_corpus(corpus, td, tok, p.num_shards)
        t_pass = _best(tokenize_pass, repeats)
    t_wrap = _best(lambda: tok.encode_batch(all_texts), repeats)
    t_sp = _best(lambda: tok.sp.encode(all_texts, num_threads=CORES), repeats)
    val = texts["val"]
    n_val = sum(map(len, val))
    char = CharTokenizer.train("".join(all_texts))
    return {
        "corpus": name, "config": CORPORA[name], "files": len(files),
        "raw_mb": raw_bytes / MB, "clean_mb": clean_bytes / MB,
        "documents_in": result.report["input"]["documents"],
        "documents_kept": result.report["output"]["documents"],
        "clean_dedup_s": result.seconds["clean_dedup"],
        "clean_dedup_mb_s": raw_bytes / MB / result.seconds["clean_dedup"],
        "tokenizer_train_s": result.seconds["tokenizer_train"],
        "tokenize_pass_mb_s": clean_bytes / MB / t_pass,
        "encode_batch_mb_s": clean_bytes / MB / t_wrap,
        "sentencepiece_mb_s": clean_bytes / MB / t_sp,
        "vocab_size": tok.vocab_size,
        "sp_tokens_per_char": sum(len(tok.encode(t)) for t in val) / n_val,
        "char_tokens_per_char": sum(len(char.encode(t)) for t in val) / n_val,
        "char_vocab_size": char.vocab_size,
        "val_chars": n_val,
    }


def read_rates(repeats: int) -> dict:
    """MB/s of `readers.read_documents` alone over the English corpus's documents as shipped
    (JSONL + text, gzip) and as one Parquet file, alternated, best of `repeats`."""
    from gptjax.data import readers
    config = runpy.run_path(os.path.join(ROOT, CORPORA["english"]))["get_config"]()
    p = config.prepare
    files = readers.expand_inputs(p.inputs)
    docs = list(readers.read_documents(files, p.text_field, p.url_field, p.text_unit))
    parquet = as_parquet(docs, os.path.join(TMP["dir"], "read_rates.parquet"))
    mb = sum(len(d.text.encode("utf-8")) for d in docs) / MB
    times = {"jsonl_txt_gz": [], "parquet": []}
    for _ in range(repeats):
        for name, fs in (("jsonl_txt_gz", files), ("parquet", [parquet])):
            t = time.perf_counter()
            n = sum(1 for _ in readers.read_documents(fs, p.text_field, p.url_field, p.text_unit))
            times[name].append(time.perf_counter() - t)
            assert n == len(docs)
    return {k: mb / min(v) for k, v in times.items()} | {"mb": mb}


def as_parquet(docs, path: str) -> str:
    """Documents (their text) as one Parquet file with a `text` column."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": [d.text for d in docs]}), path)
    return path


def _sentences() -> list[str]:
    from gptjax.data import readers
    from gptjax.data.lm import embedded_path
    docs = readers.read_documents([embedded_path("c4_demo.jsonl.gz"),
                                   embedded_path("wiki_demo.txt.gz")], text_unit="line")
    return [s for d in docs for s in re.split(r"(?<=[.!?]) +", d.text) if 40 <= len(s) <= 400]


def synthetic_parquet(path: str, megabytes: float, seed: int = 0) -> dict:
    """A Parquet file of about `megabytes` MB: distinct documents of 3-6 paragraphs of 2-5
    sentences drawn at random from the shipped English samples (they pass the filters and no
    two are near-duplicates), in row groups of 1,000 documents."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    pool, rng = _sentences(), random.Random(seed)
    docs = chars = 0
    with pq.ParquetWriter(path, pa.schema([("id", pa.int64()), ("text", pa.string())])) as w:
        while os.path.getsize(path) < megabytes * MB:
            texts = ["\n".join(" ".join(rng.choices(pool, k=rng.randint(2, 5)))
                               for _ in range(rng.randint(3, 6))) for _ in range(1000)]
            w.write_table(pa.table({"id": list(range(docs, docs + 1000)), "text": texts}))
            docs += 1000
            chars += sum(len(t.encode("utf-8")) for t in texts)
    return {"file_mb": os.path.getsize(path) / MB, "documents": docs, "text_mb": chars / MB}


# A forked child's peak RSS starts at its parent's RSS at the fork (Linux keeps the high-water
# mark across exec), so the measured command is forked from this small launcher, not from the
# benchmark process (which holds the corpora and JAX).
LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(f"MAXRSS_KIB {usage.ru_maxrss}", flush=True)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _child(cmd: list[str]) -> tuple[float, float, str]:
    """(wall s, peak RSS MiB, output) of a command (getrusage of the command's process)."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], cwd=ROOT, capture_output=True,
                       text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(r.stdout + r.stderr)[-2000:]}")
    kib = int(re.search(r"MAXRSS_KIB (\d+)", r.stdout).group(1))  # KiB on Linux
    return time.perf_counter() - t, kib / 1024, r.stdout + r.stderr


READ_ONLY = """import sys
from gptjax.data.readers import read_documents
print(sum(len(d.text) for d in read_documents(sys.argv[1:])))
"""


def parquet_memory(megabytes: float, max_sentences: int) -> dict:
    with tempfile.TemporaryDirectory() as td:
        path, tenth = os.path.join(td, "corpus.parquet"), os.path.join(td, "tenth.parquet")
        row = synthetic_parquet(path, megabytes)
        synthetic_parquet(tenth, megabytes / 10, seed=1)
        for name, f in (("tenth", tenth), ("whole", path)):
            wall, rss, _ = _child([sys.executable, "-c", READ_ONLY, f])
            row[f"read_{name}_rss_mib"], row[f"read_{name}_s"] = rss, wall
        wall, rss, out = _child([
            sys.executable, "-m", "gptjax.prepare", "--config", "configs/prepare_english.py",
            "--workdir", os.path.join(td, "run"), f"--config.prepare.inputs=('{path}',)",
            f"--config.prepare.tokenizer.max_sentences={max_sentences}"])
        m = re.search(r"in ([\d.]+)s \(clean\+dedup ([\d.]+)s, tokenizer ([\d.]+)s, tokenize "
                      r"([\d.]+)s\)", out)
        total, clean, tok_s, tokenize_s = map(float, m.groups())
        with open(os.path.join(td, "run", "prepared", "report.json")) as f:
            report = json.load(f)
    return {**row, "prepare_s": wall, "prepare_rss_mib": rss, "stage_s": total,
            "clean_dedup_s": clean, "tokenizer_s": tok_s, "tokenize_s": tokenize_s,
            "max_sentences": max_sentences, "kept": report["output"]["documents"],
            "tokens": report["output"]["tokens"],
            "clean_dedup_mb_s": row["text_mb"] / clean, "file_mb_s": row["file_mb"] / total}


def memory_table(r: dict) -> str:
    return "\n".join([
        "| Parquet file MB | text MB | documents in → kept | prepare wall s (clean+dedup, "
        "tokenizer, tokenize) | file MB/s (whole stage) | clean+dedup text MB/s | peak RSS "
        "prepare | peak RSS reading 1/10 → whole file |",
        "|---:|---:|---:|---|---:|---:|---:|---|",
        f"| {r['file_mb']:.1f} | {r['text_mb']:.1f} | {r['documents']:,} → {r['kept']:,} | "
        f"{r['prepare_s']:.0f} ({r['clean_dedup_s']:.0f}, {r['tokenizer_s']:.0f}, "
        f"{r['tokenize_s']:.0f}) | {r['file_mb_s']:.2f} | {r['clean_dedup_mb_s']:.2f} | "
        f"{r['prepare_rss_mib']:.0f} MiB | {r['read_tenth_rss_mib']:.0f} → "
        f"{r['read_whole_rss_mib']:.0f} MiB |"])


def table(rows: list[dict]) -> str:
    out = ["| corpus | raw MB | docs in → kept | clean+dedup MB/s | tokenize pass MB/s | "
           "encode_batch MB/s | sentencepiece encode MB/s | pass / sp | encode_batch / sp |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {r['corpus']} | {r['raw_mb']:.2f} | {r['documents_in']:,} → "
            f"{r['documents_kept']:,} | {r['clean_dedup_mb_s']:.2f} | "
            f"{r['tokenize_pass_mb_s']:.2f} | {r['encode_batch_mb_s']:.2f} | "
            f"{r['sentencepiece_mb_s']:.2f} | "
            f"{r['tokenize_pass_mb_s'] / r['sentencepiece_mb_s']:.2f} | "
            f"{r['encode_batch_mb_s'] / r['sentencepiece_mb_s']:.2f} |")
    out += ["", "| corpus | sentencepiece BPE vocab | tokens/char | char vocab | tokens/char | "
            "BPE / char |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['corpus']} (validation split, {r['val_chars']:,} chars) | "
                   f"{r['vocab_size']:,} | {r['sp_tokens_per_char']:.3f} | "
                   f"{r['char_vocab_size']:,} | {r['char_tokens_per_char']:.3f} | "
                   f"{r['sp_tokens_per_char'] / r['char_tokens_per_char']:.2f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpora", default=",".join(CORPORA))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="")
    ap.add_argument("--parquet-mb", type=float, default=0,
                    help="also prepare a synthetic Parquet file of this many MB (peak memory)")
    ap.add_argument("--max-sentences", type=int, default=200_000,
                    help="prepare.tokenizer.max_sentences of the --parquet-mb run")
    args = ap.parse_args()
    rows = []
    for name in filter(lambda n: n != "none", args.corpora.split(",")):
        try:
            rows.append(measure(name, args.repeats))
        except Exception as e:  # e.g. ../shared/data absent for the Chinese corpus
            print(f"skipping {name}: {type(e).__name__}: {e}", file=sys.stderr)
    print(f"\n## prepare throughput ({CORES} cores; MB = 10^6 bytes of UTF-8 text)\n")
    print(table(rows))
    print("\nclean+dedup: read + clean + langid + Gopher rules + exact and MinHash dedup + "
          "corpus write, single-threaded; tokenize pass: corpus read + encode + shard write; "
          f"sentencepiece encode: SentencePieceProcessor.encode(texts, num_threads={CORES}).")
    if any(n.endswith("-parquet") for n in args.corpora.split(",")):
        r = read_rates(max(args.repeats, 5))
        print(f"\nreading alone ({r['mb']:.2f} MB, best of {max(args.repeats, 5)}, alternated): "
              f"JSONL + text (gzip) {r['jsonl_txt_gz']:.1f} MB/s, Parquet {r['parquet']:.1f} "
              f"MB/s ({r['parquet'] / r['jsonl_txt_gz']:.2f}x)")
        rows.append({"corpus": "read_rates", **r})
    if args.parquet_mb:
        mem = parquet_memory(args.parquet_mb, args.max_sentences)
        print(f"\n## a {mem['file_mb']:.0f} MB Parquet file through `python -m gptjax.prepare` "
              f"(configs/prepare_english.py, tokenizer.max_sentences={args.max_sentences:,})\n")
        print(memory_table(mem))
        rows.append({"corpus": "parquet_memory", **mem})
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    TMP["dir"] = tempfile.mkdtemp(prefix="prepare_throughput_")
    try:
        main()
    finally:
        shutil.rmtree(TMP["dir"], ignore_errors=True)
