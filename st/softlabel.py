"""`st softlabel` and `st embed`: documents in, a store of LM outputs and records pointing into it out.

Documents stream through in chunks: a chunk is encoded (only documents new to the cache reach the
LM), written to the store, and only then are its records printed. Memory grows with the chunk,
not with the corpus.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import numpy as np

from st import console, records, vocab
from st.cache import LMCache
from st.errors import InputError, StError
from st.prompt import Prompt
from st.store import CHUNK_ROWS, HiddenWriter, StoreWriter, embed_target

if TYPE_CHECKING:  # importing torch takes seconds; bad input should fail before that
    from st.lm import LM, WholeWords


@dataclass
class Options:
    text_field: str = "text"
    lines: bool = False
    prompt: Prompt = field(default_factory=Prompt)
    max_tokens: int = 512
    temperature: float = 3.0
    batch_tokens: int | None = None
    batch_size: int | None = None
    chunk_rows: int = CHUNK_ROWS
    force: bool = False  # replace a store even if it holds trained models
    whole_words: int = 0  # shared first sub-tokens per document scored by their second sub-token


@dataclass
class Summary:
    documents: int = 0
    skipped_empty: list[int] = field(default_factory=list)
    no_vocab_word: int = 0
    lm_documents: int = 0


@dataclass
class Vocabulary:
    words: list[str]
    token_ids: np.ndarray
    fingerprint: str
    tokens: list[list[int]] = field(default_factory=list)  # each word's LM sub-tokens
    whole_words: WholeWords | None = None


def spool_stdin(path: str) -> tuple[str, Callable[[], None]]:
    """Two passes (vocabulary, then encoding) need the input twice: stdin goes to a temp file on
    disk, not into memory."""
    if path != "-":
        return path, lambda: None
    tmp = tempfile.NamedTemporaryFile(prefix="st-stdin-", suffix=".jsonl", delete=False)
    with tmp:
        shutil.copyfileobj(records.open_binary("-"), tmp, 1 << 20)
    return tmp.name, lambda: Path(tmp.name).unlink(missing_ok=True)


def count_lines(path: str) -> int | None:
    if path == "-" or not Path(path).is_file():
        return None
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def _documents(path: str, opts: Options, summary: Summary, name: str) -> Iterator[records.Document]:
    for doc in records.read_documents(path, opts.text_field, opts.lines, name=name):
        if not doc.text:
            summary.skipped_empty.append(doc.line)
            continue
        yield doc


def corpus_vocabulary(path: str, opts: Options, size: int, name: str) -> list[str]:
    """The vocabulary built from the input itself (a first pass, which also validates every record)."""
    texts = (d.text for d in _documents(path, opts, Summary(), name))
    words, n = vocab.build(texts, size=size)
    if n == 0:
        raise InputError("no documents (the input is empty or has only empty texts)", name)
    if not words:
        raise InputError("no vocabulary word in the documents (only stop words, digits or short words)", name)
    console.info(f"vocabulary: {len(words)} words from {n} documents")
    return words


def project_vocabulary(tokenizer: Any, words: list[str], unique_prefix: bool, whole_words: int = 0) -> Vocabulary:
    projection = vocab.project(words, tokenizer)
    if projection.collisions:
        if unique_prefix:
            words = vocab.unique_prefix(words, projection)
            projection = vocab.project(words, tokenizer)
            console.info(f"--unique-prefix: kept {len(words)} words, one per first sub-token")
        elif not whole_words:
            console.warn(vocab.collision_report(projection, tokenizer))
    whole = None
    if whole_words:
        from st.lm import WholeWords

        whole = WholeWords.from_tokens(projection.tokens, whole_words)
    return Vocabulary(list(words), projection.token_ids, vocab.fingerprint(words), projection.tokens, whole)


class Encoder(Protocol):
    """Turns chunks of texts into (hidden, logits) per chunk, in order, through the LM and cache."""

    identity: dict[str, str]  # the LM's, known once started
    hidden_size: int
    documents_computed: int  # cache misses that went through the LM

    def start(self) -> Any:
        """Loads what encoding needs and returns the LM's tokenizer."""

    def encode(
        self, chunks: Iterator[list[str]], vocabulary: Vocabulary | None, opts: Options, advance: Callable[[int], None]
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]: ...


class LocalEncoder:
    """The LM in this process."""

    def __init__(self, load_lm: Callable[[], LM], cache: LMCache) -> None:
        self.load_lm, self.cache = load_lm, cache
        self.identity: dict[str, str] = {}
        self.hidden_size = 0
        self.documents_computed = 0

    def start(self) -> Any:
        self.lm = self.load_lm()
        self.identity, self.hidden_size = self.lm.identity, self.lm.hidden_size
        return self.lm.tokenizer

    def encode(
        self, chunks: Iterator[list[str]], vocabulary: Vocabulary | None, opts: Options, advance: Callable[[int], None]
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for texts in chunks:
            before = self.lm.documents_computed
            result = encode_chunk(self.lm, texts, vocabulary, opts, self.cache, advance)
            self.documents_computed += self.lm.documents_computed - before
            yield result


def encode_chunk(
    lm: LM,
    texts: list[str],
    vocabulary: Vocabulary | None,
    opts: Options,
    cache: LMCache,
    advance: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One chunk through the LM and the cache: the batch function of every backend."""
    return lm.encode(
        texts,
        opts.prompt,
        opts.max_tokens,
        cache,
        batch_tokens=opts.batch_tokens,
        batch_size=opts.batch_size,
        vocab_token_ids=vocabulary.token_ids if vocabulary else None,
        vocab_fingerprint=vocabulary.fingerprint if vocabulary else None,
        on_batch=advance,
        whole_words=vocabulary.whole_words if vocabulary else None,
    )


def _chunked(docs: Iterator[records.Document], size: int) -> Iterator[list[records.Document]]:
    chunk: list[records.Document] = []
    for doc in docs:
        chunk.append(doc)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def encode_corpus(
    path: str,
    output: str,
    encoder: Encoder,
    opts: Options,
    out: IO[bytes],
    words: list[str] | None = None,
    unique_prefix: bool = False,
    kind: str = "softlabel",
    name: str | None = None,
) -> Summary:
    """Encode every document of `path` into the store at `output`; print the records to `out`.
    The LM is loaded once the first chunk of input has been read and checked, so that bad input
    fails at once. With `kind="softlabel"`, `words` is the vocabulary."""
    name = name or records.source_name(path)
    summary = Summary()
    writer: StoreWriter | HiddenWriter
    target = embed_target(output) if kind == "embed" else None
    store_path = str(Path(output).absolute())
    chunks = _chunked(_documents(path, opts, summary, name), opts.chunk_rows)
    first = next(chunks, None)
    if first is None:
        raise InputError("no documents (the input is empty or has only empty texts)", name)
    tokenizer = encoder.start()
    vocabulary = None
    if kind == "softlabel":
        assert words is not None
        vocabulary = project_vocabulary(tokenizer, words, unique_prefix, opts.whole_words)
    pending: deque[list[records.Document]] = deque()

    def texts() -> Iterator[list[str]]:
        for chunk in itertools.chain([first], chunks):
            pending.append(chunk)
            yield [d.text for d in chunk]

    # The store is created (or refused) before any LM work, so a bad output path fails at once and
    # an interrupted run leaves an incomplete store that says how to resume.
    if target is not None:
        source = {
            "lm": encoder.identity,
            "max_tokens": opts.max_tokens,
            "prompt": {"template": opts.prompt.template, "instruction": opts.prompt.instruction},
        }
        writer = HiddenWriter(target, encoder.hidden_size, source, chunk_rows=opts.chunk_rows)
        console.info(f"adding hidden states to the soft-label store {target.path}")
    else:
        attrs = {
            "kind": kind,
            "lm": encoder.identity,
            "prompt": {"template": opts.prompt.template, "instruction": opts.prompt.instruction},
            "max_tokens": opts.max_tokens,
            "hidden_size": encoder.hidden_size,
            "text_field": opts.text_field,
        }
        if vocabulary is not None:
            attrs.update(
                temperature=opts.temperature,
                vocab_fingerprint=vocabulary.fingerprint,
                vocab_size=len(vocabulary.words),
                whole_words=opts.whole_words,
            )
        writer = StoreWriter(
            output,
            attrs,
            encoder.hidden_size,
            vocabulary.words if vocabulary else None,
            chunk_rows=opts.chunk_rows,
            force=opts.force,
        )
    with console.progress(f"st {kind}", total=count_lines(path)) as bar:
        for hidden, logits in encoder.encode(texts(), vocabulary, opts, bar.advance):
            chunk = pending.popleft()
            bad = ~np.isfinite(hidden).all(axis=1)
            if logits is not None:
                bad |= ~np.isfinite(logits).all(axis=1)
            if bad.any():
                doc = chunk[int(np.argmax(bad))]
                raise StError(f"{name}:{doc.line}: the LM gave NaN or Inf for document {doc.id!r}; try --dtype float32")
            chunk_texts = [d.text for d in chunk]
            bow = None
            if vocabulary is not None:
                bow = vocab.bag_of_words(chunk_texts, vocabulary.words)
                summary.no_vocab_word += int((np.diff(bow.indptr) == 0).sum())
            serialized = [records.dumps(d.record).decode() for d in chunk]
            row = writer.append([d.id for d in chunk], serialized, hidden, logits, bow)
            lines = [
                records.dumps(records.with_store_ref(d.record, store_path, row + i)) + b"\n"
                for i, d in enumerate(chunk)
            ]
            out.write(b"".join(lines))  # after the store holds the rows they point to
            out.flush()
            summary.documents += len(chunk)
        bar.finish()
    summary.lm_documents = encoder.documents_computed
    writer.finish()
    if summary.skipped_empty:
        shown = ", ".join(map(str, summary.skipped_empty[:5]))
        more = ", ..." if len(summary.skipped_empty) > 5 else ""
        console.warn(
            f"{name}: skipped {len(summary.skipped_empty)} empty documents (lines {shown}{more}); "
            "they have no record in the output"
        )
    if vocabulary is not None and summary.no_vocab_word:
        console.info(f"{summary.no_vocab_word} documents contain no vocabulary word")
    console.info(
        f"{summary.documents} documents in {store_path} "
        f"({summary.lm_documents} through the LM, {summary.documents - summary.lm_documents} from the cache)"
    )
    return summary
