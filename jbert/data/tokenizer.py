"""Byte-level BPE for code: train, save in the HF layout, load; and batch tokenization to arrays.

The special tokens are the released jina-embeddings-v2-base-code's RoBERTa-style ones, in its id
order: `<s>`=0 (CLS), `<pad>`=1, `</s>`=2 (SEP), `<unk>`=3, `<mask>`=4. Byte-level BPE keeps every
byte, so whitespace and indentation survive a decode exactly; the GPT-2 split keeps runs of spaces
as their own pieces, which the merges then learn as indentation tokens.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from jbert.data.hub import locate

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
VOCAB_MULTIPLE = 64

# Names a loaded tokenizer may use for each role: ours/RoBERTa's first, then BERT's.
_ROLE_NAMES = {
    "cls": ("<s>", "[CLS]"),
    "sep": ("</s>", "[SEP]"),
    "pad": ("<pad>", "[PAD]"),
    "mask": ("<mask>", "[MASK]"),
    "unk": ("<unk>", "[UNK]"),
}


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens a tokenizer uses, whatever their spelling."""

    cls: int
    sep: int
    pad: int
    mask: int
    unk: int
    all: tuple[int, ...]  # every special/added-special id (never masked, never a random token)


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    """Finds the CLS/SEP/PAD/MASK/UNK ids of `tokenizer` (RoBERTa or BERT spellings)."""
    found = {}
    for role, names in _ROLE_NAMES.items():
        ids = [tokenizer.token_to_id(n) for n in names]
        ids = [i for i in ids if i is not None]
        if not ids:
            raise ValueError(f"tokenizer has no {role} token (looked for {', '.join(names)})")
        found[role] = ids[0]
    added = tokenizer.get_added_tokens_decoder()
    specials = {i for i, tok in added.items() if tok.special} | set(found.values())
    return SpecialIds(**found, all=tuple(sorted(specials)))


# Identifier pieces: camelCase and ALLCAPS parts, digit runs, punctuation runs.
IDENTIFIER_PIECES = r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+|[^\sA-Za-z\d]+"


def identifier_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Whitespace dropped, identifiers cut into their words (`read_file`, `readFile` -> `read`,
    `_`/`File`), each piece byte-level encoded without a space marker: the word `file` of a
    docstring and the `file` of `read_file` become the same token."""
    return pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Split(Regex(IDENTIFIER_PIECES), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


# Where a camelCase or ALLCAPS word starts inside an identifier (getDict, HTTPServer, utf8Decode).
CAMEL_BOUNDARY = r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])"


def lowercase_normalizer() -> normalizers.Normalizer:
    """A space at every camel-case boundary, then everything lower-cased: `getDictFor` -> `get dict
    for`, `HTTPServer` -> `http server`, `Renders` -> `renders`. With `identifier_pre_tokenizer`
    the pieces stay the ones the case gave, but a docstring's `Returns` and the `returns` of code
    become one token (BM25 folds case too). Offsets still point at the original text."""
    return normalizers.Sequence([
        normalizers.Replace(Regex(CAMEL_BOUNDARY), " "),
        normalizers.Lowercase(),
    ])


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 61056,
    min_frequency: int = 2,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    max_token_length: int | None = 32,
    split_identifiers: bool = False,
    lowercase: bool = False,
) -> Tokenizer:
    """Trains a byte-level BPE on `texts`; the vocabulary is padded to a multiple of 64.

    A small corpus can end below `vocab_size`; `<unused{i}>` tokens then round it up, so the
    embedding table always has a multiple-of-64 row count. `split_identifiers` pre-tokenises
    with `identifier_pre_tokenizer` (for retrieval: docstring words and identifier parts share
    tokens; decoding then loses the whitespace); the default keeps every byte (GPT-2 split).
    `lowercase` folds case first (`lowercase_normalizer`; decoding then loses the case too).
    """
    if vocab_size % VOCAB_MULTIPLE:
        raise ValueError(f"vocab_size {vocab_size} is not a multiple of {VOCAB_MULTIPLE}")
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    if lowercase:
        tok.normalizer = lowercase_normalizer()
    tok.pre_tokenizer = (identifier_pre_tokenizer() if split_identifiers
                         else pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=max_token_length,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    short = -tok.get_vocab_size() % VOCAB_MULTIPLE
    if short:
        tok.add_special_tokens([f"<unused{i}>" for i in range(short)])
    cls, sep = special_tokens[0], special_tokens[2]
    # RoBERTa's template: <s> A </s> and <s> A </s></s> B </s>; trim_offsets off so offsets point
    # at the exact bytes, whitespace included.
    tok.post_processor = processors.RobertaProcessing(
        (sep, tok.token_to_id(sep)), (cls, tok.token_to_id(cls)), trim_offsets=False
    )
    return tok


def save_tokenizer(tokenizer: Tokenizer, out_dir: str | os.PathLike, model_max_length: int = 8192):
    """Writes `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` (the files
    `PreTrainedTokenizerFast.from_pretrained(out_dir)` reads)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    ids = special_ids(tokenizer)
    names = {role: tokenizer.id_to_token(getattr(ids, role)) for role in _ROLE_NAMES}
    special_map = {
        "bos_token": names["cls"],
        "eos_token": names["sep"],
        "cls_token": names["cls"],
        "sep_token": names["sep"],
        "pad_token": names["pad"],
        "mask_token": names["mask"],
        "unk_token": names["unk"],
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        **special_map,
    }
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Loads a `tokenizer.json` file, a directory holding one (ours or any HF model's), or a hub
    name (needs network access; a missing local path is never tried there)."""
    p = locate(path, f"tokenizer {str(path)!r}", repo_type="model")
    if isinstance(p, Path) and p.is_dir():
        p = p / "tokenizer.json"
        if not p.is_file():
            raise FileNotFoundError(f"no tokenizer.json in tokenizer directory {str(path)!r}")
    if isinstance(p, Path):
        return Tokenizer.from_file(str(p))
    try:
        return Tokenizer.from_pretrained(str(path))
    except Exception as e:  # offline, or no such repo
        raise FileNotFoundError(
            f"tokenizer {str(path)!r}: not local and not loadable from the hub"
            f" ({type(e).__name__}: {e})"
        ) from e


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text without special tokens, through the parallel batch API."""
    return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def encode_with_specials(tokenizer: Tokenizer, texts: Sequence[str],
                         max_length: int) -> list[list[int]]:
    """Each text as the model reads it: CLS, its first `max_length - 2` tokens, SEP (no padding).

    The specials are added here rather than by the tokenizer's post-processor, so a tokenizer
    without one (or with another template) still gives the rows the model was trained on.
    """
    if max_length < 2:
        raise ValueError(f"max_length {max_length} leaves no room for CLS and SEP")
    ids = special_ids(tokenizer)
    return [[ids.cls, *toks[: max_length - 2], ids.sep] for toks in encode_texts(tokenizer, texts)]


def tokenize_texts(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    max_length: int,
    pad_to: int | None = None,
) -> dict[str, np.ndarray]:
    """Texts to `input_ids` / `attention_mask` int32 arrays of shape [B, L].

    Each row is `encode_with_specials`'s, then PAD. L is `pad_to` if given (a fixed shape avoids
    recompiles), else `max_length`.
    """
    L = pad_to or max_length
    if L < max_length:
        raise ValueError(f"pad_to {pad_to} is shorter than max_length {max_length}")
    input_ids_BL = np.full((len(texts), L), special_ids(tokenizer).pad, np.int32)
    attention_mask_BL = np.zeros((len(texts), L), np.int32)
    for b, row in enumerate(encode_with_specials(tokenizer, texts, max_length)):
        input_ids_BL[b, : len(row)] = row
        attention_mask_BL[b, : len(row)] = 1
    return {"input_ids": input_ids_BL, "attention_mask": attention_mask_BL}
