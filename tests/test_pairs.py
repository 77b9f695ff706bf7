"""Pair extraction on a known source tree, filters, dedup, repo split, pair files, batcher."""

import json
from collections import Counter

import numpy as np
import pytest

from jbert.data.corpus import Source, build_corpus, is_test_repo
from jbert.data.pair_batches import (
    PairBatcher,
    duplicate_free_batches,
    load_pairs,
    measure_pair_throughput,
    read_pair_file,
)
from jbert.data.pairs import build_pairs, clean_doc, extract_pairs
from jbert.data.split import SplitConfig
from jbert.data.tokenizer import tokenize_texts, train_tokenizer

PY = '''
def documented(a, b):
    """Add two numbers and return the sum.

    Longer description that is not part of the query.
    """
    total = a + b
    return total


def short_doc(x):
    """Square."""
    y = x * x
    return y


def todo_doc(x):
    """TODO: write the docs for this."""
    y = x + 1
    return y


class Box:
    async def fetch(self, url):
        """Fetch the page at url asynchronously."""
        page = await self.client.get(url)
        return page.text

    def stub(self):
        """An abstract method that subclasses must implement."""
        raise NotImplementedError


def one_liner(x):
    """Return the value unchanged always."""
    return x
'''

GO = """package demo

// Sum adds up all the numbers in xs and returns the total.
//go:noinline
func Sum(xs []int) int {
	t := 0
	for _, x := range xs {
		t += x // "}" in a comment
	}
	return t
}

// Apply calls f on every element of the interface slice.
func (s *Set) Apply(f func(interface{}) string) []string {
	out := []string{"{"}
	return out
}

// short
func Tiny() {
	return
}
"""

JAVA = """package demo;

public class Demo {
    /**
     * Returns the larger of the two given values.
     *
     * @param a the first value
     * @return the max
     */
    @Override
    public static int max(int a, int b) {
        char c = '}';
        return a > b ? a : b;
    }

    /** Computes nothing because it is abstract here. */
    abstract int nothing(int a);
}
"""

JS = """/**
 * Capitalises the first letter of a string.
 * @param {string} s
 */
export function capitalise(s) {
  const t = `${s}`;
  return t[0].toUpperCase() + t.slice(1);
}

/** Doubles each element of the input array. */
const doubleAll = (xs) => {
  return xs.map((x) => x * 2);
};
"""


def test_python_pairs_known_content():
    reasons = Counter()
    pairs = {p["name"]: p for p in extract_pairs(PY, "Python", reasons)}
    assert set(pairs) == {"documented", "fetch"}
    assert pairs["documented"]["query"] == "Add two numbers and return the sum."
    code = pairs["documented"]["positive"]
    assert code == "def documented(a, b):\n    total = a + b\n    return total"
    assert '"""' not in pairs["fetch"]["positive"]
    assert pairs["fetch"]["positive"].startswith("async def fetch(self, url):")
    assert reasons == {"short_doc": 1, "boilerplate_doc": 1, "short_code": 1}


def test_go_java_js_pairs_known_content():
    go = {p["name"]: p for p in extract_pairs(GO, "GO")}
    assert set(go) == {"Sum", "Apply"}
    assert go["Sum"]["query"] == "Sum adds up all the numbers in xs and returns the total."
    assert go["Sum"]["positive"].startswith("func Sum(xs []int) int {")
    assert go["Sum"]["positive"].endswith("return t\n}")
    assert go["Apply"]["positive"].endswith("return out\n}")
    java = extract_pairs(JAVA, "Java")
    assert [p["name"] for p in java] == ["max"]
    assert java[0]["query"] == "Returns the larger of the two given values."
    assert java[0]["positive"].startswith("public static int max(int a, int b) {")
    assert java[0]["positive"].rstrip().endswith("}")
    js = {p["name"]: p for p in extract_pairs(JS, "JavaScript")}
    assert set(js) == {"capitalise", "doubleAll"}
    assert js["capitalise"]["query"] == "Capitalises the first letter of a string."
    assert js["doubleAll"]["positive"].endswith("}")


def test_clean_doc():
    assert clean_doc(" Use {@code x} with <b>care</b>.\n @param x y") == "Use x with care."


def test_broken_sources_do_not_crash():
    assert extract_pairs("def f(:\n  pass", "Python") == []
    assert extract_pairs("/** Unclosed body of a func. */\nfunction f() {\n", "JavaScript") == []
    assert extract_pairs("x" * 100, "Haskell") == []


def _source_tree(root, n_repos=30):
    for r in range(n_repos):
        d = root / f"repo{r}"
        d.mkdir(parents=True)
        body = PY.replace("documented", f"documented_{r}").replace("total", f"total_{r}")
        (d / "mod.py").write_text(body)
        (d / "copy.py").write_text(body + "\n# a different file with the same functions\n")
        (d / "demo.go").write_text(GO.replace("Sum", f"Sum{r}").replace("t += x", f"t += x*{r}"))
    return root


def _corpus_rows(corpus, split):
    import pyarrow.parquet as pq

    return [r for f in sorted(corpus.glob(f"{split}-*.parquet"))
            for r in pq.read_table(f).to_pylist()]


def test_build_pairs_dedup_and_repo_split(tmp_path):
    src = _source_tree(tmp_path / "src")
    build_corpus([Source("t", str(src))], tmp_path / "corpus", test_fraction=0.3)
    # Targets the corpus's held-out repos already meet: the split stays the corpus's.
    stats = build_pairs(tmp_path / "corpus", tmp_path / "pairs",
                        split=SplitConfig(min_test_pairs=1, min_test_repos=1))
    rows = {
        s: [json.loads(x) for x in open(tmp_path / "pairs" / f"{s}.jsonl")] for s in stats["pairs"]
    }
    all_rows = rows["train"] + rows["test"]
    # copy.py repeats mod.py's functions; "fetch" is identical in every repo: kept once overall
    assert sum(p["name"] == "fetch" for p in all_rows) == 1
    train_repos = {p["repo"] for p in rows["train"]}
    assert sum(p["name"].startswith("documented") for p in rows["train"]) == len(train_repos)
    # Held-out copies of a training docstring are leaks: dropped, counted.
    assert not {p["query"] for p in rows["test"]} & {p["query"] for p in rows["train"]}
    assert stats["leaks_dropped"]["same_docstring"] > 0
    heldout = set(json.loads((tmp_path / "pairs" / "heldout_repos.json").read_text()))
    assert heldout >= {r["repo"] for r in _corpus_rows(tmp_path / "corpus", "test")}
    assert not heldout & train_repos
    assert stats["rejected"]["duplicate_code"] > 0
    assert all(not is_test_repo(p["repo"], 0.3) for p in rows["train"])
    assert rows["train"] and rows["test"]
    assert not {p["repo"] for p in rows["train"]} & {p["repo"] for p in rows["test"]}
    assert {p["language"] for p in all_rows} == {"Python", "GO"}
    assert load_pairs(tmp_path / "pairs", "test") == [{k: p[k] for k in p} for p in rows["test"]]


def test_pair_file_validation(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(
        json.dumps({"query": "q", "positive": "p", "negatives": ["n1", "n2"]}) + "\n\n"
        + json.dumps({"query": "q2", "positive": "p2"}) + "\n"
    )  # fmt: skip
    assert len(read_pair_file(good)) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "positive": "p"}) + "\n" + json.dumps({"query": "q"}))
    with pytest.raises(ValueError, match=r"bad.jsonl:2: key 'positive'"):
        read_pair_file(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not JSON"):
        read_pair_file(bad)
    bad.write_text(json.dumps({"query": "q", "positive": "p", "negatives": "n"}))
    with pytest.raises(ValueError, match="negatives"):
        read_pair_file(bad)


def _dup_heavy_pairs(n=400):
    rng = np.random.default_rng(0)
    # queries and positives drawn from small pools: many collisions
    return [
        {"query": f"q{rng.integers(60)}", "positive": f"p{rng.integers(120)}",
         "negatives": [f"p{rng.integers(120)}"]}
        for _ in range(n)
    ]  # fmt: skip


def test_batches_have_no_duplicate_texts():
    pairs = _dup_heavy_pairs()
    batches = duplicate_free_batches(pairs, 16, np.random.default_rng(1))
    assert len(batches) >= 5
    used = [i for b in batches for i in b]
    assert len(used) == len(set(used))
    for b in batches:
        texts = [
            t for i in b for t in {pairs[i]["query"], pairs[i]["positive"], *pairs[i]["negatives"]}
        ]
        assert len(texts) == len(set(texts))


def test_repo_batches_hold_neighbouring_code_and_every_pair_once():
    # 6 repos of 3 files of 20 pairs, plus pairs without a repo (their own group)
    pairs = [{"query": f"q{r}{f}{i}", "positive": f"p{r}{f}{i}", "repo": f"r{r}",
              "path": f"r{r}/f{f}.py"} for r in range(6) for f in range(3) for i in range(20)]
    pairs += [{"query": f"loose{i}", "positive": f"code{i}"} for i in range(20)]
    batches = duplicate_free_batches(pairs, 16, np.random.default_rng(1), by_repo=True)
    used = [i for b in batches for i in b]
    assert len(used) == len(set(used)) == len(pairs) // 16 * 16
    repos = [{pairs[i].get("repo") for i in b} for b in batches]
    files = [{pairs[i].get("path") for i in b} for b in batches]
    assert max(map(len, repos)) <= 2 and max(map(len, files)) <= 3  # 60 pairs a repo
    assert sum(len(r) == 1 for r in repos) >= len(batches) // 2
    plain = duplicate_free_batches(pairs, 16, np.random.default_rng(1))
    assert sum(len({pairs[i].get("repo") for i in b}) for b in plain) > 4 * len(plain)
    # the batches come in a random order, not repository after repository
    firsts = [pairs[b[0]].get("repo") for b in batches]
    assert firsts != sorted(firsts, key=firsts.index)
    again = duplicate_free_batches(pairs, 16, np.random.default_rng(1), by_repo=True)
    assert again == batches
    # duplicates are still kept apart
    dups = [dict(p, repo="one", path="one.py") for p in _dup_heavy_pairs()]
    for b in duplicate_free_batches(dups, 16, np.random.default_rng(1), by_repo=True):
        texts = [t for i in b for t in {dups[i]["query"], dups[i]["positive"],
                                         *dups[i]["negatives"]}]
        assert len(texts) == len(set(texts))


def test_batcher_processes_resume_and_source():
    pairs = [{"query": f"q{i}", "positive": f"p{i}"} for i in range(100)]
    full = [b for b in PairBatcher(pairs, 8, source="py", seed=3, num_epochs=2)]
    assert len(full) == 24 and all(b["source"] == "py" for b in full) and "negatives" not in full[0]
    assert full[0]["query"] != full[12]["query"]  # reshuffled per epoch
    it = PairBatcher(pairs, 8, seed=3, num_epochs=2)
    [next(it) for _ in range(15)]
    state = json.loads(json.dumps(it.get_state()))
    again = PairBatcher(pairs, 8, seed=3, num_epochs=2)
    again.set_state(state)
    assert list(again) == [dict(b, source="pairs") for b in full[15:]]
    halves = [next(PairBatcher(pairs, 8, seed=3, process_index=p, process_count=2)) for p in (0, 1)]
    assert halves[0]["query"] + halves[1]["query"] == full[0]["query"]


def test_pair_throughput():
    pairs = [
        {"query": f"find item {i}", "positive": f"def f{i}():\n    return {i}"} for i in range(64)
    ]
    tok = train_tokenizer([p["positive"] for p in pairs] * 3, vocab_size=320)
    stats = measure_pair_throughput(PairBatcher(pairs, 16), tok, 64, 8)
    # the figures are the tokens and texts of the batches the same batcher gives, per second
    batcher, tokens = PairBatcher(pairs, 16), 0
    for _ in range(8):
        batch = next(batcher)
        tokens += sum(int(tokenize_texts(tok, batch[k], 64)["attention_mask"].sum())
                      for k in ("query", "positive"))
    assert stats["tokens_per_s"] * stats["seconds"] == pytest.approx(tokens)
    assert stats["texts_per_s"] * stats["seconds"] == pytest.approx(8 * 16 * 2)


def test_a_batcher_that_can_never_fill_a_batch_says_so_instead_of_spinning():
    # every pair's negatives are the same two texts: no two pairs fit in one batch
    pairs = [{"query": f"q{i}", "positive": f"p{i}", "negatives": ["n0", "n1"]}
             for i in range(10)]
    batcher = PairBatcher(pairs, 4, source="mined")
    with pytest.raises(ValueError, match="mined: no batch of 4 pairs without a repeated text"):
        next(batcher)
