"""The model card (`README.md`) of an export, in the Hugging Face model-card format.

Front matter (license, library, pipeline tag, base model, languages, tags), what the weights
are, how to use them (sentence-transformers, transformers, jbert), and, when the caller knows
them, how they were trained and what they scored. `ModelCard` holds those facts as plain values
(tables of formatted cells); `render_card` writes the text. `save_pretrained(..., card=...)`
writes it into the export; `jbert.training.run_card` gathers the facts of a training run.
"""

from __future__ import annotations

import dataclasses
import json
import re

from jbert.hf.keys import HEAD_CLASSES
from jbert.model.config import JinaBertConfig

# The hub's pipeline tag and library of an export without a recipe that says otherwise.
PIPELINE_TAGS = {"base": "feature-extraction", "masked_lm": "fill-mask"}
PLACEHOLDER_PATH = "path/or/repo"


@dataclasses.dataclass(frozen=True)
class Table:
    """A markdown table of cells already formatted as text."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.header):
                raise ValueError(f"row {row} has {len(row)} cells for {len(self.header)} "
                                 f"columns {self.header}")

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + " --- |" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """What a card says beyond the weights; every field may stay empty (then the card says
    what the weights are and how to load them)."""

    base_model: str | None = None  # the hub id (or export name) training started from
    pipeline_tag: str | None = None  # None: from the head (`PIPELINE_TAGS`)
    programming_languages: tuple[str, ...] = ()  # tags, besides language: en
    datasets: tuple[str, ...] = ()  # hub dataset ids of the training data
    recipe: Table | None = None  # (what, value) rows: steps, batch, hardware, time...
    data: Table | None = None  # training data per source, with sizes
    evaluation: Table | None = None
    evaluation_note: str = ""  # what the evaluation table measures: sets, split, step
    config_json: str = ""  # the run's whole config
    prompts: dict[str, str] = dataclasses.field(default_factory=dict)  # "query"/"document"
    matryoshka_dims: tuple[int, ...] = ()  # embedding sizes the loss trained (truncatable)
    sparse_head: bool = False  # the export carries `sparse_head.safetensors`


def front_matter(card: ModelCard, head: str) -> dict[str, object]:
    """The YAML header's keys, in the hub's model-card format."""
    embedding = head == "base"
    out: dict[str, object] = {
        "license": "apache-2.0",
        "library_name": "sentence-transformers" if embedding else "transformers",
    }
    pipeline_tag = card.pipeline_tag or PIPELINE_TAGS.get(head)
    if pipeline_tag:
        out["pipeline_tag"] = pipeline_tag
    if card.base_model:
        out["base_model"] = card.base_model
    out["language"] = ["en"]
    tags = (["sentence-transformers", "feature-extraction", "sentence-similarity"]
            if embedding else [])
    tags += ["custom_code", "jbert", "code", *card.programming_languages]
    if card.matryoshka_dims:
        tags.append("matryoshka")
    out["tags"] = list(dict.fromkeys(tags))
    if card.datasets:
        out["datasets"] = list(card.datasets)
    return out


def _yaml(values: dict[str, object]) -> str:
    lines = []
    for key, value in values.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines += [f"- {_scalar(item)}" for item in value]
        else:
            lines.append(f"{key}: {_scalar(value)}")
    return "\n".join(lines)


def _scalar(text: str) -> str:
    # Names stay plain; anything else (a path with a colon, a word YAML reads as a boolean) is
    # a JSON string, which is a YAML double-quoted scalar: no value can break the header.
    plain = re.fullmatch(r"[A-Za-z][\w.+/-]*", text) and text.lower() not in _YAML_WORDS
    return text if plain else json.dumps(text)


_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "y", "n", "null"}


def render_card(config: JinaBertConfig, head: str, card: ModelCard | None = None, *,
                self_contained: bool = False) -> str:
    """The README.md text of an export of `head` with `config`."""
    card = card or ModelCard()
    layout = ("jina-embeddings-v2-base-code layout (jinaai/jina-bert-v2-qk-post-norm)"
              if config.qk_norm else "jina-embeddings-v2-base-en layout "
              "(jinaai/jina-bert-implementation)")
    code = ("the modeling code is jbert's own, in this directory (`modeling_jbert.py`, "
            "`configuration_jbert.py`; transformers 4.x and 5.x)" if self_contained else
            "the modeling code is Jina AI's, fetched through `auto_map` (transformers 4.x)")
    pooling = (" Embeddings are the mean of the last hidden states over real tokens."
               if head == "base" else "")
    parts = [f"---\n{_yaml(front_matter(card, head))}\n---", f"""\
# JinaBERT ({HEAD_CLASSES[head]}), exported by jbert

A JinaBERT encoder ({config.num_hidden_layers} layers, hidden size {config.hidden_size},
{config.num_attention_heads} heads, symmetric ALiBi, {config.max_position_embeddings} positions)
in the {layout}. Weights are fp32 with the official tensor names; {code}, hence
`trust_remote_code=True`.{pooling}"""]
    smaller_dims = sorted((d for d in card.matryoshka_dims if d < config.hidden_size),
                          reverse=True)
    if smaller_dims:
        sizes = ", ".join(str(d) for d in smaller_dims)
        parts.append(f"""\
## Embedding sizes

Trained with a Matryoshka loss on the leading {sizes} dimensions as well as all
{config.hidden_size}: keep the first `d` of those (then L2-normalise again) for smaller vectors,
or load with `SentenceTransformer(..., truncate_dim=d)`.""")
    if card.prompts:
        rows = tuple((f"`{name}`", f"`{json.dumps(text)}`") for name, text in card.prompts.items())
        parts.append("## Prompts\n\nTrained with these prefixes; prepend them the same way "
                     "(sentence-transformers: `prompt_name=`).\n\n"
                     + Table(("prompt name", "prefix"), rows).markdown())
    parts.append("## Usage\n\n" + usage(config, head, card, self_contained=self_contained))
    if card.recipe or card.data or card.config_json:
        training = ["## Training"]
        if card.recipe:
            training.append(card.recipe.markdown())
        if card.data:
            training.append(card.data.markdown())
        if card.config_json:
            training.append("<details><summary>The run's config (jbert TrainConfig)</summary>"
                            f"\n\n```json\n{card.config_json.strip()}\n```\n\n</details>")
        parts.append("\n\n".join(training))
    if card.evaluation:
        parts.append("\n\n".join(filter(None, ["## Evaluation", card.evaluation_note,
                                               card.evaluation.markdown()])))
    return "\n\n".join(parts) + "\n"


def usage(config: JinaBertConfig, head: str, card: ModelCard, *,
          self_contained: bool = False) -> str:
    """Snippets for sentence-transformers, transformers and jbert (markdown)."""
    path = PLACEHOLDER_PATH
    if head != "base":
        auto = "AutoModelForMaskedLM" if head == "masked_lm" else "AutoModel"
        return f"""\
```python
from transformers import {auto}

model = {auto}.from_pretrained("{path}", trust_remote_code=True)
```

In JAX: `config, params = jbert.load_pretrained("{path}", head="{head}")`."""
    query, document = card.prompts.get("query", ""), card.prompts.get("document", "")
    query_text, doc_text = "how to add two numbers", "def add(a, b): return a + b"
    smaller_dims = [d for d in card.matryoshka_dims if d < config.hidden_size]
    truncate = f", truncate_dim={max(smaller_dims)}" if smaller_dims else ""

    def prompt_arg(name: str, prefix: str) -> str:
        return f', prompt_name="{name}"' if prefix else ""

    def prefixed(prefix: str, text: str) -> str:
        return json.dumps(prefix + text)

    smaller = ""
    if smaller_dims:
        d = min(smaller_dims)
        smaller = (f"\nsmall = queries[:, :{d}]  # a Matryoshka size: re-normalise\n"
                   "small /= np.linalg.norm(small, axis=-1, keepdims=True)")
    transformers_note = ("" if self_contained else
                         "  # transformers 4.x: jina's remote code")
    return f"""\
sentence-transformers:

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{path}", trust_remote_code=True{truncate})
queries = model.encode(["{query_text}"]{prompt_arg("query", query)}, normalize_embeddings=True)
docs = model.encode(["{doc_text}"]{prompt_arg("document", document)}, normalize_embeddings=True)
print(model.similarity(queries, docs))
```

transformers (`encode` as the released jina models offer it: mean pooling, L2-normalised):

```python
from transformers import AutoModel

model = AutoModel.from_pretrained("{path}", trust_remote_code=True){transformers_note}
queries = model.encode([{prefixed(query, query_text)}], normalize_embeddings=True)
docs = model.encode([{prefixed(document, doc_text)}], normalize_embeddings=True)
print(queries @ docs.T)
```

jbert (JAX):

```python
import jbert
import numpy as np
from jbert.data.tokenizer import load_tokenizer

config, params = jbert.load_pretrained("{path}")
embedder = jbert.Embedder(config, params, load_tokenizer("{path}"),
                          max_length=config.max_position_embeddings)
# [N, {config.hidden_size}], L2-normalised
queries = embedder.encode([{prefixed(query, query_text)}])
docs = embedder.encode([{prefixed(document, doc_text)}])
print(queries @ docs.T){smaller}
```{sparse_usage(card, prefixed(query, query_text), prefixed(document, doc_text))}"""


def sparse_usage(card: ModelCard, query: str, doc: str) -> str:
    """The sparse head's snippet (jbert only: no HF architecture has the head)."""
    if not card.sparse_head:
        return ""
    return f"""

The sparse head (`sparse_head.safetensors`: a weight per token, vocabulary-sized vectors scored
by dot product) is read by jbert alone; sentence-transformers and transformers load the dense
model above. The model's own score, the sum it was trained on, is `embedder.score`:

```python
embedder = jbert.Embedder.from_pretrained("{PLACEHOLDER_PATH}")
dense = embedder.encode([{query}]) @ embedder.encode([{doc}]).T
sparse = embedder.encode_sparse([{query}]) @ embedder.encode_sparse([{doc}]).T
print(embedder.score(dense, sparse))  # dense_scale * cosine + sparse dot product
```"""
