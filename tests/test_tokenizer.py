"""Tokenizer: byte-level BPE keeps code exactly, specials in the released order, HF layout."""

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from jbert.data.tokenizer import (
    SPECIAL_TOKENS,
    load_tokenizer,
    save_tokenizer,
    special_ids,
    tokenize_texts,
    train_tokenizer,
)

CODE = [
    'def add(a, b):\n    """Add two numbers."""\n    return a + b\n',
    "class Foo:\n\tdef bar(self):\n\t\treturn {'ключ': 'значение', \"emoji\": '🙂'}\n",
    'func main() {\n    fmt.Println("hi")\n}\n',
    "  trailing   spaces   \n\n\n\r\nwindows line\r\n",
] * 30


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CODE, vocab_size=320)


def test_vocab_is_a_multiple_of_64_and_specials_are_first(tok):
    assert tok.get_vocab_size() % 64 == 0
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    ids = special_ids(tok)
    assert (ids.cls, ids.pad, ids.sep, ids.unk, ids.mask) == (0, 1, 2, 3, 4)
    assert set(ids.all) >= {0, 1, 2, 3, 4}


def test_rejects_vocab_not_multiple_of_64():
    with pytest.raises(ValueError, match="multiple of 64"):
        train_tokenizer(CODE, vocab_size=1000)


@pytest.mark.parametrize("text", [*CODE[:4], "x\u00a0=\u20031  # nbsp", "\t\t\n  \n"])
def test_round_trip_keeps_whitespace_exactly(tok, text):
    enc = tok.encode(text)
    assert enc.ids[0] == 0 and enc.ids[-1] == 2  # <s> ... </s>
    assert tok.decode(enc.ids) == text


def test_indentation_becomes_tokens(tok):
    pieces = tok.encode("    return a + b\n", add_special_tokens=False).tokens
    # four spaces (Ġ is the byte-level space) stay together, not dropped or merged with "return"
    assert any(set(p) == {"Ġ"} and len(p) >= 3 for p in pieces), pieces


def test_save_and_load_directory(tok, tmp_path):
    save_tokenizer(tok, tmp_path / "tok")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "tok" / name).is_file()
    cfg = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert cfg["mask_token"] == "<mask>" and cfg["pad_token"] == "<pad>"
    again = load_tokenizer(tmp_path / "tok")
    assert again.encode(CODE[1]).ids == tok.encode(CODE[1]).ids
    assert load_tokenizer(tmp_path / "tok" / "tokenizer.json").get_vocab_size() == (
        tok.get_vocab_size()
    )


def test_load_missing_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_bert_style_tokenizer_is_understood(tmp_path):
    # An existing HF tokenizer with [CLS]-style specials (a WordPiece BERT vocabulary).
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"])}
    bert = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    bert.pre_tokenizer = pre_tokenizers.Whitespace()
    bert.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    (tmp_path / "bert").mkdir()
    bert.save(str(tmp_path / "bert" / "tokenizer.json"))
    ids = special_ids(load_tokenizer(tmp_path / "bert"))
    assert (ids.cls, ids.sep, ids.pad, ids.mask, ids.unk) == (2, 3, 0, 4, 1)


def test_tokenize_texts_pads_and_truncates(tok):
    out = tokenize_texts(tok, ["def", CODE[0] * 10, ""], max_length=16)
    assert out["input_ids"].shape == (3, 16) and out["input_ids"].dtype == np.int32
    np.testing.assert_array_equal(out["attention_mask"].sum(1), [3, 16, 2])
    assert out["input_ids"][1, -1] == 2 and out["input_ids"][0, 3] == 1  # SEP last; PAD after
    assert tokenize_texts(tok, ["a"], 8, pad_to=32)["input_ids"].shape == (1, 32)


def test_pretrained_tokenizer_fast_loads_it(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    save_tokenizer(tok, tmp_path / "tok")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "tok"))
    assert hf.mask_token_id == 4 and hf.pad_token_id == 1
    assert hf(CODE[1])["input_ids"] == tok.encode(CODE[1]).ids
    assert hf.decode(tok.encode(CODE[1]).ids, skip_special_tokens=True) == CODE[1]


def test_split_identifiers_shares_tokens_between_docstrings_and_code(tmp_path):
    texts = ["def read_file(path):\n    return open(path).read()\n",
             "Reads the file at path.", "func ReadFile(name string) ([]byte, error) {",
             "public String getHTTPResponse(int code) { return readFile(code); }"] * 40
    split = train_tokenizer(texts, vocab_size=384, split_identifiers=True)
    plain = train_tokenizer(texts, vocab_size=384)

    def pieces(t, text):
        return set(t.encode(text, add_special_tokens=False).tokens)

    doc = "Reads the file at path."
    # the docstring's words and the code's identifier parts are the same tokens
    assert {"file", "path"} <= pieces(split, doc) & pieces(split, texts[0])
    assert {"read", "_", "file"} <= pieces(split, "read_file")
    assert {"File"} <= pieces(split, "ReadFile") and {"HTTP", "Response"} <= pieces(
        split, "getHTTPResponse")
    assert not {"file", "path"} <= pieces(plain, doc) & pieces(plain, texts[0])  # Ġfile, file
    # one word per piece, as whole-word masking reads them
    enc = split.encode("read_file(path)", add_special_tokens=False)
    assert len(set(enc.word_ids)) == len(enc.tokens) == 6  # read _ file ( path )
    save_tokenizer(split, tmp_path / "tok")
    assert load_tokenizer(tmp_path / "tok").encode(doc).ids == split.encode(doc).ids


def test_lowercase_folds_case_and_keeps_camel_case_words_apart(tmp_path):
    texts = ["def getDictForThread(self):\n    return self.dicts\n",
             "Returns the dict for the current thread.", "class HTTPServer: pass",
             "def utf8Decode(raw): return raw.decode()"] * 40
    lower = train_tokenizer(texts, vocab_size=384, split_identifiers=True, lowercase=True)
    cased = train_tokenizer(texts, vocab_size=384, split_identifiers=True)

    def pieces(t, text):
        return t.encode(text, add_special_tokens=False).tokens

    assert pieces(lower, "getDictForThread") == ["get", "dict", "for", "thread"]
    assert pieces(lower, "HTTPServer") == ["http", "server"]
    assert pieces(lower, "utf8Decode") == ["utf", "8", "decode"]
    assert pieces(cased, "HTTPServer") == ["HTTP", "Server"]  # the same cuts, case kept
    # the code's `Thread` (of getDictForThread) and the docstring's `thread`: one token if folded
    assert pieces(lower, "Thread") == pieces(lower, "thread") == ["thread"]
    assert pieces(cased, "Thread") == ["Thread"] and pieces(cased, "thread") == ["thread"]
    # specials are not folded, offsets point into the original text
    enc = lower.encode("getDict")
    assert enc.tokens[0] == "<s>" and enc.tokens[-1] == "</s>"
    assert [("getDict"[a:b]) for a, b in enc.offsets[1:-1]] == ["get", "Dict"]
    save_tokenizer(lower, tmp_path / "tok")
    assert load_tokenizer(tmp_path / "tok").encode("HTTPServer").ids == lower.encode(
        "HTTPServer").ids
