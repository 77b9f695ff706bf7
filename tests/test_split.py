"""The stratified, leak-free held-out split of the pairs (jbert.data.split)."""

import numpy as np
import pytest

from jbert.data.split import (
    MinHasher,
    SplitConfig,
    choose_test_repos,
    drop_leaks,
    near_duplicates,
    split_pairs,
)


def _pairs(language, repos_sizes, start=0):
    out = []
    for r, n in repos_sizes.items():
        for _ in range(n):
            k = start + len(out)
            out.append({"query": f"{language} {r} does thing number {k}",
                        "positive": f"def f_{language}_{r}_{k}(x):\n    y = x * {k}\n"
                                    f"    return y + {k} - {len(r)}\n",
                        "language": language, "repo": r})
    return out


def test_every_language_reaches_its_targets_from_distinct_repos():
    pairs = (_pairs("Go", {f"go{i}": 40 for i in range(20)})
             + _pairs("Rust", {f"rs{i}": 25 for i in range(12)})
             + _pairs("Java", {"big": 400, **{f"j{i}": 10 for i in range(3)}}))
    cfg = SplitConfig(min_test_pairs=100, min_test_repos=5, max_test_share=0.5)
    train, test, report = split_pairs(pairs, {"go0"}, cfg)
    assert {p["repo"] for p in train}.isdisjoint({p["repo"] for p in test})
    assert "go0" in {p["repo"] for p in test}  # the corpus's held-out repos stay held out
    for lang in ("Go", "Rust"):
        held = [p for p in test if p["language"] == lang]
        assert len(held) >= 100 and len({p["repo"] for p in held}) >= 5
        assert report["test_repos_per_language"][lang] >= 5
    # Java: one repo holds 93% of the pairs; taking it would pass max_test_share, so the
    # language stays short and the report says why.
    assert "big" not in {p["repo"] for p in test}
    assert "Java" in report["short"] and "max_test_share" in report["short"]["Java"]
    # ... and is not evaluated: its few held-out pairs are dropped, not trained on.
    assert "Java" not in {p["language"] for p in test}
    assert report["short_dropped"]["Java"] > 0
    assert len(train) + len(test) + sum(report["leaks_dropped"].values()) + sum(
        report["short_dropped"].values()) == len(pairs)


def test_choice_is_deterministic_and_depends_on_the_seed():
    pairs = _pairs("Go", {f"go{i}": 30 for i in range(30)})
    cfg = SplitConfig(min_test_pairs=90, min_test_repos=3)
    a, _ = choose_test_repos(pairs, set(), cfg)
    assert a == choose_test_repos(pairs, set(), cfg)[0]
    b, _ = choose_test_repos(pairs, set(), SplitConfig(min_test_pairs=90, min_test_repos=3,
                                                        seed=1))
    assert len(a) == len(b) == 3 and a != b


def test_leaks_are_dropped_by_code_docstring_and_near_duplicate():
    body = "\n".join(f"    total = total + values[{i}] * weight_{i}" for i in range(30))
    train = [{"query": "Sum the weighted values.", "positive": f"def s(values):\n{body}\n"},
             {"query": "Open a socket.", "positive": "def o():\n    return socket()\n"}]
    test = [
        {"query": "other words", "positive": f"def s(values):\n{body}\n"},         # same code
        {"query": "  open A socket. ", "positive": "def p():\n    return 1\n"},   # same doc
        {"query": "near copy", "positive": f"def s2(values):\n{body}\n"},        # near copy
        {"query": "fresh", "positive": "def q(a, b):\n    return a ** b % 7\n"},  # kept
    ]
    kept, dropped = drop_leaks(train, test, SplitConfig())
    assert [p["query"] for p in kept] == ["fresh"]
    assert dropped == {"same_code": 1, "same_docstring": 1, "near_duplicate_code": 1}


def test_minhash_estimates_jaccard():
    tokens = [f"t{i}" for i in range(400)]
    a = " ".join(tokens)
    b = " ".join(tokens[:300] + [f"u{i}" for i in range(100)])  # about half the shingles shared
    hasher = MinHasher(bands=32, rows=8, shingle=5)
    est = float(np.mean(hasher.signature(a) == hasher.signature(b)))

    def shingles(s):
        t = s.split()
        return {" ".join(t[i:i + 5]) for i in range(len(t) - 4)}

    exact = len(shingles(a) & shingles(b)) / len(shingles(a) | shingles(b))
    assert est == pytest.approx(exact, abs=0.1)
    assert near_duplicates([a], [b], threshold=0.9) == {}
    assert list(near_duplicates([a], [a + " t0"], threshold=0.9)) == [0]
