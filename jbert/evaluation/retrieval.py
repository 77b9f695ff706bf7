"""Code retrieval evaluation on retrieval sets (`jbert.evaluation.beir.RetrievalSet`: a BEIR-layout
dir, or our held-out pairs as one set per language): every query against the set's whole corpus,
scored by an embedding model, by BM25 with identifiers split, and by their fusion.

The dense scores can also be reported at smaller Matryoshka sizes (`dims`): the embeddings are
computed once and each size keeps their first d dimensions, normalised again.

Metrics are those BEIR and CoIR report through pytrec_eval, computed the same way (tests check
against pytrec_eval): nDCG@10 with graded relevance (the headline), MRR@10, recall@1/10/100 over
the top 100 documents, equal scores ordered by document id as trec_eval orders them. Sets are
macro-averaged, each weighing the same. Shapes: Q queries, N documents, D embedding width.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# -- BM25 ------------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z]+|\d+")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def code_tokens(text: str) -> list[str]:
    """Lower-cased words with identifiers split too (`getHTTPResponse`, `read_file` -> parts),
    keeping the whole identifier as well: the usual BM25 setup for code search."""
    out = []
    for ident in re.findall(r"[A-Za-z_][A-Za-z0-9_]*|\d+", text):
        parts = [m.lower() for w in _WORD.findall(ident) for m in _CAMEL.findall(w)]
        out.extend(parts)
        if len(parts) > 1:
            out.append(ident.lower())
    return out


class BM25Index:
    """BM25 (bm25s, Lucene variant, k1=1.5, b=0.75) over a corpus, with code tokenisation."""

    def __init__(self, corpus: Sequence[str]):
        import logging

        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index at DEBUG
        self.size = len(corpus)
        self._retriever = bm25s.BM25()
        self._retriever.index([code_tokens(t) or ["<empty>"] for t in corpus],
                              show_progress=False)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """[Q, N] BM25 scores."""
        out_QN = np.zeros((len(queries), self.size), np.float32)
        for i, q in enumerate(queries):
            out_QN[i] = self._retriever.get_scores(code_tokens(q))
        return out_QN

    def top(self, queries: Sequence[str], k: int) -> np.ndarray:
        """[Q, k] indices of the best-scoring documents, best first."""
        scores_QN = self.scores(queries)
        return np.argsort(-scores_QN, axis=1, kind="stable")[:, :k]


# -- graded-relevance evaluation of retrieval sets (BEIR layout, our pairs per language) -----

IR_METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100")
RUN_DEPTH = 100  # documents kept per query, as BEIR's evaluation keeps
SYSTEMS = ("dense", "bm25", "rrf", "linear")
# A model with a sparse head: the head alone, and the model's own score (dense and sparse).
SPARSE, DENSE_SPARSE = "sparse", "dense+sparse"


def rank_documents(scores_QN: np.ndarray, doc_ids: Sequence[str], k: int = RUN_DEPTH,
                   chunk: int = 256) -> np.ndarray:
    """[Q, min(k, N)] document indices, best first; equal scores are ordered by document id,
    highest first, which is trec_eval's (and so pytrec_eval's) tie rule."""
    tie_order_N = np.argsort(np.asarray(doc_ids, dtype=object), kind="stable")[::-1]
    k = min(k, len(doc_ids))
    out = []
    for start in range(0, len(scores_QN), chunk):
        s_qN = np.asarray(scores_QN[start:start + chunk], np.float64)[:, tie_order_N]
        out.append(tie_order_N[np.argsort(-s_qN, axis=1, kind="stable")[:, :k]])
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def per_query_metrics(top_QK: np.ndarray, rs: Any) -> dict[str, np.ndarray]:
    """`IR_METRICS` of each query of a `beir.RetrievalSet` from its ranked documents:
    nDCG with linear gains and log2 discounts (trec_eval's ndcg_cut), MRR of the first relevant
    document within 10, recall as the share of the relevant documents retrieved."""
    out = {m: np.zeros(len(rs.query_ids)) for m in IR_METRICS}
    discount_10 = 1.0 / np.log2(np.arange(2, 12))
    for i, q in enumerate(rs.query_ids):
        rel = rs.qrels[q]
        gains = np.array([rel.get(rs.doc_ids[j], 0) for j in top_QK[i]], np.float64)
        ideal = np.sort(np.array(list(rel.values()), np.float64))[::-1][:10]
        idcg = float(ideal @ discount_10[:len(ideal)])
        g10 = gains[:10]
        out["ndcg@10"][i] = float(g10 @ discount_10[:len(g10)]) / idcg if idcg > 0 else 0.0
        hits = np.flatnonzero(g10 > 0)
        out["mrr@10"][i] = 1.0 / (hits[0] + 1) if len(hits) else 0.0
        n_rel = sum(1 for v in rel.values() if v > 0)
        for k in (1, 10, 100):
            out[f"recall@{k}"][i] = np.count_nonzero(gains[:k] > 0) / max(n_rel, 1)
    return out


def query_metrics(scores_QN: np.ndarray, rs: Any) -> dict[str, np.ndarray]:
    """`IR_METRICS` of each query ([Q] arrays) of a [Q, N] score matrix."""
    return per_query_metrics(rank_documents(scores_QN, rs.doc_ids), rs)


def _means(per_query: Mapping[str, np.ndarray]) -> dict[str, float]:
    return {m: float(np.mean(v)) if len(v) else 0.0 for m, v in per_query.items()}


def set_metrics(scores_QN: np.ndarray, rs: Any) -> dict[str, float]:
    """Mean `IR_METRICS` over the set's queries of a [Q, N] score matrix."""
    return _means(query_metrics(scores_QN, rs))


def rrf_scores(*scores_QN: np.ndarray, k: int = 60) -> np.ndarray:
    """Reciprocal-rank fusion: sum over systems of 1 / (k + rank)."""
    fused_QN = np.zeros(np.shape(scores_QN[0]), np.float64)
    for s_QN in scores_QN:
        rank_QN = np.argsort(np.argsort(-np.asarray(s_QN, np.float64), axis=1, kind="stable"),
                             axis=1, kind="stable") + 1
        fused_QN += 1.0 / (k + rank_QN)
    return fused_QN


def _zscore(s_QN: np.ndarray) -> np.ndarray:
    s_QN = np.asarray(s_QN, np.float64)
    std_Q1 = s_QN.std(axis=1, keepdims=True)
    return (s_QN - s_QN.mean(axis=1, keepdims=True)) / np.where(std_Q1 > 0, std_Q1, 1.0)


def linear_fusion(dense_QN: np.ndarray, bm25_QN: np.ndarray, rs: Any, folds: int = 2,
                  alphas: Sequence[float] = tuple(np.linspace(0.0, 1.0, 21)), seed: int = 0
                  ) -> tuple[dict[str, float], list[float]]:
    """alpha * z(dense) + (1 - alpha) * z(BM25), scores standardised per query, with alpha
    tuned by cross-validation over the queries: each fold is scored with the alpha that gives
    the best mean nDCG@10 on the other folds, so no query picks its own weight. Returns the
    metrics over all queries and the alpha of each fold."""
    fused_QN, chosen = linear_fused_scores(dense_QN, bm25_QN, rs, folds, alphas, seed)
    return set_metrics(fused_QN, rs), chosen


def linear_fused_scores(dense_QN: np.ndarray, bm25_QN: np.ndarray, rs: Any, folds: int = 2,
                        alphas: Sequence[float] = tuple(np.linspace(0.0, 1.0, 21)),
                        seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """The [Q, N] scores of `linear_fusion` and the alpha of each fold."""
    z_dense, z_bm25 = _zscore(dense_QN), _zscore(bm25_QN)
    fold_Q = np.random.default_rng(seed).permutation(len(rs.query_ids)) % folds
    ndcg_AQ = np.stack([
        per_query_metrics(rank_documents(a * z_dense + (1 - a) * z_bm25, rs.doc_ids), rs
                          )["ndcg@10"] for a in alphas])
    chosen = []
    fused_QN = np.zeros_like(z_dense)
    for f in range(folds):
        others = fold_Q != f
        best = float(alphas[int(np.argmax(ndcg_AQ[:, others].mean(axis=1)))]) if others.any() \
            else 0.5
        chosen.append(best)
        rows = fold_Q == f
        fused_QN[rows] = best * z_dense[rows] + (1 - best) * z_bm25[rows]
    return fused_QN, chosen


def evaluate_set(rs: Any, dense_QN: np.ndarray | None = None, bm25_QN: np.ndarray | None = None,
                 linear: bool = True, baselines: Mapping[str, np.ndarray] | None = None,
                 per_query: dict[str, dict[str, np.ndarray]] | None = None
                 ) -> dict[str, dict[str, float]]:
    """{system: metrics} for the systems whose scores are given: `dense`, `bm25`, with both
    the hybrids `rrf` and (with `linear`) the cross-validated `linear` fusion, and each of
    `baselines` ({name: [Q, N] scores} of other models) under its name. A `per_query` dict
    receives {system: {metric: [Q] values}}, the values the means are taken of."""
    clash = sorted(set(baselines or ()) & set(SYSTEMS))
    if clash:
        raise ValueError(f"baseline names {clash} clash with the systems {SYSTEMS}")
    out = {}

    def add(system: str, scores_QN: np.ndarray, **extra: float) -> None:
        values = query_metrics(scores_QN, rs)
        if per_query is not None:
            per_query[system] = values
        out[system] = {**_means(values), **extra}

    if dense_QN is not None:
        add("dense", dense_QN)
    if bm25_QN is not None:
        add("bm25", bm25_QN)
    if dense_QN is not None and bm25_QN is not None:
        add("rrf", rrf_scores(dense_QN, bm25_QN))
        if linear:
            fused_QN, alphas = linear_fused_scores(dense_QN, bm25_QN, rs)
            add("linear", fused_QN, alpha_mean=float(np.mean(alphas)))
    for name, scores_QN in (baselines or {}).items():
        add(name, scores_QN)
    return out


def macro_average(per_set: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """{system: metric means over the sets} (every set weighs the same, whatever its size), for
    the systems every set holds: `SYSTEMS` first, then the others (baselines) in their order."""
    first = next(iter(per_set.values()), {})
    names = [*SYSTEMS, *(s for s in first if s not in SYSTEMS)]
    systems = [s for s in names if all(s in r for r in per_set.values())]
    return {s: {m: float(np.mean([r[s][m] for r in per_set.values()])) for m in IR_METRICS}
            for s in systems}


class SetEvaluator:
    """Dense, BM25 and hybrid retrieval on fixed sets for params that change (the trainer's
    evaluation, `train.evaluate`): texts tokenised once (queries after `query_prompt`,
    documents after `doc_prompt`), one `Embedder` (compiled once per shape), BM25 scored once
    (on the texts without prompts). `dims`: Matryoshka sizes reported besides the full one
    (`hidden_size` itself among them changes nothing)."""

    def __init__(self, config: Any, tokenizer: Any, sets: Sequence[Any], *,
                 max_query_length: int = 64, max_doc_length: int = 256, bm25: bool = True,
                 batch_size: int = 64, query_prompt: str = "", doc_prompt: str = "",
                 dims: Sequence[int] = ()):
        from jbert.evaluation.embedder import Embedder

        self.sets = list(sets)
        self.lengths = (max_query_length, max_doc_length)
        self.batch_size = batch_size
        self.embedder = (Embedder(config, None, tokenizer, max_length=max(self.lengths))
                         if config is not None else None)  # None: BM25 only
        width = config.hidden_size if config is not None else None
        bad = [d for d in dims if width is not None and not 1 <= d <= width]
        if bad:
            raise ValueError(f"Matryoshka sizes {bad} must be in [1, {width}] (hidden_size)")
        # The full size is always reported, under the keys without a size.
        self.dims = tuple(sorted({d for d in dims if d != width}, reverse=True))
        self.tokens = ([(self.embedder.tokenize([query_prompt + q for q in rs.queries],
                                                max_query_length),
                         self.embedder.tokenize([doc_prompt + d for d in rs.docs],
                                                max_doc_length)) for rs in self.sets]
                       if self.embedder else None)
        self.bm25 = ([BM25Index(rs.docs).scores(rs.queries) for rs in self.sets]
                     if bm25 else [None] * len(self.sets))

    def representations(self, params: Any) -> list[dict[str, tuple[np.ndarray, np.ndarray]]]:
        """{"dense": (queries [Q, D], documents [N, D]), and with a sparse head "sparse":
        (queries [Q, V], documents [N, V])} per set, from one encoder pass each."""
        self.embedder.set_params(params)
        sparse = self.embedder.has_sparse
        out = []
        for q_ids, d_ids in self.tokens:
            q, d = (self.embedder.represent_tokens(ids, max_length=length, sparse=sparse,
                                                   batch_size=self.batch_size)
                    for ids, length in ((q_ids, self.lengths[0]), (d_ids, self.lengths[1])))
            out.append({key: (q[key], d[key]) for key in q})
        return out

    def model_scores(self, reps: Sequence[dict[str, tuple[np.ndarray, np.ndarray]]]
                     ) -> tuple[list[np.ndarray], dict[str, list[np.ndarray]]]:
        """(dense [Q, N] scores per set, {SPARSE: ..., DENSE_SPARSE: ...} per set when the
        model has a sparse head: the head alone and the model's own score, `Embedder.score`
        at the embedder's `dense_scale`; else {}) of `representations`' output."""
        dense = [q_QD @ d_ND.T for q_QD, d_ND in (r["dense"] for r in reps)]
        if not self.embedder.has_sparse:
            return dense, {}
        sparse = [q_QV @ d_NV.T for q_QV, d_NV in (r["sparse"] for r in reps)]
        return dense, {SPARSE: sparse, DENSE_SPARSE: [
            self.embedder.score(d, s) for d, s in zip(dense, sparse, strict=True)]}

    def embeddings(self, params: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        """(queries [Q, D], documents [N, D]) per set, L2-normalised."""
        self.embedder.set_params(params)
        return [(self.embedder.encode_tokens(q_ids, max_length=self.lengths[0],
                                             batch_size=self.batch_size),
                 self.embedder.encode_tokens(d_ids, max_length=self.lengths[1],
                                             batch_size=self.batch_size))
                for q_ids, d_ids in self.tokens]

    def dense_scores(self, params: Any) -> list[np.ndarray]:
        return [q_QD @ d_ND.T for q_QD, d_ND in self.embeddings(params)]

    def __call__(self, params: Any = None, linear: bool = True,
                 baselines: Mapping[str, Sequence[np.ndarray]] | None = None,
                 per_query: bool = False) -> dict:
        """{"sets": {name: {system: metrics}}, "macro": {system: metrics}, "sizes": {...}},
        and with `dims` "dims": {d: {"sets", "macro"}} (dense and hybrids at size d), all from
        one embedding pass. `baselines` and `per_query`: see `results` (full size only). With
        a sparse head in `params`, the systems `sparse` (its dot products) and `dense+sparse`
        (the model's own score, `Embedder.score` at the embedder's `dense_scale`) join them."""
        if params is None:
            return self.results(None, linear, baselines, per_query)
        from jbert.evaluation.embedder import truncate

        reps = self.representations(params)
        embeddings = [r["dense"] for r in reps]
        dense, sparse = self.model_scores(reps)
        out = self.results(dense, linear, {**(baselines or {}), **sparse}, per_query)
        if self.dims:
            out["dims"] = {}
            for d in self.dims:
                at_d = self.results([truncate(q_QD, d) @ truncate(d_ND, d).T
                                     for q_QD, d_ND in embeddings], linear)
                # BM25 does not depend on the size: it stays in the full-size figures alone.
                out["dims"][d] = {
                    "sets": {name: {s: m for s, m in r.items() if s != "bm25"}
                             for name, r in at_d["sets"].items()},
                    "macro": {s: m for s, m in at_d["macro"].items() if s != "bm25"}}
        return out

    def results(self, dense: Sequence[np.ndarray] | None, linear: bool = True,
                baselines: Mapping[str, Sequence[np.ndarray]] | None = None,
                per_query: bool = False) -> dict:
        """What `__call__` returns for the full size, from dense scores already computed
        (`dense_scores`; None: BM25 alone). `baselines`: {name: [Q, N] scores per set} of other
        models, reported as systems of that name. With `per_query`, "per_query": {set:
        {system: {metric: [Q] values}}} as well (for `bootstrap.compare_systems`)."""
        dense = [None] * len(self.sets) if dense is None else dense
        others = [{name: scores[i] for name, scores in (baselines or {}).items()}
                  for i in range(len(self.sets))]
        per_set, values = {}, {}
        for rs, d, b, o in zip(self.sets, dense, self.bm25, others, strict=True):
            values[rs.name] = {}
            per_set[rs.name] = evaluate_set(rs, d, b, linear=linear, baselines=o,
                                            per_query=values[rs.name])
        out = {"sets": per_set, "macro": macro_average(per_set),
               "sizes": {rs.name: {"queries": len(rs.queries), "docs": len(rs.docs)}
                         for rs in self.sets}}
        if per_query:
            out["per_query"] = values
        return out


def named_evaluators(spec: str, config: Any, tokenizer: Any, *, max_queries: int | None = None,
                     seed: int = 0, reserved: Sequence[str] = (), **evaluator_kwargs: Any
                     ) -> dict[str, SetEvaluator]:
    """`contrastive.eval_sets` ("name=path,...", see `beir.load_named_sets`) as one
    `SetEvaluator` per name, each built with `evaluator_kwargs`. A name in `reserved` (log key
    prefixes already taken, such as the held-out languages) is refused."""
    from jbert.errors import InputError
    from jbert.evaluation.beir import load_named_sets

    named = load_named_sets(spec, max_queries, seed)
    taken = [n for n in named if n in reserved or re.fullmatch(r"dim\d+", n)]
    if taken:
        raise InputError(f"contrastive.eval_sets: the name(s) {taken} would mix their log keys "
                         f"with other figures (taken: {sorted(reserved)} and dim<N>); rename")
    return {name: SetEvaluator(config, tokenizer, sets, **evaluator_kwargs)
            for name, sets in named.items()}


# The names the trainer logs: `retrieval_*` is the dense model's macro average over the sets.
LOGGED_SYSTEMS = {"dense": "retrieval", "bm25": "bm25", "rrf": "rrf", "linear": "linear",
                  SPARSE: SPARSE, DENSE_SPARSE: DENSE_SPARSE}


def logged_metrics(result: dict, prefix: str = "", per_set: bool = True) -> dict[str, float]:
    """A `SetEvaluator` result as flat log keys: `retrieval_ndcg@10` (macro), `bm25_ndcg@10`,
    `rrf_ndcg@10` (with a sparse head `sparse_ndcg@10` and `dense+sparse_ndcg@10`), per set
    (with `per_set`) `python/retrieval_ndcg@10` and so on, and per
    Matryoshka size `dim128/retrieval_ndcg@10`, `dim128/python/retrieval_ndcg@10` (dense and
    hybrids; BM25 has no size). Every key starts with `prefix` (e.g. "mycorpus/")."""
    out = {}
    for system, name in LOGGED_SYSTEMS.items():
        for m, v in result["macro"].get(system, {}).items():
            out[f"{prefix}{name}_{m}"] = v
        for set_name, per_system in result["sets"].items() if per_set else ():
            for m, v in per_system.get(system, {}).items():
                if m in ("ndcg@10", "mrr@10"):
                    out[f"{prefix}{set_name}/{name}_{m}"] = v
    for d, at_d in result.get("dims", {}).items():
        out.update(logged_metrics(at_d, f"{prefix}dim{d}/", per_set))
    return out


def evaluate_retrieval(embedder: Any, sets: Sequence[Any], *, bm25: bool = True,
                       max_query_length: int = 64, max_doc_length: int = 256,
                       linear: bool = True, dims: Sequence[int] | None = None,
                       baselines: Mapping[str, Sequence[np.ndarray]] | None = None,
                       per_query: bool = False) -> dict:
    """Dense (`embedder`: an `Embedder`, e.g. `Embedder.from_pretrained(path)`, whose "query"
    and "document" prompts are applied; None for BM25 alone), BM25 and hybrid figures on
    retrieval sets: `{"sets", "macro", "sizes"}` and `"dims"` as `SetEvaluator` gives them.
    `dims` defaults to the embedder's `matryoshka_dims`; `baselines` and `per_query`: see
    `SetEvaluator.results`."""
    extra = {"baselines": baselines, "per_query": per_query}
    if embedder is None:
        return SetEvaluator(None, None, sets, bm25=bm25)(None, linear=linear, **extra)
    evaluator = SetEvaluator(
        embedder.config, embedder.tokenizer, sets, max_query_length=max_query_length,
        max_doc_length=max_doc_length, bm25=bm25,
        query_prompt=embedder.prompts.get("query", ""),
        doc_prompt=embedder.prompts.get("document", ""),
        dims=embedder.matryoshka_dims if dims is None else dims)
    evaluator.embedder.dense_scale = embedder.dense_scale
    return evaluator(embedder.model_params, linear=linear, **extra)
