"""Where a user's "local path or hub name" points: one decision (`locate`) for what takes
either: `load_corpus`, `load_pretrained`, and the pairs and tokenizer specs of the `train/*`
tools and the contrastive task (`contrastive.sources`, `eval_pairs`). BEIR sets and run
directories are only ever local.

A spec that exists on disk is local. So is one that looks like a path: it starts with `.`, `/`
or `~`, has no `/` or more than one, ends in a file suffix (`.jsonl`, `.parquet`, ...), is not a
valid `owner/name`, or its parent directory exists. A missing local path is one line, at once;
it is never tried on the Hugging Face hub (which took 30 s to fail offline). The remaining
`owner/name` forms are hub names: offline (`HF_HUB_OFFLINE`, or `HF_DATASETS_OFFLINE` for
datasets) one is only used when it is in the local cache, online its existence is asked first,
so an unknown name is one line too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# Names that are files, not hub repos (a repo name may contain dots, but not end like these).
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".gz", ".tsv", ".txt", ".safetensors")
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_TRUE = {"1", "on", "yes", "true"}


def looks_local(spec: str | os.PathLike) -> bool:
    """Whether `spec` is a local path (existing or not) rather than a hub `owner/name`."""
    text = str(spec)
    path = Path(text).expanduser()
    return (path.exists() or text.startswith((".", "/", "~")) or not _HUB_NAME.fullmatch(text)
            or text.lower().endswith(FILE_SUFFIXES) or path.parent.is_dir())


def hub_offline(repo_type: str = "dataset") -> bool:
    """`HF_HUB_OFFLINE` (or, for datasets, `HF_DATASETS_OFFLINE`) is set."""
    names = ["HF_HUB_OFFLINE"] + (["HF_DATASETS_OFFLINE"] if repo_type == "dataset" else [])
    return any(os.environ.get(n, "").strip().lower() in _TRUE for n in names)


def in_hub_cache(name: str, repo_type: str = "dataset") -> bool:
    """Whether the hub's or `datasets`' local cache holds something of `name`."""
    from huggingface_hub import constants

    owner, repo = name.split("/")
    places = [Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{owner}--{repo}"]
    if repo_type == "dataset":
        import datasets

        places.append(Path(datasets.config.HF_DATASETS_CACHE) / f"{owner}___{repo}")
    return any(p.is_dir() for p in places)


def locate(spec: str | os.PathLike, what: str | None = None, *, inside: str | None = None,
           repo_type: str = "dataset") -> Path | str:
    """`spec` as a `Path` when it exists locally, or as a hub name (`str`) worth fetching.

    Raises `FileNotFoundError` naming `what` (default: `spec`) in one line for a missing local
    path, a hub name that offline mode (not in the cache) or the hub itself says is not there,
    or a hub that cannot be reached. A local directory with `inside` given (e.g. "train.jsonl")
    gives that file in it, which must exist. `repo_type` is "dataset" or "model"."""
    text = str(spec)
    what = what or text
    path = Path(text).expanduser()
    if path.is_dir() and inside is not None:
        if not (path / inside).is_file():
            raise FileNotFoundError(f"{what}: a directory without {inside}")
        return path / inside
    if path.exists():
        return path
    if looks_local(text):
        raise FileNotFoundError(f"{what}: no such file or directory")
    if hub_offline(repo_type):
        if in_hub_cache(text, repo_type):
            return text
        raise FileNotFoundError(f"{what}: no such file or directory, and offline (HF_HUB_OFFLINE) "
                                f"the hub {repo_type} {text!r} is not in the local cache")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().repo_info(text, repo_type=repo_type, timeout=10)
    except GatedRepoError:
        raise FileNotFoundError(f"{what}: the hub {repo_type} {text!r} is gated: accept its "
                                "terms on huggingface.co and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{what}: no such file or directory, nor a {repo_type} on the "
                                "Hugging Face hub that this login can read") from None
    except Exception as e:  # no network, a proxy, a timeout: one line, not the HTTP stack
        raise FileNotFoundError(f"{what}: no such file or directory, and the Hugging Face hub "
                                f"could not be asked for {text!r} ({type(e).__name__}); set "
                                "HF_HUB_OFFLINE=1 to use the local cache only") from None
    return text
