"""Deduplication: a corpus with planted exact and near duplicates at several Jaccard levels.

Ground truth is exact: a document is a near duplicate when the Jaccard similarity of its
character-5-gram set with some earlier document's is >= the threshold (dedup.jaccard). The
planted copies are edited by word substitutions to similarities 1.0 (case and spacing only),
0.95, 0.9, 0.85 (duplicates at the threshold 0.8) and 0.7, 0.5, 0.3 (not duplicates); MinHash +
LSH must find them with recall >= 0.95 and precision >= 0.99.
"""

from __future__ import annotations

import numpy as np
import pytest

from gptjax.data import dedup

THRESHOLD = 0.8
# Edited copies of every base document, at these Jaccard similarities to it (1.0: the same text
# with case and spacing changed): three levels above the threshold, three below.
LEVELS = (1.0, 0.95, 0.9, 0.85, 0.7, 0.5, 0.3)


def _vocabulary(rng, n=3000):
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return ["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(n)]


def _edited(words, level, rng, vocab):
    """A copy with the first k of a random order of positions substituted, k chosen by
    bisection so that J(copy, original) sits at the level: >= it for levels at or above the
    threshold, <= it below (so no copy straddles the threshold by accident)."""
    order = rng.permutation(len(words))
    subs = rng.choice(vocab, len(words))
    base = " ".join(words)

    def copy(k):
        w = list(words)
        for i in order[:k]:
            w[i] = str(subs[i])
        return " ".join(w)
    lo, hi = 0, len(words)  # J(copy(lo)) >= level > J(copy(hi)) holds throughout
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if dedup.jaccard(base, copy(mid), 5) >= level else (lo, mid)
    return copy(lo if level >= THRESHOLD else hi)


def _planted_corpus(n_base=100, words_per_doc=160, seed=0):
    """[(text, cluster)]: base documents of Zipf-distributed words and their edited copies, in
    a random order except that each base document comes before its copies (an original and the
    copies made of it later)."""
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng)
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    docs = []
    for c in range(n_base):
        words = [str(w) for w in rng.choice(vocab, words_per_doc, p=p)]
        docs.append((" ".join(words), c))
        for level in LEVELS:
            if level == 1.0:
                text = "  " + " ".join(words).upper().replace(" ", " \n ", 3)
            else:
                text = _edited(words, level, rng, vocab)
            docs.append((text, c))
    stream = [docs[i] for i in rng.permutation(len(docs))]
    first: dict[int, int] = {}
    for pos, (_, c) in enumerate(stream):
        first.setdefault(c, pos)
    for c, pos in first.items():  # move each base document to its cluster's first slot
        base = stream.index(docs[c * (len(LEVELS) + 1)])
        stream[pos], stream[base] = stream[base], stream[pos]
    return stream


def _ground_truth(docs, ngram=5):
    """is_dup[i]: some earlier document of the same cluster has Jaccard >= THRESHOLD (other
    clusters are unrelated random text; checked on a sample below)."""
    shingles = [set(dedup.shingle_hashes(t, ngram).tolist()) for t, _ in docs]
    by_cluster: dict[int, list[int]] = {}
    truth, sims = [], []
    for i, (_, c) in enumerate(docs):
        best = max((len(shingles[i] & shingles[j]) / len(shingles[i] | shingles[j])
                    for j in by_cluster.get(c, [])), default=0.0)
        truth.append(best >= THRESHOLD)
        sims.append(best)
        by_cluster.setdefault(c, []).append(i)
    return np.array(truth), np.array(sims), shingles


@pytest.fixture(scope="module")
def planted():
    docs = _planted_corpus()
    truth, sims, shingles = _ground_truth(docs)
    return docs, truth, sims, shingles


def test_planted_corpus_spans_the_threshold(planted):
    docs, truth, sims, shingles = planted
    copies = sims[sims > 0]
    assert (copies >= 0.95).sum() > 150 and (copies < 0.6).sum() > 50
    assert ((copies >= 0.8) & (copies < 0.9)).sum() > 50  # just above the threshold
    assert ((copies >= 0.65) & (copies < 0.8)).sum() > 50  # just below it
    rng = np.random.default_rng(1)
    for i, j in rng.integers(0, len(docs), (300, 2)):  # unrelated clusters are far apart
        if docs[i][1] != docs[j][1]:
            assert len(shingles[i] & shingles[j]) / len(shingles[i] | shingles[j]) < 0.3


def _run(docs, **kw):
    nd = dedup.NearDedup(THRESHOLD, **kw)
    return np.array([nd.add(text)[0] for text, _ in docs]), nd


def test_near_dedup_recall_and_precision(planted):
    docs, truth, sims, _ = planted
    found, nd = _run(docs)
    tp = int((found & truth).sum())
    recall, precision = tp / truth.sum(), tp / max(found.sum(), 1)
    print(f"\nnear dedup at J>={THRESHOLD}: {truth.sum()} true duplicates of {len(docs)} "
          f"documents; found {found.sum()}, recall {recall:.4f}, precision {precision:.4f}; "
          f"bands x rows = {nd.bands} x {nd.rows}; {nd.candidates_checked} candidates verified")
    assert recall >= 0.95
    assert precision >= 0.99
    again, _ = _run(docs)
    np.testing.assert_array_equal(again, found)  # deterministic


def test_exact_key_ignores_case_and_whitespace_only():
    assert dedup.exact_key("Hello  World\n") == dedup.exact_key("hello world")
    assert dedup.exact_key("hello world") != dedup.exact_key("hello world!")
    ex = dedup.ExactDedup()
    assert [ex.is_duplicate(dedup.exact_key(t)) for t in ("a b", "A  B", "a c")] == [
        False, True, False]


def test_near_dedup_works_on_chinese():
    base = ("列位看官：你道此书从何而来？说起根由，虽近荒唐，细按则深有趣味。待在下将此来历注明，"
            "方使阅者了然不惑。原来女娲氏炼石补天之时，于大荒山无稽崖炼成高经十二丈、方经二十四丈"
            "顽石三万六千五百零一块。娲皇氏只用了三万六千五百块，只单单剩了一块未用，便弃在此山青埂峰下。")
    edited = base.replace("深有趣味", "深有意味", 1)
    other = "关关雎鸠，在河之洲。窈窕淑女，君子好逑。参差荇菜，左右流之。窈窕淑女，寤寐求之。"
    assert dedup.jaccard(base, edited, 5) > 0.9
    nd = dedup.NearDedup(THRESHOLD)
    assert [nd.add(t)[0] for t in (base, other, edited)] == [False, False, True]


def test_band_choice_keeps_recall_at_the_threshold():
    for t in (0.5, 0.7, 0.8, 0.9):
        b, r = dedup.optimal_bands(t, 128)
        assert b * r <= 128
        assert 1 - (1 - t**r) ** b >= 0.99
        # one row more per band would lose that recall: r is the largest that keeps it
        assert 1 - (1 - t ** (r + 1)) ** (128 // (r + 1)) < 0.99


def test_minhash_estimates_jaccard():
    rng = np.random.default_rng(0)
    vocab = _vocabulary(rng, 500)
    a = " ".join(rng.choice(vocab, 300))
    words = a.split()
    for i in range(0, len(words), 6):
        words[i] = "zzzz"
    b = " ".join(words)
    true = dedup.jaccard(a, b, 5)
    h = dedup.MinHasher(256, 5, seed=0)
    est = float((h.signature(a) == h.signature(b)).mean())
    assert abs(est - true) < 4 * np.sqrt(true * (1 - true) / 256) + 1e-9
    assert np.array_equal(h.signature(a), dedup.MinHasher(256, 5, seed=0).signature(a))
    assert not np.array_equal(h.signature(a), dedup.MinHasher(256, 5, seed=1).signature(a))
