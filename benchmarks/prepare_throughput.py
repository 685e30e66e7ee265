"""Throughput of the prepare stage on the shipped corpora, and tokens per character.

    python benchmarks/prepare_throughput.py [--corpora english,chinese] [--repeats 3]
        [--out results.json]

For each corpus the real stage runs once into a fresh temporary workdir
(`gptjax.loops.prepare.run` with the corpus's config file), then:
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
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing the package

CORPORA = {  # name -> config file (its inputs are the shipped data)
    "english": "configs/prepare_english.py",
    "chinese": "configs/prepare_chinese_classics.py",
}
CORES = len(os.sched_getaffinity(0))
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
    args = ap.parse_args()
    rows = []
    for name in args.corpora.split(","):
        try:
            rows.append(measure(name, args.repeats))
        except Exception as e:  # e.g. ../shared/data absent for the Chinese corpus
            print(f"skipping {name}: {type(e).__name__}: {e}", file=sys.stderr)
    print(f"\n## prepare throughput ({CORES} cores; MB = 10^6 bytes of UTF-8 text)\n")
    print(table(rows))
    print("\nclean+dedup: read + clean + langid + Gopher rules + exact and MinHash dedup + "
          "corpus write, single-threaded; tokenize pass: corpus read + encode + shard write; "
          f"sentencepiece encode: SentencePieceProcessor.encode(texts, num_threads={CORES}).")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
