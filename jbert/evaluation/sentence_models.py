"""sentence-transformers models (the general-purpose embedders code-search tools ship, such as
all-MiniLM-L6-v2 and all-mpnet-base-v2) as baseline systems of the retrieval evaluation and
as teachers for distillation.

They run with their documented settings: the folder's own `max_seq_length`
(`sentence_bert_config.json`), the folder's pooling, L2-normalised embeddings, cosine scores.

sentence-transformers and torch are an optional extra (`pip install -e '.[baselines]'`),
imported only inside the functions that load a model, so importing this module (or jbert)
never imports torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jbert.errors import InputError

EXTRA = "pip install -e '.[baselines]'"
# Texts per forward pass on CPU: large enough to keep the matrix kernels busy, small enough
# that one batch of 384-token documents stays well under a GiB of activations.
DEFAULT_BATCH_SIZE = 32


def require_sentence_transformers() -> Any:
    """The `sentence_transformers` module, or an ImportError that names the extra to install."""
    try:
        import sentence_transformers
    except ImportError as e:
        raise ImportError(f"sentence-transformers models need sentence-transformers and torch, "
                          f"an optional extra: {EXTRA}") from e
    return sentence_transformers


def check_installed(flag: str) -> None:
    """An InputError naming `flag` and the extra to install when sentence-transformers is
    missing, so an entry point says so in one line before any work."""
    try:
        require_sentence_transformers()
    except ImportError as e:
        raise InputError(f"{flag}: {e}") from None


def check_model_dir(path: str | os.PathLike, what: str | None = None) -> Path:
    """`path` if it is a sentence-transformers folder (modules.json, config.json), else an
    InputError naming `what` (default: the path)."""
    root = Path(path)
    what = what or str(root)
    if not root.is_dir():
        raise InputError(f"{what}: no such directory")
    missing = [f for f in ("modules.json", "config.json") if not (root / f).is_file()]
    if missing:
        raise InputError(f"{what}: not a sentence-transformers folder (no {', '.join(missing)}"
                         "); python -m train.fetch_baselines makes them")
    return root


def check_baselines(dirs: Sequence[str]) -> dict[str, Path]:
    """{system name: folder} of `--baseline` folders: each a sentence-transformers folder, named
    after its last path part, no name twice nor one of the evaluation's own systems."""
    from jbert.evaluation.retrieval import SYSTEMS

    out: dict[str, Path] = {}
    for d in dirs:
        root = check_model_dir(d, f"--baseline {d}")
        name = root.resolve().name
        if name in out or name in SYSTEMS:
            taken = "given twice" if name in out else f"one of the systems {SYSTEMS}"
            raise InputError(f"--baseline {d}: the name {name!r} is {taken}; rename the folder")
        out[name] = root
    if out:
        check_installed("--baseline")
    return out


def load_model(path: str | os.PathLike, device: str = "cpu") -> Any:
    """`SentenceTransformer(path)` from a local folder, never from the network."""
    root = check_model_dir(path)
    st = require_sentence_transformers()
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a bar per load in every evaluation log
    return st.SentenceTransformer(str(root), device=device, local_files_only=True)


def dimension(model: Any) -> int:
    """The width of `model`'s embeddings (the method was renamed in sentence-transformers 6)."""
    get = getattr(model, "get_embedding_dimension", None) or \
        model.get_sentence_embedding_dimension
    return int(get())


@contextlib.contextmanager
def max_length(model: Any, length: int | None) -> Iterator[Any]:
    """`model` truncating at `length` tokens inside the block (None: its own setting)."""
    own = model.max_seq_length
    if length is not None:
        model.max_seq_length = length
    try:
        yield model
    finally:
        model.max_seq_length = own


def encode(model: Any, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE,
           prompt: str = "") -> np.ndarray:
    """[N, D] float32 L2-normalised embeddings of `prompt + text` for each text, in order."""
    if not texts:
        return np.zeros((0, dimension(model)), np.float32)
    out_ND = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                          convert_to_numpy=True, show_progress_bar=False,
                          prompt=prompt or None)
    return np.asarray(out_ND, np.float32)


def describe(model: Any, path: str | os.PathLike) -> dict[str, Any]:
    """What a report says about a model: its folder, max length, width and size."""
    return {"path": str(path), "max_seq_length": int(model.max_seq_length),
            "dim": dimension(model),
            "parameters": int(sum(p.numel() for p in model.parameters()))}


def _fingerprint(path: Path) -> str:
    """What identifies a model's weights and settings: its files' names, sizes and the
    small files' contents (the weights by size and, when fetched, the pinned hashes of
    jbert_baseline.json)."""
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{f.relative_to(path)}:{f.stat().st_size}\n".encode())
        if f.stat().st_size < 1 << 20:
            digest.update(f.read_bytes())
    return digest.hexdigest()


def cached_encode(model: Any, texts: Sequence[str], cache: Path | None, model_key: str, *,
                  batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """`encode`, kept in `cache` (a directory; None: no cache) under a key of the model's
    fingerprint, its max length and the texts, so an evaluation run again (another jbert model
    against the same baselines) does not embed the same corpus again."""
    if cache is None:
        return encode(model, texts, batch_size=batch_size)
    digest = hashlib.sha256(f"{model_key}:{model.max_seq_length}\n".encode())
    for t in texts:
        digest.update(hashlib.sha1(t.encode("utf-8")).digest())
    file = cache / f"{digest.hexdigest()[:32]}.npy"
    if file.is_file():
        return np.load(file)
    out_ND = encode(model, texts, batch_size=batch_size)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, out_ND)
    os.replace(tmp, file)
    return out_ND


def baseline_scores(path: str | os.PathLike, sets: Sequence[Any], *,
                    batch_size: int = DEFAULT_BATCH_SIZE, device: str = "cpu",
                    cache: str | os.PathLike | None = None
                    ) -> tuple[list[np.ndarray], dict[str, Any]]:
    """([Q, N] cosine scores per retrieval set, what the report says of the model) for the
    sentence-transformers folder at `path`, with its documented settings (no prompts).
    `cache`: a directory keeping the embeddings (see `cached_encode`)."""
    model = load_model(path, device)
    key = _fingerprint(Path(path))
    where = None if cache is None else Path(cache)
    start = time.perf_counter()
    scores = [cached_encode(model, rs.queries, where, key, batch_size=batch_size)
              @ cached_encode(model, rs.docs, where, key, batch_size=batch_size).T
              for rs in sets]
    info = {**describe(model, path), "batch_size": batch_size,
            "encode_seconds": round(time.perf_counter() - start, 1)}
    return scores, info
