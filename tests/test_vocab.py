"""Vocabulary rules, projection onto first sub-tokens, and the bag of words."""

from __future__ import annotations

import numpy as np
from transformers import AutoTokenizer

from st import vocab


def test_tokenize_lowercases_first_and_drops_short_words_digits_and_stop_words():
    assert vocab.tokenize("LINQ and SVN in Haskell: the 2 x64 C# apps, don't") == ["linq", "svn", "haskell", "apps"]
    assert vocab.tokenize("Ünïcödé café") == ["ünïcödé", "café"]
    assert vocab.tokenize("Google's API isn't what I'm using") == ["google", "api", "using"]


def test_build_orders_by_frequency_and_filters_by_document_frequency():
    texts = ["apache apache apache", "apache linq", "linq server", "server", "server", "zebra"]
    words, n = vocab.build(texts, size=10)
    assert n == 6 and words == ["apache", "server", "linq", "zebra"]
    assert vocab.build(texts, size=2)[0] == ["apache", "server"]
    assert vocab.build(texts, size=2000, min_df=2)[0] == ["apache", "server", "linq"]
    assert vocab.build(texts, size=2000, max_df=0.4)[0] == ["apache", "linq", "zebra"]  # server is in 3 of 6


def test_projection_is_the_first_sub_token_of_space_word(embedded_folder):
    tok = AutoTokenizer.from_pretrained(embedded_folder)
    words = ["javascript", "jquery", "jdbc", "apache", "haskell", "linq"]
    p = vocab.project(words, tok)
    expected = [tok.encode(" " + w, add_special_tokens=False)[0] for w in words]
    assert p.token_ids.tolist() == expected
    j = tok.encode(" j", add_special_tokens=False)[0]
    assert p.collisions[j] == ["javascript", "jquery", "jdbc"]
    assert vocab.unique_prefix(words, p) == ["javascript", "apache", "haskell", "linq"]
    assert "3 words share 1 first sub-tokens" in vocab.collision_report(p)
    assert "' j': javascript" in vocab.collision_report(p)  # the shared token as the tokenizer decodes it


class _SentencePieceLike:
    """A tokenizer that emits a bare space piece before some words, as SentencePiece ones do."""

    def __call__(self, texts, add_special_tokens=False):
        table = {" apple": [5, 9], " banana": [6], " cherry": [5, 7, 8]}
        return {"input_ids": [table[t] for t in texts]}

    def decode(self, ids):
        return {5: " ", 6: " banana", 7: "cher", 8: "ry", 9: "apple"}[ids[0]]


def test_projection_skips_a_bare_space_piece():
    p = vocab.project(["apple", "banana", "cherry"], _SentencePieceLike())
    assert p.token_ids.tolist() == [9, 6, 7] and not p.collisions


def test_bag_of_words_counts_vocabulary_words():
    bow = vocab.bag_of_words(["Apache apache LINQ", "nothing here", "linq"], ["apache", "linq"])
    assert bow.dtype == np.float32 and bow.toarray().tolist() == [[2, 1], [0, 0], [0, 1]]


def test_fingerprint_depends_on_words_and_order():
    assert vocab.fingerprint(["a", "b"]) != vocab.fingerprint(["b", "a"])
    assert vocab.fingerprint(["a", "b"]) == vocab.fingerprint(["a", "b"])


def test_stop_words_are_scikit_learns_without_importing_it():
    import subprocess
    import sys

    code = (
        "import sys; from st.vocab import stop_words; words = stop_words(); "
        "assert 'sklearn' not in sys.modules; "
        "from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS; "
        "assert words == frozenset(ENGLISH_STOP_WORDS) and len(words) > 300"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
