"""The held-out split of the docstring/code pairs: repo-disjoint, stratified by language, and
free of leaks to the training pairs.

The corpus split (`corpus.is_test_repo`, a hash of the repo name) holds out about 5% of the
repos, which leaves scarce languages with a handful of held-out pairs or none. `split_pairs`
starts from those repos and adds, per language, more repos in a seeded hash order until the
language has `min_test_pairs` held-out pairs from `min_test_repos` repos, never taking more than
`max_test_share` of the language's pairs. It then drops held-out pairs that leak from training:
the same code (whitespace-normalised), the same docstring (case- and space-normalised), or code
whose MinHash Jaccard estimate over token 5-shingles reaches `near_duplicate_jaccard`.

The repos moved to the held-out side are written to `heldout_repos.json` beside the pairs, and
the MLM stage leaves their files out of its training stream, so held-out code is unseen by both
stages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """How many held-out pairs each language gets and what counts as a leak."""

    min_test_pairs: int = 300
    min_test_repos: int = 5
    max_test_share: float = 0.5  # of a language's pairs; its training side keeps the rest
    near_duplicate_jaccard: float = 0.8
    shingle: int = 5  # tokens per shingle of the near-duplicate check
    seed: int = 0


def code_hash(code: str) -> str:
    """Hash of the code with whitespace normalised (re-indented copies count as duplicates)."""
    return hashlib.sha256(" ".join(code.split()).encode()).hexdigest()


def _repo_order(repo: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}:{repo}".encode()).digest()


def choose_test_repos(pairs: Sequence[dict], test_repos: Iterable[str], cfg: SplitConfig,
                      targets: dict[str, int] | None = None) -> tuple[set[str], dict[str, str]]:
    """The held-out repos: `test_repos` plus, per language (scarcest first), repos in a seeded
    hash order until the language has `targets[language]` (default `cfg.min_test_pairs`) pairs
    from `cfg.min_test_repos` repos. Returns the repos and, for languages that cannot reach the
    targets without passing `max_test_share`, why."""
    targets = targets or {}
    chosen = set(test_repos)
    per_repo: dict[str, Counter] = defaultdict(Counter)  # language -> repo -> pairs
    for p in pairs:
        per_repo[p["language"]][p["repo"]] += 1
    short = {}
    for lang in sorted(per_repo, key=lambda lang: sum(per_repo[lang].values())):
        counts = per_repo[lang]
        total = sum(counts.values())
        held = sum(n for r, n in counts.items() if r in chosen)
        repos = sum(1 for r in counts if r in chosen)
        cap = cfg.max_test_share * total
        target = targets.get(lang, cfg.min_test_pairs)
        for repo in sorted((r for r in counts if r not in chosen),
                           key=lambda r: _repo_order(r, cfg.seed)):
            if held >= target and repos >= cfg.min_test_repos:
                break
            if held + counts[repo] > cap:
                continue  # too big: it would take the language's training pairs
            chosen.add(repo)
            held, repos = held + counts[repo], repos + 1
        if held < target or repos < cfg.min_test_repos:
            short[lang] = (f"{held} held-out pairs from {repos} repos: the language has "
                           f"{total} pairs in {len(counts)} repos, and more would pass "
                           f"max_test_share={cfg.max_test_share}")
    return chosen, short


# -- near duplicates -------------------------------------------------------------------------

_TOKEN = re.compile(r"\w+|[^\w\s]")
_PRIME = (1 << 61) - 1


def _shingles(code: str, size: int) -> np.ndarray:
    tokens = _TOKEN.findall(code)
    if len(tokens) < size:
        tokens = tokens + [""] * (size - len(tokens))
    grams = {" ".join(tokens[i:i + size]) for i in range(len(tokens) - size + 1)}
    return np.fromiter((zlib.crc32(g.encode()) for g in grams), np.uint64, len(grams))


class MinHasher:
    """MinHash signatures (`bands` x `rows` permutations of 32-bit shingle hashes) and LSH
    buckets: two codes share a bucket in some band with probability 1 - (1 - J^rows)^bands."""

    def __init__(self, bands: int = 16, rows: int = 8, shingle: int = 5, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.bands, self.rows, self.shingle = bands, rows, shingle
        self._a = rng.integers(1, _PRIME, bands * rows, dtype=np.uint64)
        self._b = rng.integers(0, _PRIME, bands * rows, dtype=np.uint64)

    def signature(self, code: str) -> np.ndarray:
        x_S = _shingles(code, self.shingle)
        # (a * x + b) mod p with x < 2^32 and a, b < 2^61 overflows uint64; the wrap-around is a
        # fixed function of x, which is all a permutation-like hash needs here.
        h_PS = (self._a[:, None] * x_S[None, :] + self._b[:, None]) % np.uint64(_PRIME)
        return h_PS.min(axis=1)

    def buckets(self, sig_P: np.ndarray) -> list[bytes]:
        return [bytes([band]) + sig_P[band * self.rows:(band + 1) * self.rows].tobytes()
                for band in range(self.bands)]


def near_duplicates(train_codes: Sequence[str], test_codes: Sequence[str],
                    threshold: float = 0.8, shingle: int = 5) -> dict[int, float]:
    """Indices of `test_codes` whose estimated Jaccard similarity to some training code reaches
    `threshold`, with that similarity."""
    hasher = MinHasher(shingle=shingle)
    index: dict[bytes, list[int]] = defaultdict(list)
    train_sigs = []
    for i, code in enumerate(train_codes):
        sig = hasher.signature(code)
        train_sigs.append(sig)
        for key in hasher.buckets(sig):
            index[key].append(i)
    found = {}
    for j, code in enumerate(test_codes):
        sig = hasher.signature(code)
        candidates = {i for key in hasher.buckets(sig) for i in index.get(key, ())}
        if not candidates:
            continue
        best = max(float(np.mean(train_sigs[i] == sig)) for i in candidates)
        if best >= threshold:
            found[j] = best
    return found


def normalised_doc(doc: str) -> str:
    return " ".join(doc.lower().split())


def drop_leaks(train: Sequence[dict], test: Sequence[dict], cfg: SplitConfig
               ) -> tuple[list[dict], Counter]:
    """Held-out pairs without exact-code, exact-docstring and near-duplicate-code leaks."""
    codes = {code_hash(p["positive"]) for p in train}
    docs = {normalised_doc(p["query"]) for p in train}
    dropped: Counter = Counter()
    kept = []
    for p in test:
        if code_hash(p["positive"]) in codes:
            dropped["same_code"] += 1
        elif normalised_doc(p["query"]) in docs:
            dropped["same_docstring"] += 1
        else:
            kept.append(p)
    near = near_duplicates([p["positive"] for p in train], [p["positive"] for p in kept],
                           cfg.near_duplicate_jaccard, cfg.shingle)
    dropped["near_duplicate_code"] += len(near)
    return [p for j, p in enumerate(kept) if j not in near], dropped


def split_pairs(pairs: Sequence[dict], test_repos: Iterable[str], cfg: SplitConfig
                ) -> tuple[list[dict], list[dict], dict]:
    """(train, test, report): every pair of a held-out repo goes to test, the rest to train;
    leaks removed from test. The report counts pairs and repos per language and what was
    dropped, and names the repos held out beyond `test_repos`."""
    base = set(test_repos)
    targets: dict[str, int] = {}
    for _ in range(4):  # leak removal can take a language below its target: aim higher, redo
        chosen, short = choose_test_repos(pairs, base, cfg, targets)
        train = [p for p in pairs if p["repo"] not in chosen]
        test, dropped = drop_leaks(train, [p for p in pairs if p["repo"] in chosen], cfg)
        kept = Counter(p["language"] for p in test)
        missing = {lang: cfg.min_test_pairs - kept[lang] for lang in {p["language"] for p in pairs}
                   if kept[lang] < cfg.min_test_pairs and lang not in short}
        if not missing:
            break
        for lang, n in missing.items():
            targets[lang] = targets.get(lang, cfg.min_test_pairs) + n + n // 4
    # A short language is not evaluated: a set of a few queries from one or two repos would
    # weigh as much as a full one in the macro average. Its held-out pairs are dropped, not
    # trained on (their repos are held out for the other languages they hold).
    short_dropped = Counter(p["language"] for p in test if p["language"] in short)
    test = [p for p in test if p["language"] not in short]
    report = {
        "config": dataclasses.asdict(cfg),
        "pairs": {"train": dict(Counter(p["language"] for p in train)),
                  "test": dict(Counter(p["language"] for p in test))},
        "test_repos_per_language": {
            lang: len({p["repo"] for p in test if p["language"] == lang})
            for lang in sorted({p["language"] for p in test})},
        "leaks_dropped": dict(dropped),
        "added_test_repos": sorted(chosen - base),
        "short": short,
        "short_dropped": dict(short_dropped),
    }
    return train, test, report
