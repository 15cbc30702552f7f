"""`st softlabel` and `st embed`: documents in, a corpus of LM outputs out (a store on disk, or
arrays in memory), and records pointing into the store.

Documents stream through in chunks: a chunk is encoded (only documents new to the cache reach the
LM), written, and only then are its records handed on. Memory grows with the chunk, not with the
corpus, when the output is a store.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from st import progress, records, vocab
from st.cache import LMCache
from st.embedder import EmbedderBackend
from st.errors import InputError, StError
from st.options import LOGITS_DTYPE, EncodeOptions, SoftLabelOptions, VocabOptions
from st.prompt import Prompt
from st.store import Corpus, HiddenWriter, MemoryWriter, Store, StoreWriter, embed_target

if TYPE_CHECKING:  # importing torch takes seconds; bad input should fail before that
    from st.encoder import Encoder
    from st.known import Known
    from st.lm import LM, WholeWords


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


def spool(path: str) -> tuple[str, Callable[[], None]]:
    """Two passes (vocabulary, then encoding) need the input twice: what cannot be read twice
    (stdin, a FIFO, a process substitution such as `<(zcat docs.jsonl.gz)`) goes to a temp file on
    disk, not into memory. Regular files, compressed ones too, are read where they are."""
    if path != "-" and Path(path).is_file():
        return path, lambda: None
    if path != "-" and not Path(path).exists():
        raise InputError("cannot open: No such file or directory", path)
    with tempfile.NamedTemporaryFile(prefix="st-input-", suffix=".jsonl", delete=False) as tmp:
        source = records.open_binary(path)
        try:
            shutil.copyfileobj(source, tmp, 1 << 20)
        finally:
            if path != "-":
                source.close()
    return tmp.name, lambda: Path(tmp.name).unlink(missing_ok=True)


def count_lines(path: str) -> int | None:
    if path == "-" or not Path(path).is_file() or records.is_compressed(path):
        return None
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def documents_of(texts: Iterable[str | dict[str, Any]], text_field: str = "text") -> Iterator[records.Document]:
    """Documents from Python: strings (ids are their positions) or records with `id` and the text
    field, checked as the command line checks its input."""
    seen: set[str] = set()
    for i, item in enumerate(texts):
        if isinstance(item, str):
            record: dict[str, Any] = {"id": str(i), text_field: item}
        elif isinstance(item, dict):
            record = dict(item)
        else:
            raise InputError(f"document {i} is a {type(item).__name__}, not a string or a dict")
        text = record.get(text_field)
        if not isinstance(text, str):
            raise InputError(f"document {i}: field {text_field!r} must be a string, got {type(text).__name__}")
        doc_id = str(record.get("id", i))
        if doc_id in seen:
            raise InputError(f"document {i}: duplicate id {doc_id!r}; ids must be unique")
        seen.add(doc_id)
        yield records.Document(i + 1, doc_id, text if text.strip() else "", record)


def _nonempty(docs: Iterable[records.Document], summary: Summary) -> Iterator[records.Document]:
    for doc in docs:
        if not doc.text:
            summary.skipped_empty.append(doc.line)
            continue
        yield doc


def corpus_vocabulary(docs: Iterable[records.Document], opts: VocabOptions, name: str) -> list[str]:
    """The vocabulary built from the input itself (a first pass, which also validates every record)."""
    texts = (d.text for d in docs if d.text)
    words, n = vocab.build(texts, size=opts.vocab_size, min_df=opts.min_df, max_df=opts.max_df)
    if n == 0:
        raise InputError("no documents (the input is empty or has only empty texts)", name)
    if not words:
        raise InputError("no vocabulary word in the documents (only stop words, digits or short words)", name)
    progress.info(f"vocabulary: {len(words)} words from {n} documents")
    return words


Projector = Callable[[list[str]], vocab.Projection]


def projector(tokenizer: Any) -> Projector:
    return lambda words: vocab.project(words, tokenizer)


def project_vocabulary(project: Projector, words: list[str], unique_prefix: bool, whole_words: int = 0) -> Vocabulary:
    """The vocabulary's words where the LM reads them (`project`: words to their sub-tokens)."""
    projection = project(words)
    if projection.collisions:
        if unique_prefix:
            words = vocab.unique_prefix(words, projection)
            projection = project(words)
            progress.info(f"--unique-prefix: kept {len(words)} words, one per first sub-token")
        elif not whole_words:
            progress.warn(vocab.collision_report(projection))
    whole = None
    if whole_words:
        from st.lm import WholeWords

        whole = WholeWords.from_tokens(projection.tokens, whole_words)
    return Vocabulary(list(words), projection.token_ids, vocab.fingerprint(words), projection.tokens, whole)


class Backend(Protocol):
    """Turns chunks of texts into (hidden, logits) per chunk, in order, through the LM and cache."""

    identity: dict[str, str]  # the LM's, known once started
    hidden_size: int
    documents_computed: int  # cache misses that went through the LM

    def start(self) -> Projector:
        """Loads what encoding needs; returns how the LM's tokenizer projects words."""

    def encode(
        self,
        chunks: Iterator[list[str]],
        vocabulary: Vocabulary | None,
        opts: EncodeOptions,
        advance: Callable[[int], None],
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]: ...


class LocalBackend:
    """The LM in this process."""

    def __init__(
        self,
        load_lm: Callable[[], LM],
        cache: LMCache,
        known: Callable[[], Known | None] | None = None,
        tokenizer: Callable[[], Any] | None = None,
    ) -> None:
        self.load_lm, self.cache = load_lm, cache
        self.known, self.tokenizer = known, tokenizer
        self.identity: dict[str, str] = {}
        self.hidden_size = 0
        self.documents_computed = 0

    def start(self) -> Projector:
        """With the LM's facts recorded (`st.known`), nothing is loaded until a document misses the
        cache: a fully cached run imports neither torch nor transformers."""
        from st.encoder import Encoder

        view = self.known() if self.known else None
        self.encoder = Encoder(view or self.load_lm(), self.cache, self.load_lm)
        self.identity, self.hidden_size = self.encoder.lm.identity, self.encoder.lm.hidden_size
        return self.project

    def project(self, words: list[str]) -> vocab.Projection:
        """Recorded in the LM's facts, so that a later run projects without a tokenizer."""
        from st.known import Known, facts_dir, record_projection

        view, fingerprint = self.encoder.lm, vocab.fingerprint(words)
        if isinstance(view, Known):
            found = vocab.Projection.from_json(words, view.projection(fingerprint))
            if found is not None:
                return found
            tokenizer = view.tokenizer() or (self.tokenizer() if self.tokenizer else self.load_lm().tokenizer)
            projection = vocab.project(words, tokenizer)
            record_projection(view.facts, fingerprint, projection.to_json())
            return projection
        projection = vocab.project(words, view.tokenizer)
        if view.device.type == "cpu":
            record_projection(facts_dir(view.cache_dir, view.identity), fingerprint, projection.to_json())
        return projection

    def encode(
        self,
        chunks: Iterator[list[str]],
        vocabulary: Vocabulary | None,
        opts: EncodeOptions,
        advance: Callable[[int], None],
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for texts in chunks:
            before = self.encoder.documents_computed
            result = encode_chunk(self.encoder, texts, vocabulary, opts, advance)
            self.documents_computed += self.encoder.documents_computed - before
            yield result


def encode_chunk(
    encoder: Encoder,
    texts: list[str],
    vocabulary: Vocabulary | None,
    opts: EncodeOptions,
    advance: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One chunk through the cached encoder: the batch function of every backend."""
    return encoder.encode(
        texts,
        Prompt(opts.template, opts.instruction),
        opts.max_tokens,
        batch_tokens=opts.batch_tokens,
        batch_size=opts.lm_batch_size,
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


def encode_documents(
    documents: Iterable[records.Document],
    backend: Backend,
    opts: EncodeOptions,
    labels: SoftLabelOptions | None = None,
    words: Sequence[str] | None = None,
    unique_prefix: bool = False,
    output: str | Path | None = None,
    force: bool = False,
    text_field: str = "text",
    name: str = "the input",
    total: int | None = None,
    on_records: Callable[[list[dict[str, Any]]], None] | None = None,
) -> tuple[Corpus, Summary]:
    """Encode every document into the store at `output` (None: a corpus in memory). With `labels`,
    soft labels over `words` (the vocabulary); without, hidden states only (`st embed`, which adds
    them to a finished soft-label store at `output`). After each chunk is written, its records
    (each input record plus `_st: {store, row}`) go to `on_records`. The LM is loaded once the
    first chunk of input has been read and checked, so that bad input fails at once."""
    summary = Summary()
    kind = "softlabel" if labels is not None else "embed"
    writer: StoreWriter | HiddenWriter | MemoryWriter
    target = embed_target(output) if kind == "embed" and output is not None else None
    store_path = str(Path(output).absolute()) if output is not None else None
    chunks = _chunked(_nonempty(documents, summary), opts.chunk_rows)
    first = next(chunks, None)
    if first is None:
        raise InputError("no documents (the input is empty or has only empty texts)", name)
    project = backend.start()
    vocabulary = None
    if labels is not None:
        if words is None:
            raise InputError("soft labels need a vocabulary")
        vocabulary = project_vocabulary(project, list(words), unique_prefix, labels.whole_words)
    pending: deque[list[records.Document]] = deque()

    def texts() -> Iterator[list[str]]:
        for chunk in itertools.chain([first], chunks):
            pending.append(chunk)
            yield [d.text for d in chunk]

    prompt = {"template": opts.template, "instruction": opts.instruction}
    # The store is created (or refused) before any LM work, so a bad output path fails at once and
    # an interrupted run leaves an incomplete store that says how to resume.
    # A sentence embedder (`--embedder`) is recorded beside the LM identity it stands for; a
    # soft-label store's LM is the one that gave the soft labels.
    embedder = {"embedder": backend.source} if isinstance(backend, EmbedderBackend) else {}
    lm_identity = backend.identity
    if isinstance(backend, EmbedderBackend) and backend.lm is not None and labels is not None:
        lm_identity = backend.lm.identity
    if target is not None:
        source = {"lm": backend.identity, "max_tokens": opts.max_tokens, "prompt": prompt, **embedder}
        writer = HiddenWriter(target, backend.hidden_size, source, chunk_rows=opts.chunk_rows)
        progress.info(f"adding hidden states to the soft-label store {target.path}")
    else:
        attrs: dict[str, Any] = {
            "kind": kind,
            "lm": lm_identity,
            "prompt": prompt,
            "max_tokens": opts.max_tokens,
            "hidden_size": backend.hidden_size,
            "text_field": text_field,
            **embedder,
        }
        if vocabulary is not None and labels is not None:
            attrs.update(
                temperature=labels.temperature,
                vocab_fingerprint=vocabulary.fingerprint,
                vocab_size=len(vocabulary.words),
                whole_words=labels.whole_words,
            )
        words_out = vocabulary.words if vocabulary else None
        dtype = labels.logits_dtype if labels is not None else LOGITS_DTYPE
        if output is None:
            writer = MemoryWriter(attrs, backend.hidden_size, words_out, dtype)
        else:
            writer = StoreWriter(output, attrs, backend.hidden_size, words_out, opts.chunk_rows, force, dtype)
    with progress.task(f"st {kind}", total=total) as bar:
        for hidden, logits in backend.encode(texts(), vocabulary, opts, bar.advance):
            chunk = pending.popleft()
            bad = ~np.isfinite(hidden).all(axis=1)
            if logits is not None:
                bad |= ~np.isfinite(logits).all(axis=1)
            if bad.any():
                doc = chunk[int(np.argmax(bad))]
                raise StError(f"the LM gave NaN or Inf for document {doc.id!r}; try --dtype float32", name, doc.line)
            chunk_texts = [d.text for d in chunk]
            bow = None
            if vocabulary is not None:
                bow = vocab.bag_of_words(chunk_texts, vocabulary.words)
                summary.no_vocab_word += int((np.diff(bow.indptr) == 0).sum())
            serialized = [records.dumps(d.record).decode() for d in chunk]
            row = writer.append([d.id for d in chunk], serialized, hidden, logits, bow)
            if on_records is not None and store_path is not None:
                # after the store holds the rows they point to
                on_records([records.with_store_ref(d.record, store_path, row + i) for i, d in enumerate(chunk)])
            summary.documents += len(chunk)
        bar.finish()
    summary.lm_documents = backend.documents_computed
    writer.finish()
    if summary.skipped_empty:
        shown = ", ".join(map(str, summary.skipped_empty[:5]))
        more = ", ..." if len(summary.skipped_empty) > 5 else ""
        progress.warn(
            f"{name}: skipped {len(summary.skipped_empty)} empty documents (lines {shown}{more}); "
            "they have no record in the output"
        )
    if vocabulary is not None and summary.no_vocab_word:
        progress.info(f"{summary.no_vocab_word} documents contain no vocabulary word")
    where = store_path or "memory"
    progress.info(
        f"{summary.documents} documents in {where} "
        f"({summary.lm_documents} through the LM, {summary.documents - summary.lm_documents} from the cache)"
    )
    if isinstance(writer, MemoryWriter):
        assert writer.corpus is not None
        return writer.corpus, summary
    return Store(writer.path), summary
