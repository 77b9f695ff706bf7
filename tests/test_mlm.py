"""MLM stream: masking statistics, packing boundaries, exact resume, disjoint process shards."""

import dataclasses
import json

import numpy as np
import pytest

from jbert.data.mlm import (
    IGNORE_INDEX,
    MIN_PIECE_TOKENS,
    MaskConfig,
    StreamConfig,
    mask_tokens,
    measure_throughput,
    mlm_iterator,
    pack_documents,
)
from jbert.data.tokenizer import SpecialIds, special_ids, train_tokenizer
from jbert.errors import InputError
from jbert.tasks.mlm import ensure_data
from jbert.training.config import DataConfig

IDS = SpecialIds(cls=0, pad=1, sep=2, unk=3, mask=4, all=(0, 1, 2, 3, 4))
WORDS = "alpha beta gamma delta return value index counter buffer parse token yield".split()


def _docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n):
        lines = []
        for _ in range(int(rng.integers(1, 40))):
            words = rng.choice(WORDS, size=int(rng.integers(1, 8)))
            lines.append("    " * int(rng.integers(0, 3)) + "_".join(words) + f" = {d}")
        docs.append(f"# doc{d}\n" + "\n".join(lines))
    return docs


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(_docs(200, seed=1), vocab_size=384)


def _collect(it, n):
    return [next(it) for _ in range(n)]


def test_batch_contract(tok):
    cfg = StreamConfig(seq_len=64, batch_size=4, docs_per_chunk=16)
    b = next(mlm_iterator(_docs(50), tok, cfg))
    assert set(b) == {"input_ids", "labels", "segment_ids", "attention_mask", "token_type_ids"}
    for v in b.values():
        assert v.shape == (4, 64) and v.dtype == np.int32
    np.testing.assert_array_equal(b["attention_mask"], (b["segment_ids"] > 0).astype(np.int32))
    assert not b["token_type_ids"].any()
    # padding only at the end of a row, segment ids 1..n in order
    for seg in b["segment_ids"]:
        real = seg[seg > 0]
        assert (np.diff(real) >= 0).all() and real[0] == 1
        assert (seg[len(real) :] == 0).all()


def test_masking_rates_and_invariants_token_level():
    rng = np.random.default_rng(0)
    cfg = MaskConfig(rate=0.3, whole_word=False)
    V, L = 1000, 512
    pool = np.arange(10, V)
    n_sel = n_cand = n_mask = n_rand = n_keep = 0
    for _ in range(400):
        ids = rng.integers(10, V, size=L).astype(np.int32)
        ids[::50] = 0  # specials sprinkled in: never maskable
        maskable = ids != 0
        out, labels = mask_tokens(ids, maskable, np.ones(L, bool), rng, cfg, 4, pool)
        sel = labels != IGNORE_INDEX
        assert not sel[~maskable].any(), "a special token was selected"
        np.testing.assert_array_equal(labels[sel], ids[sel])
        np.testing.assert_array_equal(out[~sel], ids[~sel])
        n_sel += sel.sum()
        n_cand += maskable.sum()
        n_mask += (out[sel] == 4).sum()
        n_rand += ((out[sel] != 4) & (out[sel] != ids[sel])).sum()
        n_keep += (out[sel] == ids[sel]).sum()
    assert abs(n_sel / n_cand - 0.3) < 0.005
    assert abs(n_mask / n_sel - 0.8) < 0.01
    # a random draw equal to the original counts as "kept": 1/990 of the 10%
    assert abs(n_rand / n_sel - 0.1) < 0.01
    assert abs(n_keep / n_sel - 0.1) < 0.01


def test_whole_word_masking_masks_whole_words():
    rng = np.random.default_rng(1)
    cfg = MaskConfig(rate=0.3, whole_word=True)
    L = 512
    n_sel = n_cand = 0
    for _ in range(200):
        ids = rng.integers(10, 500, size=L).astype(np.int32)
        starts = rng.random(L) < 0.4
        starts[0] = True
        maskable = np.ones(L, bool)
        maskable[[0, 255, 511]] = False
        starts[[0, 1, 255, 256]] = True  # specials are their own word
        _, labels = mask_tokens(ids, maskable, starts, rng, cfg, 4, np.arange(10, 500))
        sel = labels != IGNORE_INDEX
        word = np.cumsum(starts)
        for w in np.unique(word[sel]):
            members = (word == w) & maskable
            assert sel[members].all(), "a word was masked in part"
        n_sel += sel.sum()
        n_cand += maskable.sum()
    assert abs(n_sel / n_cand - 0.3) < 0.01


def test_stream_masking_rate_and_specials(tok):
    ids = special_ids(tok)
    cfg = StreamConfig(seq_len=128, batch_size=8, docs_per_chunk=32, num_epochs=1)
    sel = cand = 0
    for b in mlm_iterator(_docs(300), tok, cfg):
        labeled = b["labels"] != IGNORE_INDEX
        assert not np.isin(b["labels"][labeled], ids.all).any(), "a special token was masked"
        assert not labeled[b["attention_mask"] == 0].any()
        real = (b["attention_mask"] == 1) & ~np.isin(
            np.where(labeled, b["labels"], b["input_ids"]), ids.all
        )
        sel += labeled.sum()
        cand += real.sum()
    assert abs(sel / cand - 0.3) < 0.01


def test_packing_never_crosses_a_document(tok):
    ids = special_ids(tok)
    docs = [t.ids for t in tok.encode_batch(_docs(120), add_special_tokens=False)]
    packed = pack_documents(docs, 64, ids)
    seg, doc = packed.segment_ids, packed.doc_index
    # positions that may attend to each other (same segment, both real) hold one document
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] > 0)
    assert (doc[:, :, None] == doc[:, None, :])[same].all()
    # every piece is CLS ... SEP and the pieces of each document rebuild it exactly
    rebuilt = {d: [] for d in range(len(docs))}
    for r in range(seg.shape[0]):
        for s in range(1, seg[r].max() + 1):
            piece = packed.input_ids[r][seg[r] == s]
            assert piece[0] == ids.cls and piece[-1] == ids.sep and len(piece) <= 64
            rebuilt[int(doc[r][seg[r] == s][0])].extend(piece[1:-1].tolist())
    assert all(rebuilt[d] == list(docs[d]) for d in range(len(docs)))


def _file_like_docs(n: int, seed: int = 0) -> list[list[int]]:
    """Token lists with source-file lengths: log-normal, median 300 tokens, a tail of files
    several rows long; ids from 5 up (no specials)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(300), 1.2, n).astype(int), 1, 20_000)
    return [rng.integers(5, 1000, size=k).tolist() for k in lengths]


def test_packing_fills_rows_on_file_like_lengths():
    docs = _file_like_docs(1024)
    real = total = 0
    for start in range(0, len(docs), 64):  # chunk by chunk, as the stream packs
        seg = pack_documents(docs[start : start + 64], 512, IDS).segment_ids
        real += int((seg > 0).sum())
        total += seg.size
    assert real / total >= 0.95


def test_packing_cuts_pieces_at_row_ends_and_keeps_every_token_once():
    L = 128
    docs = _file_like_docs(200, seed=1)
    # no word starts inside documents: only the piece starts may carry one
    packed = pack_documents(docs, L, IDS, [[False] * len(d) for d in docs])
    seg, doc, ws = packed.segment_ids, packed.doc_index, packed.word_start
    pieces = []  # (document, tokens) in row order
    for r in range(seg.shape[0]):
        n_pad = int((seg[r] == 0).sum())
        assert (seg[r][L - n_pad :] == 0).all(), "padding only at the end of a row"
        if r < seg.shape[0] - 1:
            assert n_pad < MIN_PIECE_TOKENS + 2, "a row closed although a piece still fit"
        for s in range(1, seg[r].max() + 1):
            at = np.flatnonzero(seg[r] == s)
            assert (np.diff(at) == 1).all()
            piece = packed.input_ids[r][at]
            # CLS ... SEP inside this row: no piece runs on into the next row
            assert piece[0] == IDS.cls and piece[-1] == IDS.sep
            assert ws[r][at[1]] and not ws[r][at[2:-1]].any()
            assert (doc[r][at] == doc[r][at[0]]).all()
            pieces.append((int(doc[r][at[0]]), piece[1:-1].tolist()))
    assert [d for d, _ in pieces] == sorted(d for d, _ in pieces), "documents out of order"
    for i, (d, toks) in enumerate(pieces[:-1]):
        if pieces[i + 1][0] == d:  # a cut: the piece before it is not a stub
            assert len(toks) >= MIN_PIECE_TOKENS
    rebuilt = {d: [] for d in range(len(docs))}
    for d, toks in pieces:
        rebuilt[d].extend(toks)
    assert all(rebuilt[d] == docs[d] for d in range(len(docs)))


def test_resume_yields_the_same_rows(tok):
    cfg = StreamConfig(seq_len=96, batch_size=3, docs_per_chunk=8, seed=7)
    texts = _docs(80)
    full = _collect(mlm_iterator(texts, tok, cfg), 30)
    for cut in (1, 5, 13):
        it = mlm_iterator(texts, tok, cfg)
        _collect(it, cut)
        state = json.loads(json.dumps(it.get_state()))  # the state survives a JSON round trip
        rest = _collect(mlm_iterator(texts, tok, cfg, state=state), 30 - cut)
        for a, b in zip(full[cut:], rest, strict=True):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])


def test_same_seed_same_stream_other_seed_differs(tok):
    texts = _docs(40)

    def first3(seed):
        cfg = StreamConfig(seq_len=64, batch_size=4, docs_per_chunk=16, seed=seed)
        return _collect(mlm_iterator(texts, tok, cfg), 3)

    a, b, c = first3(3), first3(3), first3(4)
    assert all((x["input_ids"] == y["input_ids"]).all() for x, y in zip(a, b, strict=True))
    assert any((x["input_ids"] != y["input_ids"]).any() for x, y in zip(a, c, strict=True))


def test_process_shards_are_disjoint_and_cover(tok):
    texts = _docs(101)
    cfg = StreamConfig(seq_len=64, batch_size=1, docs_per_chunk=8, num_epochs=1,
                       mask=MaskConfig(rate=0.0))  # fmt: skip
    seen = []
    for p in range(2):
        docs = set()
        for b in mlm_iterator(texts, tok, cfg, process_index=p, process_count=2):
            ids, seg = b["input_ids"][0], b["segment_ids"][0]
            for s in range(1, seg.max() + 1):
                first_line = tok.decode(ids[seg == s].tolist()).split("\n")[0]
                if first_line.startswith("# doc"):
                    docs.add(int(first_line[5:]))
        seen.append(docs)
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(len(texts)))


def test_throughput_is_reported(tok):
    cfg = StreamConfig(seq_len=64, batch_size=4, docs_per_chunk=8)
    stats = measure_throughput(mlm_iterator(_docs(60), tok, cfg), 10)
    # the figures count the real positions of the same stream's first 10 batches
    again = mlm_iterator(_docs(60), tok, cfg)
    real = sum(int(next(again)["attention_mask"].sum()) for _ in range(10))
    assert stats["tokens"] == real
    assert stats["tokens_per_s"] == pytest.approx(real / stats["seconds"])
    assert stats["fill"] == pytest.approx(real / (10 * 4 * 64))


def test_a_stream_of_empty_documents_is_an_error_not_a_spin(tok):
    """Documents without a token give no rows: the stream stops with an error after two epochs'
    worth of empty chunks instead of reading the corpus forever; a process without documents
    is refused at once."""
    from jbert.errors import InputError

    cfg = StreamConfig(seq_len=64, batch_size=4, docs_per_chunk=2)
    with pytest.raises(InputError, match="all 5 documents of this process are empty"):
        next(mlm_iterator([""] * 5, tok, cfg))
    with pytest.raises(InputError, match="no documents for process 2 of 3"):
        mlm_iterator(["a = 1", "b = 2"], tok, cfg, process_index=2, process_count=3)
    # A few empty documents among real ones are just skipped.
    assert next(mlm_iterator(["", *_docs(8), ""], tok, cfg))["input_ids"].shape == (4, 64)


def test_a_data_dir_built_with_another_tokenizer_is_refused_and_kept(tmp_path):
    """The demo's data dir, built by an earlier version with other prepare_* settings, is named
    with the difference instead of feeding a model a tokenizer it was not configured for."""
    root = tmp_path / "data"
    for sub in ("corpus", "tokenizer"):
        (root / sub).mkdir(parents=True)
    summary = {"tokenizer": {"vocab_size": 4096, "split_identifiers": False}}
    (root / "summary.json").write_text(json.dumps(summary))
    same = DataConfig(dir=str(root), prepare_if_missing=True, prepare_vocab_size=4096)
    assert ensure_data(same) == root
    other = dataclasses.replace(same, prepare_vocab_size=8192, prepare_split_identifiers=True)
    with pytest.raises(InputError) as err:
        ensure_data(other)
    assert "vocab_size=4096 (data.prepare_vocab_size=8192)" in str(err.value)
    assert "split_identifiers=False (data.prepare_split_identifiers=True)" in str(err.value)
    assert "lowercase" not in str(err.value)  # a summary without the key: built case-sensitive
    with pytest.raises(InputError, match=r"lowercase=False \(data.prepare_lowercase=True\)"):
        ensure_data(dataclasses.replace(same, prepare_lowercase=True))
    assert json.loads((root / "summary.json").read_text()) == summary  # nothing rebuilt
    # A dir the config does not build (prepare_if_missing off) is the user's to choose.
    assert ensure_data(dataclasses.replace(other, prepare_if_missing=False)) == root
