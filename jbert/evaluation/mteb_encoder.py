"""jbert models as `mteb` encoders, and local BEIR-layout directories as `mteb` retrieval tasks.

`mteb_encoder(path)` wraps an HF export dir or a jbert run dir (see
`embedder.load_encoder`) in an `mteb.models.AbsEncoder`: queries and documents get their
own max length and optional prefix (picked by mteb's `PromptType`), and the embeddings are the
`Embedder`'s (mean-pooled, L2-normalised), scored by cosine similarity. `run(...)` evaluates it
with `mteb.evaluate` on mteb tasks, a benchmark such as "MTEB(Code, v1)" or "CoIR", or local
BEIR directories (`corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`), and writes mteb's
result JSON.

mteb is an optional dependency (`pip install -e '.[mteb]'`) imported only when one of these
functions runs, so importing this module (or jbert) never imports it. mteb's classes are
subclassed here, so their definitions sit inside functions.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jbert.evaluation.beir import load_beir
from jbert.evaluation.embedder import Embedder

DEFAULT_MAX_QUERY_LENGTH = 512
DEFAULT_MAX_DOC_LENGTH = 512
DEFAULT_BATCH_SIZE = 32


def _require_mteb() -> Any:
    try:
        import mteb
    except ImportError as e:
        raise ImportError("the mteb adapter needs mteb: pip install -e '.[mteb]'") from e
    return mteb


@functools.cache
def _encoder_class() -> type:
    _require_mteb()
    from mteb.models.abs_encoder import AbsEncoder, get_prompt
    from mteb.types import PromptType

    class JbertEncoder(AbsEncoder):
        """An `Embedder` behind mteb's encoder protocol (`mteb.EncoderProtocol`)."""

        def __init__(self, embedder: Embedder, meta: Any, *, max_query_length: int,
                     max_doc_length: int, prompts: Mapping[str, str] | None,
                     batch_size: int):
            self.model = embedder
            self.mteb_model_meta = meta
            self.model_prompts = self.validate_task_to_prompt_name(dict(prompts or {}))
            self.max_query_length = max_query_length
            self.max_doc_length = max_doc_length
            self.batch_size = batch_size

        def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str,
                   prompt_type: Any = None, **kwargs: Any) -> np.ndarray:
            """[N, D] embeddings of the loader's texts, in order: queries with the query
            length, anything else (documents, non-retrieval tasks) with the document length.
            mteb's `batch_size` is ignored: the embedder packs texts into calls of its own."""
            texts = [t for batch in inputs for t in batch["text"]]
            prefix = get_prompt(self.model_prompts, task_metadata, prompt_type) or ""
            max_length = (self.max_query_length if prompt_type == PromptType.query
                          else self.max_doc_length)
            return self.model.encode([prefix + t for t in texts], max_length=max_length,
                                     batch_size=self.batch_size)

    return JbertEncoder


def model_meta(name: str, embedder: Embedder, *, revision: str = "local",
               use_instructions: bool = False) -> Any:
    """mteb's `ModelMeta` of a jbert encoder: where results go (`results/<org>__<model>/
    <revision>/`) and what the result files say about the model. `name` is "org/model"."""
    import jax
    from mteb.models.model_meta import ModelMeta

    if name.count("/") != 1 or not all(name.split("/")):
        raise ValueError(f"model name {name!r} must look like 'org/model'")

    config = embedder.config
    n_parameters = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(embedder.params)))
    return ModelMeta(
        loader=None, name=name, revision=revision, release_date=None, languages=None,
        n_parameters=n_parameters, memory_usage_mb=None, max_tokens=embedder.max_length,
        embed_dim=config.hidden_size, license=None, open_weights=None,
        public_training_code=None, public_training_data=None, framework=["JAX"],
        similarity_fn_name="cosine", use_instructions=use_instructions,
        training_datasets=None)


def encoder_from_embedder(embedder: Embedder, *, name: str = "jbert/model",
                          max_query_length: int = DEFAULT_MAX_QUERY_LENGTH,
                          max_doc_length: int = DEFAULT_MAX_DOC_LENGTH,
                          prompts: Mapping[str, str] | None = None,
                          batch_size: int = DEFAULT_BATCH_SIZE) -> Any:
    """An mteb encoder over `embedder`. `prompts` maps mteb prompt keys to prefixes: "query",
    "document", or per task "<TaskName>-query" (mteb's `get_prompt` picks the most specific);
    no prefix by default."""
    for side, n in (("max_query_length", max_query_length), ("max_doc_length", max_doc_length)):
        if not 2 <= n <= embedder.max_length:
            raise ValueError(f"{side}={n} must be in [2, {embedder.max_length}]")
    meta = model_meta(name, embedder, use_instructions=bool(prompts))
    return _encoder_class()(embedder, meta, max_query_length=max_query_length,
                            max_doc_length=max_doc_length, prompts=prompts,
                            batch_size=batch_size)


def mteb_encoder(path: str | Path, *, name: str | None = None,
                 max_query_length: int = DEFAULT_MAX_QUERY_LENGTH,
                 max_doc_length: int = DEFAULT_MAX_DOC_LENGTH,
                 prompts: Mapping[str, str] | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> Any:
    """An mteb encoder for the model at `path` (HF export dir or jbert run dir); named
    "jbert/<dir name>" (a run's `export` dir: "jbert/<run>-export") unless `name` is given.
    The model's own "query" / "document" prompts (`Embedder.from_pretrained`) apply unless
    `prompts` gives others for the same keys."""
    embedder = Embedder.from_pretrained(path, max_length=max(max_query_length, max_doc_length))
    path = Path(path).resolve()
    default = f"{path.parent.name}-{path.name}" if path.name == "export" else path.name
    return encoder_from_embedder(
        embedder, name=name or f"jbert/{default}",
        max_query_length=max_query_length, max_doc_length=max_doc_length,
        prompts={**embedder.prompts, **(prompts or {})}, batch_size=batch_size)


# -- local BEIR-layout tasks -----------------------------------------------------------------


@functools.cache
def _beir_task_class() -> type:
    _require_mteb()
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

    class LocalBeirRetrieval(AbsTaskRetrieval):
        """A retrieval task read from a local BEIR directory (`path`) instead of the hub.
        Each directory gets a subclass: mteb keeps `metadata` on the class."""

        path: Path

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            if self.data_loaded:
                return
            self.dataset = {"default": {}}
            for split in self.metadata.eval_splits:
                rs = load_beir(self.path, split)  # titles joined to the text, as BEIR does
                corpus = [{"id": i, "title": "", "text": t}
                          for i, t in zip(rs.doc_ids, rs.docs, strict=True)]
                queries = [{"id": i, "text": t}
                           for i, t in zip(rs.query_ids, rs.queries, strict=True)]
                self.dataset["default"][split] = RetrievalSplitData(
                    corpus=Dataset.from_list(corpus), queries=Dataset.from_list(queries),
                    relevant_docs=rs.qrels, top_ranked=None)
            self.data_loaded = True

    return LocalBeirRetrieval


def beir_task(path: str | Path, *, name: str | None = None, split: str = "test") -> Any:
    """An mteb retrieval task over a local BEIR directory (nDCG@10 main score, mteb's
    pytrec_eval metrics); named after the directory unless `name` is given."""
    _require_mteb()
    from mteb.abstasks.task_metadata import TaskMetadata

    path = Path(path)
    load_beir(path, split)  # fail now, naming the bad file, not later inside mteb
    # mteb wants a language; a BEIR directory does not say, and the scores do not depend on it.
    metadata = TaskMetadata(
        name=name or path.resolve().name, description=f"Local BEIR-layout directory {path}.",
        dataset={"path": str(path), "revision": "local"}, type="Retrieval", category="t2t",
        modalities=["text"], eval_splits=[split], eval_langs=["eng-Latn"],
        main_score="ndcg_at_10")
    base = _beir_task_class()
    return type(base.__name__, (base,), {"path": path, "metadata": metadata})()


# -- running ---------------------------------------------------------------------------------


def select_tasks(*, tasks: Sequence[str] = (), benchmark: str | None = None,
                 beir: Sequence[str | Path] = ()) -> list[Any]:
    """mteb tasks by name, a benchmark's tasks, and local BEIR directories, in that order.
    An unknown name raises mteb's KeyError (which suggests the closest name)."""
    mteb = _require_mteb()
    out: list[Any] = list(mteb.get_tasks(tasks=list(tasks))) if tasks else []
    if benchmark:
        out.extend(mteb.get_benchmark(benchmark).tasks)
    out.extend(beir_task(p) for p in beir)
    if not out:
        raise ValueError("no tasks: give task names, a benchmark or BEIR directories")
    return out


def run(encoder: Any, tasks: Sequence[Any], out_dir: str | Path, *,
        overwrite: bool = True) -> dict[str, dict[str, float]]:
    """Evaluates `encoder` on `tasks` with `mteb.evaluate`; mteb writes each task's result JSON
    under `out_dir/results/<model>/<revision>/`. Returns {task: {"ndcg@10", "main_score"}}
    (averaged over the task's subsets, as mteb reports it). `overwrite=False` keeps results
    already in `out_dir` (resuming a benchmark; only for an unchanged model)."""
    mteb = _require_mteb()
    result = mteb.evaluate(
        encoder, list(tasks), cache=mteb.ResultCache(out_dir),
        overwrite_strategy="always" if overwrite else "only-missing",
        encode_kwargs={"batch_size": encoder.batch_size}, show_progress_bar=False)
    scores = {}
    for task_result in result.task_results:
        scores[task_result.task_name] = {
            "ndcg@10": float(task_result.get_score(getter=lambda s: s["ndcg_at_10"])),
            "main_score": float(task_result.get_score())}
    return scores
