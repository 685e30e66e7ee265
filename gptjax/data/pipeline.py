"""The prepare stage's passes: documents -> clean/filter/dedup -> corpus shards -> tokenizer ->
token shards. Each pass streams: no pass holds the corpus in memory.

Per document, in this order (the first rule that fires removes it; the report counts each):
  url_blocklist -> broken_encoding (share of invalid bytes) -> cleaning -> empty / too_short /
  too_long -> language -> Gopher quality -> Gopher repetition -> exact_duplicate ->
  near_duplicate.
The k-th kept document goes to the validation split when floor((k+1) f) > floor(k f)
(f = val_fraction: evenly spread, so every source is represented), and to shard (index within
its split) mod num_shards.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import types
from typing import Any, Iterable, Iterator

import numpy as np

from gptjax.data import clean, dedup, filters, langid
from gptjax.data.readers import Document
from gptjax.data.report import Report
from gptjax.data.shards import SPLITS, ShardWriter, token_dtype
from gptjax.data.tokenizer import (EOS, SPECIAL_TOKENS, CharTokenizer, SentencePieceTokenizer,
                                   Tokenizer)
from gptjax.errors import GptjaxError


@dataclasses.dataclass
class Kept:
    text: str
    source: str
    url: str | None
    lang: str


def filter_documents(docs: Iterable[Document], p: Any, report: Report) -> Iterator[Kept]:
    """Clean, filter and deduplicate a stream of documents per config section p (prepare)."""
    # Plain namespaces: ConfigDict attribute lookups cost more than the rules on short texts.
    f, q, r, c = (types.SimpleNamespace(**s.to_dict())
                  for s in (p.filters, p.quality, p.repetition, p.clean))
    blocklist = filters.load_blocklist(f.url_blocklist)
    languages = set(f.languages)
    exact = dedup.ExactDedup() if p.dedup.exact else None
    near = (dedup.NearDedup(p.dedup.threshold, p.dedup.num_perm, p.dedup.ngram, p.dedup.bands,
                            p.seed) if p.dedup.near else None)
    if near is not None:
        report.extra["near_dedup"] = {"threshold": p.dedup.threshold, "bands": near.bands,
                                      "rows": near.rows, "num_perm": p.dedup.num_perm,
                                      "ngram": p.dedup.ngram}
    for doc in docs:
        raw = doc.text
        report.saw(len(raw))
        if filters.url_blocked(doc.url, blocklist):
            report.remove("url_blocklist", len(raw))
            continue
        if doc.invalid_bytes and clean.replacement_fraction(raw) > c.max_invalid_fraction:
            report.remove("broken_encoding", len(raw))
            continue
        text = clean.clean_text(raw, nfkc=c.nfkc, whitespace=c.whitespace, control=c.control,
                                mojibake=c.mojibake, counts=report.cleaning)
        report.cleaning["characters_removed"] += max(len(raw) - len(text), 0)
        n = len(text)
        rule = "empty" if not text.strip() else filters.length_rule(text, f.min_chars,
                                                                    f.max_chars)
        if rule:
            report.remove(rule, n)
            continue
        lang = langid.identify(text)
        report.language("seen", lang, n)
        if languages and lang not in languages:
            report.remove("language", n)
            continue
        if f.quality or f.repetition:
            cjk = lang in langid.CJK_LABELS
            words = filters.tokens_of(text, cjk)
            rule = filters.quality_rule(text, words, cjk, q) if f.quality else None
            if rule is None and f.repetition:
                rule = filters.repetition_rule(text, words, r)
            if rule:
                report.remove(rule, n)
                continue
        if exact is not None and exact.is_duplicate(dedup.exact_key(text)):
            report.remove("exact_duplicate", n)
            continue
        if near is not None and near.add(text)[0]:
            report.remove("near_duplicate", n)
            continue
        report.language("kept", lang, n)
        yield Kept(text, doc.source, doc.url, lang)
    if near is not None:
        report.extra["near_dedup"]["candidates_verified"] = near.candidates_checked


def corpus_name(split: str, i: int, n: int) -> str:
    return f"{split}-{i:05d}-of-{n:05d}.jsonl"


def write_corpus(kept: Iterable[Kept], corpus_dir: str, val_fraction: float, num_shards: int,
                 report: Report) -> None:
    """The cleaned documents as JSONL shards {"text", "source", "lang"[, "url"]} per split."""
    files = {s: [open(os.path.join(corpus_dir, corpus_name(s, i, num_shards)), "w",
                      encoding="utf-8") for i in range(num_shards)] for s in SPLITS}
    count = collections.Counter()
    try:
        for k, doc in enumerate(kept):
            split = "val" if int((k + 1) * val_fraction) > int(k * val_fraction) else "train"
            rec = {"text": doc.text, "source": doc.source, "lang": doc.lang}
            if doc.url:
                rec["url"] = doc.url
            f = files[split][count[split] % num_shards]
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            count[split] += 1
            report.kept(len(doc.text), split)
    finally:
        for fs in files.values():
            for f in fs:
                f.close()


def corpus_texts(corpus_dir: str, split: str, num_shards: int) -> Iterator[tuple[int, str]]:
    """(shard, text) of a split's cleaned documents, shard by shard."""
    for i in range(num_shards):
        with open(os.path.join(corpus_dir, corpus_name(split, i, num_shards)),
                  encoding="utf-8") as f:
            for line in f:
                yield i, json.loads(line)["text"]


def _training_lines(texts: Iterable[str], max_len: int = 4096) -> Iterator[str]:
    """Sentencepiece trains on lines; very long lines (a whole article on one line) are cut at
    spaces into pieces of about max_len characters so none is skipped."""
    for text in texts:
        for line in text.split("\n"):
            while len(line) > max_len:
                cut = line.rfind(" ", max_len // 2, max_len)
                cut = cut if cut > 0 else max_len
                yield line[:cut]
                line = line[cut:]
            if line:
                yield line


def train_tokenizer(corpus_dir: str, t: Any, num_shards: int) -> Tokenizer:
    """The tokenizer config section t trained on the corpus (sentencepiece: the train split;
    char: every character of both splits, so that no validation character is unknown)."""
    if t.kind == "char":
        chars: set[str] = set()
        for split in SPLITS:
            for _, text in corpus_texts(corpus_dir, split, num_shards):
                chars.update(text)
        return CharTokenizer(sorted(chars), SPECIAL_TOKENS)
    texts = (text for _, text in corpus_texts(corpus_dir, "train", num_shards))
    try:
        # One thread: sentencepiece's BPE trainer is then deterministic, byte for byte.
        return SentencePieceTokenizer.train(
            _training_lines(texts), t.vocab_size, model_type=t.model_type,
            character_coverage=t.character_coverage,
            user_defined_symbols=tuple(t.user_defined_symbols),
            input_sentence_size=t.max_sentences, num_threads=1)
    except GptjaxError as e:
        raise GptjaxError(f"{e} (prepare.tokenizer.vocab_size={t.vocab_size})") from None


def tokenize_corpus(corpus_dir: str, tokens_dir: str, tok: Tokenizer, num_shards: int,
                    batch: int = 256) -> dict[str, Any]:
    """Token shards of both splits; returns their meta (shard files and lengths)."""
    dtype = token_dtype(tok.vocab_size)
    eos = tok.specials[EOS]
    encode_batch = getattr(tok, "encode_batch", lambda texts: [tok.encode(x) for x in texts])
    splits, chars = {}, 0
    for split in SPLITS:
        writer = ShardWriter(tokens_dir, split, num_shards, dtype, eos)
        pending: list[tuple[int, str]] = []

        def flush():
            for (shard, _), ids in zip(pending, encode_batch([x for _, x in pending])):
                writer.add(shard, np.asarray(ids, dtype))
            pending.clear()
        for shard, text in corpus_texts(corpus_dir, split, num_shards):
            pending.append((shard, text))
            chars += len(text)
            if len(pending) >= batch:
                flush()
        flush()
        splits[split] = writer.close()
    tokens = sum(s["tokens"] for v in splits.values() for s in v)
    return {"dtype": dtype.name, "vocab_size": tok.vocab_size, "eos_id": eos, "splits": splits,
            "tokens": tokens, "characters": chars}
