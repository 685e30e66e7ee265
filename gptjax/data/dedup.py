"""Streaming deduplication: exact (hash of the normalised text) and near (MinHash + LSH).

Documents arrive one at a time and are never held: exact dedup keeps a set of 16-byte digests,
near dedup keeps each document's MinHash signature (num_perm uint32) and one 64-bit key per
LSH band. Memory grows with the number of documents (about num_perm * 4 + bands * 85 bytes a
document: 2.3 KB at the defaults, measured with tracemalloc), not with their length, so a
corpus larger than memory streams through. Everything is seeded: the same documents in the same
order give the same decisions.

Near duplicates. Shingles are the character n-grams of the normalised text (lowercase, runs of
whitespace as one space), so the measure works for Chinese as well as English. For shingle sets
A and B, the Jaccard similarity J = |A ∩ B| / |A ∪ B|. With a hash family h_1..h_k,
P[min h_i(A) = min h_i(B)] = J, so the share of equal signature entries estimates J with
standard error sqrt(J (1 - J) / k). h_i(x) = (a_i x + b_i mod 2^64) >> 32 (multiply-shift with
random odd a_i) over 64-bit shingle hashes. LSH: the signature is cut into b bands of r rows;
two documents become candidates when a band matches, with probability 1 - (1 - J^r)^b (an S
curve around (1/b)^(1/r)). Every candidate is then verified (estimated J >= t) and only
verification decides, so b and r are chosen for recall: the fewest candidates such that a pair
at exactly J = t is a candidate with probability >= 0.99 (t = 0.8, k = 128: b = 21, r = 6).
A document is a near duplicate when an earlier document (kept or not) passes verification; the
first of a cluster is kept.
"""

from __future__ import annotations

import functools
import hashlib
import re

import numpy as np

_WS = re.compile(r"\s+")
_MASK32 = np.uint64(0xFFFFFFFF)


def normalise(text: str) -> str:
    """The form both dedups compare: lowercase, whitespace runs as one space, trimmed."""
    return _WS.sub(" ", text.lower()).strip()


def exact_key(text: str) -> bytes:
    """16-byte digest of the normalised text (also seeds the train/val split and sharding)."""
    return hashlib.blake2b(normalise(text).encode("utf-8"), digest_size=16).digest()


class ExactDedup:
    def __init__(self):
        self.seen: set[bytes] = set()

    def is_duplicate(self, key: bytes) -> bool:
        if key in self.seen:
            return True
        self.seen.add(key)
        return False


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads the polynomial hash over all 64 bits."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """Unique 64-bit hashes of the character n-grams of normalise(text) (uint64)."""
    cps = np.frombuffer(normalise(text).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(cps) == 0:
        return np.zeros(1, np.uint64)
    n = min(ngram, len(cps))
    h = np.zeros(len(cps) - n + 1, np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * np.uint64(0x100000001B3) + cps[k:len(cps) - n + 1 + k]
        return np.unique(_mix64(h))


class MinHasher:
    """Signatures under a seeded multiply-shift hash family."""

    def __init__(self, num_perm: int, ngram: int, seed: int = 0, chunk: int = 4096):
        rng = np.random.default_rng([seed, 0x6D696E68])
        self.a = rng.integers(0, 2**64, num_perm, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 2**64, num_perm, dtype=np.uint64)
        self.ngram, self.chunk = ngram, chunk

    def signature(self, text: str) -> np.ndarray:
        """(num_perm,) uint32: min over shingles x of (a_i x + b_i) >> 32."""
        shingles = shingle_hashes(text, self.ngram)
        sig = np.full(len(self.a), 0xFFFFFFFF, np.uint64)
        with np.errstate(over="ignore"):
            for s in range(0, len(shingles), self.chunk):  # bounds the (chunk, k) temporary
                x = shingles[s:s + self.chunk, None]
                sig = np.minimum(sig, ((x * self.a + self.b) >> np.uint64(32)).min(axis=0))
        return sig.astype(np.uint32)


@functools.lru_cache(maxsize=64)
def optimal_bands(threshold: float, num_perm: int, recall_at_threshold: float = 0.99
                  ) -> tuple[int, int]:
    """(bands, rows): the most rows per band (fewest false candidates) for which a pair at
    exactly the threshold still becomes a candidate with probability >= recall_at_threshold."""
    for r in range(num_perm, 0, -1):
        b = num_perm // r
        if 1.0 - (1.0 - threshold**r) ** b >= recall_at_threshold:
            return b, r
    return num_perm, 1


class NearDedup:
    """MinHash-LSH near-duplicate detector over a stream of documents."""

    def __init__(self, threshold: float, num_perm: int = 128, ngram: int = 5, bands: int = 0,
                 seed: int = 0):
        self.threshold = threshold
        self.hasher = MinHasher(num_perm, ngram, seed)
        self.bands, self.rows = ((bands, num_perm // bands) if bands
                                 else optimal_bands(threshold, num_perm))
        rng = np.random.default_rng([seed, 0x6C7368])
        self.band_mult = rng.integers(0, 2**64, self.rows, dtype=np.uint64) | np.uint64(1)
        # band key -> the id of the one document with it, or the list of ids of several: most
        # keys are seen once, and an int value costs a third of a one-element list
        self.index: list[dict[int, int | list[int]]] = [{} for _ in range(self.bands)]
        self.sigs = np.zeros((1024, num_perm), np.uint32)
        self.count = 0
        self.candidates_checked = 0

    def _band_keys(self, sig: np.ndarray) -> list[int]:
        rows = sig[:self.bands * self.rows].reshape(self.bands, self.rows).astype(np.uint64)
        with np.errstate(over="ignore"):
            return (rows * self.band_mult).sum(axis=1, dtype=np.uint64).tolist()

    def add(self, text: str) -> tuple[bool, float]:
        """Index the document; (is a near duplicate of an earlier one, best estimated J)."""
        sig = self.hasher.signature(text)
        keys = self._band_keys(sig)
        cands: set[int] = set()
        for band, key in zip(self.index, keys):
            ids = band.get(key)
            if ids is None:
                band[key] = self.count
            elif isinstance(ids, int):
                cands.add(ids)
                band[key] = [ids, self.count]
            else:
                cands.update(ids)
                ids.append(self.count)
        best = 0.0
        if cands:
            ids = np.fromiter(sorted(cands), np.int64, len(cands))
            self.candidates_checked += len(ids)
            best = float((self.sigs[ids] == sig).mean(axis=1).max())
        if self.count == len(self.sigs):
            self.sigs = np.concatenate([self.sigs, np.zeros_like(self.sigs)])
        self.sigs[self.count] = sig
        self.count += 1
        return best >= self.threshold, best


def jaccard(a: str, b: str, ngram: int) -> float:
    """Exact Jaccard similarity of the two texts' shingle sets (for tests and measurements)."""
    sa = set(shingle_hashes(a, ngram).tolist())
    sb = set(shingle_hashes(b, ngram).tolist())
    return len(sa & sb) / max(len(sa | sb), 1)
