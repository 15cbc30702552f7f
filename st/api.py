"""`st` from Python: texts and arrays in, typed objects out, nothing printed.

    import st
    lm = st.LM()                                            # the embedded SmolLM2-135M-Instruct
    corpus = st.softlabel(texts, lm=lm, temperature=3)      # in memory; store="docs.zarr" for a store
    model = st.DSL(k=50, seed=0).fit(corpus)
    theta = model.transform(new_texts)                      # the same LM, prompt and cache
    st.evaluate(model, corpus, labels=gold, metrics=["npmi", "purity", "p@10"])
    st.search(model, corpus, "query text", n=10)

Every command of the command line stands on these functions; options are the fields of the
dataclasses in `st.options`, passed as keyword arguments. Progress goes to an optional callback
(`progress=`), messages to the `st` logger.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from st import progress as progress_mod
from st import records
from st.encode import (
    Backend,
    LocalBackend,
    Summary,
    corpus_vocabulary,
    documents_of,
    encode_documents,
    project_vocabulary,
    projector,
)
from st.errors import InputError, UsageError
from st.options import (
    NO_EMBEDDER,
    TOP_WORDS,
    EmbedderOptions,
    EncodeOptions,
    LMOptions,
    Options,
    RankingOptions,
    RayOptions,
    SoftLabelOptions,
    TrainOptions,
    VocabOptions,
)
from st.store import Corpus, Store

if TYPE_CHECKING:
    from st import lm as lm_mod
    from st.cache import LMCache
    from st.known import Known
    from st.train import Fitted

Documents = Iterable[str] | Iterable[dict[str, Any]] | Iterable[str | dict[str, Any]]


def split_options(kwargs: dict[str, Any], *groups: type[Options]) -> list[Any]:
    """Keyword arguments sorted into the option groups that declare them; unknown names fail."""
    known = {f.name: g for g in groups for f in dataclasses.fields(g)}  # type: ignore[arg-type]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise TypeError(f"unexpected option {unknown[0]!r}; options here: {', '.join(sorted(known))}")
    return [g(**{k: v for k, v in kwargs.items() if known[k] is g}) for g in groups]


# --- the language model -------------------------------------------------------------------------


class LM:
    """A causal LM and its cache of outputs: the embedded SmolLM2-135M-Instruct unless `name` is a
    model folder, a .gguf file or a Hugging Face id in the local cache. Loaded on first use."""

    def __init__(
        self,
        name: str | None = None,
        *,
        device: str = LMOptions.device,
        dtype: str = LMOptions.dtype,
        cache_dir: str | Path | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        self.options = LMOptions(
            lm=name,
            device=device,
            dtype=dtype,
            cache_dir=None if cache_dir is None else str(cache_dir),
            trust_remote_code=trust_remote_code,
        )
        self._model: lm_mod.LM | None = None
        self._cache: LMCache | None = None

    @classmethod
    def from_options(cls, opts: LMOptions) -> LM:
        return cls(
            opts.lm,
            device=opts.device,
            dtype=opts.dtype,
            cache_dir=opts.cache_dir,
            trust_remote_code=opts.trust_remote_code,
        )

    @property
    def models_dir(self) -> Path:
        """Where converted models go: the cache folder, or the default one when the cache is a URL."""
        from st.cache import default_cache_dir, is_url

        value = self.options.cache_dir
        return Path(value) if value and not is_url(value) else default_cache_dir()

    @property
    def cache_spec(self) -> str:
        """The LM cache's location as every process (and Ray worker) can open it."""
        from st.cache import is_url

        value = self.options.cache_dir
        return value if value and is_url(value) else str(self.models_dir.absolute())

    @property
    def cache(self) -> LMCache:
        if self._cache is None:
            from st.cache import open_cache

            self._cache = open_cache(self.cache_spec)
        return self._cache

    @property
    def model(self) -> lm_mod.LM:
        if self._model is None:
            from st.lm import LM as Loaded

            o = self.options
            with progress_mod.status("loading the LM"):
                self._model = Loaded(
                    o.lm,
                    device=o.device,
                    dtype=o.dtype,
                    cache_dir=self.models_dir,
                    trust_remote_code=o.trust_remote_code,
                )
        return self._model

    @property
    def known(self) -> Known | None:
        """The LM as recorded when it was last loaded here (`st.known`), while it is not loaded."""
        if self._model is not None:
            return None
        from st.known import Known

        o = self.options
        return Known.find(o.lm, o.device, o.dtype, self.models_dir)

    @property
    def identity(self) -> dict[str, str]:
        return self.model.identity

    def tokenizer(self) -> Any:
        """The tokenizer alone (no weights loaded): what decides the vocabulary's first sub-tokens."""
        if self._model is not None:
            return self._model.tokenizer
        from st.lm import load_tokenizer, resolve

        return load_tokenizer(resolve(self.options.lm), self.models_dir, self.options.trust_remote_code)

    def backend(self, ray: RayOptions | None = None) -> Backend:
        if ray is not None and ray.backend == "ray":
            from st.ray_backend import LMSpec, RayBackend

            o = self.options
            spec = LMSpec(
                o.lm, o.device, o.dtype, str(self.models_dir.absolute()), self.cache_spec, o.trust_remote_code
            )
            return RayBackend(spec, ray)
        return LocalBackend(lambda: self.model, self.cache, lambda: self.known, self.tokenizer)

    def __repr__(self) -> str:
        return f"st.LM({self.options.lm or 'embedded SmolLM2-135M-Instruct'!s}, device={self.options.device})"


def trained_lm(fitted: Fitted, where: str | None = None, **options: Any) -> LM:
    """The LM (and dtype) a topic model's inputs came from; `where` overrides its location."""
    source = fitted.config.get("input_source") or fitted.config
    identity = source.get("lm") or {}
    if source.get("embedder"):  # a sentence embedder's input: the LM beside it, if any
        identity = source["embedder"].get("with_lm") or {}
    name = where or identity.get("model")
    if isinstance(name, str) and name.startswith("embedded:"):
        name = None
    return LM(name, dtype=identity.get("dtype", "auto"), **options)


# --- documents in, corpora out ------------------------------------------------------------------


def vocabulary(texts: Documents, *, lm: LM | None = None, text_field: str = "text", **options: Any) -> list[str]:
    """The topic vocabulary of `st vocab`: the most frequent content words, one per first LM
    sub-token with `unique_prefix=True`. Options: those of `st.options.VocabOptions`."""
    (opts,) = split_options(options, VocabOptions)
    words = corpus_vocabulary(documents_of(texts, text_field), opts, "the documents")
    return project_vocabulary(projector((lm or LM()).tokenizer()), words, opts.unique_prefix).words


def embedder_backend(lm: LM, name: str, with_lm: bool, ray: RayOptions | None = None) -> Backend:
    """The sentence embedder `name` as a backend (`st embed --embedder`), beside the LM's own
    backend with `with_lm` (and always in `st softlabel --embedder`, whose soft labels come from
    the LM). It runs in this process; with `--backend ray` the LM runs on the cluster."""
    from st import embedder as embedder_mod

    model = embedder_mod.SentenceEmbedder(embedder_mod.resolve(name), lm.options.device, cache=lm.cache)
    return embedder_mod.EmbedderBackend(model, lm.backend(ray) if with_lm else None)


def encode_backend(
    lm: LM, kind: str, labels: SoftLabelOptions | None, embedder: EmbedderOptions | None, ray: RayOptions | None
) -> Backend:
    """What computes the documents' hidden states (and soft labels): the LM alone, or a sentence
    embedder alone or beside it."""
    if kind == "softlabel" and labels is not None and labels.embedder != NO_EMBEDDER:
        return embedder_backend(lm, labels.embedder, True, ray)
    if kind == "embed" and embedder is not None and embedder.embedder:
        return embedder_backend(lm, embedder.embedder, embedder.with_lm, ray)
    return lm.backend(ray)


def encode(
    documents: Callable[[], Iterable[records.Document]],
    kind: str,
    lm: LM,
    opts: EncodeOptions,
    labels: SoftLabelOptions | None = None,
    vocab: VocabOptions | None = None,
    words: Sequence[str] | None = None,
    ray: RayOptions | None = None,
    output: str | Path | None = None,
    force: bool = False,
    text_field: str = "text",
    name: str = "the documents",
    total: int | None = None,
    on_records: Callable[[list[dict[str, Any]]], None] | None = None,
    embedder: EmbedderOptions | None = None,
) -> tuple[Corpus, Summary]:
    """`st softlabel` / `st embed` on documents that `documents()` reads (twice when the
    vocabulary is built from them); `st embed` with a sentence embedder when `embedder` names one."""
    if kind == "softlabel" and words is None:
        words = corpus_vocabulary(documents(), vocab or VocabOptions(), name)
    return encode_documents(
        documents(),
        encode_backend(lm, kind, labels or SoftLabelOptions(), embedder, ray),
        opts,
        labels if kind == "softlabel" else None,
        words,
        vocab.unique_prefix if vocab else False,
        output,
        force,
        text_field,
        name,
        total,
        on_records,
    )


def softlabel(
    texts: Documents,
    *,
    lm: LM | None = None,
    store: str | Path | None = None,
    words: Sequence[str] | None = None,
    text_field: str = "text",
    force: bool = False,
    progress: progress_mod.Callback | None = None,
    **options: Any,
) -> Corpus:
    """Soft labels and hidden states of `texts` (strings, or records with `id` and the text field):
    a corpus in memory, or the store at `store`. The vocabulary is `words`, or built from the
    texts. Options: the fields of `EncodeOptions`, `SoftLabelOptions`, `VocabOptions` and
    `RayOptions` (e.g. `temperature=3`, `max_tokens=512`, `vocab_size=2000`, `backend="ray"`)."""
    enc, labels, vocab, ray = split_options(options, EncodeOptions, SoftLabelOptions, VocabOptions, RayOptions)
    items = list(texts)
    with progress_mod.reporting(progress):
        corpus, _ = encode(
            lambda: documents_of(items, text_field),
            "softlabel",
            lm or LM(),
            enc,
            labels,
            vocab,
            words,
            ray,
            store,
            force,
            text_field,
            total=len(items),
        )
    return corpus


def embed(
    texts: Documents,
    *,
    lm: LM | None = None,
    store: str | Path | None = None,
    text_field: str = "text",
    force: bool = False,
    progress: progress_mod.Callback | None = None,
    **options: Any,
) -> Corpus:
    """The LM's hidden states of `texts` under the prompt (`st embed`), or with `embedder=` a
    sentence embedder's (beside the LM's with `with_lm=True`): a corpus in memory, or the store at
    `store` (a finished soft-label store of the same documents gets them added).
    Options: the fields of `EncodeOptions`, `EmbedderOptions` and `RayOptions`."""
    enc, embedder, ray = split_options(options, EncodeOptions, EmbedderOptions, RayOptions)
    items = list(texts)
    with progress_mod.reporting(progress):
        corpus, _ = encode(
            lambda: documents_of(items, text_field),
            "embed",
            lm or LM(),
            enc,
            ray=ray,
            output=store,
            force=force,
            text_field=text_field,
            total=len(items),
            embedder=embedder,
        )
    return corpus


def open_store(path: str | Path) -> Store:
    """A store written by `st softlabel` / `st embed` (or `st.softlabel(store=...)`)."""
    return Store(path)


# --- topic models -------------------------------------------------------------------------------


class TopicModel:
    """A topic model trained on soft labels (DSL, the default) or a bag-of-words baseline, with
    the fit / transform / save / load of scikit-learn and BERTopic. Options: the fields of
    `st.options.TrainOptions` (`backbone="etm"`, `epochs=100`, `temperature=...`, ...)."""

    preset: dict[str, Any] = {}

    def __init__(
        self,
        k: int = TrainOptions.k,
        *,
        lm: LM | None = None,
        top_words: int = TOP_WORDS,
        progress: progress_mod.Callback | None = None,
        **options: Any,
    ) -> None:
        (self.options,) = split_options({**self.preset, **options, "k": k}, TrainOptions)
        self.lm = lm
        self.top_words = top_words
        self.progress = progress
        self.fitted: Fitted | None = None
        self.theta_: np.ndarray | None = None  # θ of the documents it was fitted on

    @classmethod
    def _from_fitted(cls, fitted: Fitted, lm: LM | None = None) -> TopicModel:
        saved = fitted.config["training"]
        defaults = TrainOptions()
        # Options added since a model was saved take their defaults.
        training = {f.name: saved.get(f.name, getattr(defaults, f.name)) for f in dataclasses.fields(TrainOptions)}
        training["betas"] = tuple(training["betas"])
        model = TopicModel.__new__(TopicModel)
        model.options = TrainOptions(**training)
        model.lm, model.top_words, model.progress = lm, TOP_WORDS, None
        model.fitted, model.theta_ = fitted, None
        return model

    def _trained(self) -> Fitted:
        if self.fitted is None:
            raise UsageError("the model is not fitted yet; call fit() first")
        return self.fitted

    def fit(
        self, corpus: Corpus, rows: Sequence[int] | np.ndarray | None = None, output: str | Path | None = None
    ) -> TopicModel:
        """Train on the corpus (or its `rows`), write θ of every document into it, save the model
        (to `output`, or inside a store) and drop the training checkpoint, as `st train` does."""
        from st.train import fit

        with progress_mod.reporting(self.progress):
            self.fitted, self.theta_ = fit(
                corpus, None if rows is None else np.asarray(rows), self.options, output, self.top_words
            )
        return self

    def fit_transform(self, corpus: Corpus, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        self.fit(corpus, rows)
        assert self.theta_ is not None
        return self.theta_

    def transform(self, documents: Corpus | Documents, text_field: str = "text", **options: Any) -> np.ndarray:
        """θ (N x K) of a corpus made with the model's LM and prompt, or of new texts, which go through
        the same LM, prompt and cache (an empty text has no topics: its row is all zeros).
        Options: `lm_batch_size`, `batch_tokens`."""
        from st.infer import check_store, infer

        fitted = self._trained()
        if isinstance(documents, Corpus):
            if fitted.config["training"]["input"] == "hidden":
                check_store(fitted, documents.attrs, documents.name)
            return fitted.theta_of(documents)
        enc = split_options(options, EncodeOptions)[0] if options else EncodeOptions()
        docs = list(documents_of(documents, text_field))
        lm = self.lm = self.lm or trained_lm(fitted)  # loaded once, kept for the next call
        theta = np.zeros((len(docs), int(fitted.config["training"]["k"])), np.float32)
        with progress_mod.reporting(self.progress):
            chunks = infer(
                docs, fitted, lambda: lm.model, lm.cache, enc.batch_tokens, enc.lm_batch_size, known=lambda: lm.known
            )
            for chunk, part in chunks:
                theta[[d.line - 1 for d in chunk]] = part
        return theta

    @property
    def id(self) -> str:
        return self._trained().id

    @property
    def k(self) -> int:
        return self.options.k

    @property
    def vocab(self) -> list[str]:
        return self._trained().vocab

    @property
    def config(self) -> dict[str, Any]:
        return self._trained().config

    @property
    def beta(self) -> np.ndarray:
        """K x V: each topic's distribution over the vocabulary."""
        return self._trained().topic_word()

    def topics(self, top_words: int | None = None) -> list[list[str]]:
        """Each topic's top words, ranked as `st train` prints them."""
        return [t["words"] for t in self.topic_records(top_words)]

    def topic_records(self, top_words: int | None = None) -> list[dict[str, Any]]:
        """What `st train` prints: {topic, words, weights} per topic."""
        return self._trained().topics(top_words or self.top_words)

    @property
    def names(self) -> list[str] | None:
        """Each topic's name, once `name_topics` wrote them (kept in the model folder)."""
        return self._trained().names

    def name_topics(
        self,
        corpus: Corpus,
        *,
        lm: LM | None = None,
        template: str | None = None,
        documents: int = 3,
        top_words: int = 10,
        progress: progress_mod.Callback | None = None,
    ) -> list[str]:
        """Name each topic (2-5 words) with an LM that reads its top words and its `documents` most
        representative documents of the corpus it was trained on; greedy decoding, answers cached.
        `lm`: the embedded LM by default. `template`: the request, with {words} and {documents}.
        The names are saved into the model folder's topics.json when the model has one."""
        from st import naming
        from st.train import save_names

        fitted = self._trained()
        if template is not None:
            naming.check_template(template)  # before the LM loads
        theta = stored_theta(self, corpus)
        rows = naming.representative_rows(theta, documents)
        field = corpus.attrs.get("text_field", "text")
        texts = []
        for d in rows:
            stored = zip(corpus.take("records", d), d, strict=True)
            texts.append([str(records.parse_object(str(r), corpus.name, j).get(field, "")) for r, j in stored])
        lm = lm or LM()
        with progress_mod.reporting(progress or self.progress):
            fitted.names = naming.topic_names(self.topics(top_words), texts, lm.model, lm.cache, template)
        save_names(fitted, self.top_words)
        return fitted.names

    def save(self, folder: str | Path) -> None:
        from st.train import save

        save(self._trained(), Path(folder), self.top_words)

    def __repr__(self) -> str:
        state = f"id={self.fitted.id}" if self.fitted else "not fitted"
        return f"<st.{type(self).__name__} k={self.k} backbone={self.options.backbone} {state}>"


class DSL(TopicModel):
    """Topics from LM soft labels: the encoder reads hidden states, the decoder rebuilds soft labels."""


class ProdLDA(TopicModel):
    """The bag-of-words ProdLDA baseline."""

    preset = {"target": "bow", "input": "bow"}


class CTM(TopicModel):
    """The contextualised baseline: hidden states in, bag of words out."""

    preset = {"target": "bow", "input": "hidden"}


class LDA(TopicModel):
    """gensim's LdaModel on the bag of words."""

    preset = {"backbone": "lda"}


def load(spec: str | Path, lm: LM | None = None) -> TopicModel:
    """A saved model: a folder (`st train -o`, `model.save`) or `STORE#MODEL-ID`."""
    from st.train import load as load_fitted

    fitted, _ = load_fitted(str(spec))
    return TopicModel._from_fitted(fitted, lm)


# --- evaluation and search ----------------------------------------------------------------------


def stored_theta(model: TopicModel, corpus: Corpus) -> np.ndarray:
    """θ that training wrote into the corpus; a model trained on another corpus has none there."""
    stored = corpus.theta(model.id)
    if stored is None:
        raise no_theta(model, corpus)
    return stored


def no_theta(model: TopicModel, corpus: Corpus) -> InputError:
    return InputError(
        f"the store has no θ for model {model.id}; train the model on this store first (`st train --store`)",
        corpus.name,
    )


def theta_of(model: TopicModel, corpus: Corpus) -> np.ndarray:
    """θ of the corpus's documents: stored at training, or computed now."""
    stored = corpus.theta(model.id)
    return stored.astype(np.float64) if stored is not None else model.transform(corpus).astype(np.float64)


def evaluate(
    model: TopicModel,
    corpus: Corpus,
    *,
    labels: Sequence[Any] | None = None,
    metrics: Sequence[str] | str | None = None,
    reference: Iterable[str] | None = None,
    reference_words: Sequence[Sequence[str]] | None = None,
    top_words: int = 10,
    balanced: int | None = None,
    progress: progress_mod.Callback | None = None,
    **options: Any,
) -> dict[str, Any]:
    """`st eval` for one model: coherence (gensim) against `reference` texts (default: the corpus's
    own), diversity, and, with `labels` (default: the corpus records' `label`), clustering and
    retrieval. Metrics that need labels are left out without them. `reference_words`: the reference
    already tokenized (`st.vocab.tokenize`), to share between models. Options: `divergence`."""
    from st import metrics as ev
    from st import vocab as vocab_mod

    (ranking,) = split_options(options, RankingOptions)
    wanted = ev.parse_metrics(",".join(metrics) if isinstance(metrics, (list, tuple)) else metrics)  # type: ignore[arg-type]
    if labels is None:
        labels = corpus.field("label")
    elif len(labels) != corpus.rows:
        raise InputError(f"{len(labels)} labels for {corpus.rows} documents")
    has_labels = all(lab is not None for lab in labels)
    if not has_labels and any(m in ev.LABEL_METRICS for m in wanted):
        progress_mod.info("note: not every document has a label; purity, NMI, ARI and P@k are left out")
        wanted = [m for m in wanted if m not in ev.LABEL_METRICS]
    texts = reference_words
    if texts is None and {"npmi", "cv"} & set(wanted):
        field = corpus.attrs.get("text_field", "text")
        source = (str(t or "") for t in corpus.field(field)) if reference is None else reference
        texts = [vocab_mod.tokenize(t) for t in source]
    gold = np.asarray([str(lab) for lab in labels]) if has_labels else None
    theta = theta_of(model, corpus)
    topics = model.topics(max(top_words, 25))
    row: dict[str, Any] = {"model": model.id, "k": int(theta.shape[1]), "documents": int(corpus.rows)}
    with progress_mod.reporting(progress), progress_mod.task(f"st eval {model.id}", len(wanted), "metrics") as bar:
        for m in wanted:
            row[m] = ev.measure(m, topics, texts, theta, gold, top_words, ranking.divergence, balanced, row)
            bar.advance()
    row.pop("_p@k", None)
    return row


def rate(model: TopicModel, rater: LM | None = None, top_words: int = 10) -> float:
    """The mean of each topic's coherence rating (1-3) by an instruction-tuned LM."""
    from st import metrics as ev

    rater = rater or LM()
    ratings = ev.llm_rating(model.topics(max(top_words, 25)), rater.model, rater.cache, top_words)
    return round(float(np.mean(ratings)), 6)


def report(
    model: TopicModel,
    corpus: Corpus,
    output: str | Path | None = None,
    *,
    measure: bool = False,
    png: str | Path | None = None,
    map_documents: int | None = None,
    map_input: str = "theta",
    progress: progress_mod.Callback | None = None,
) -> Path | str:
    """`st report`: the self-contained HTML page about the model and its corpus, written to
    `output` (under a temporary name, then renamed), or returned as a string without `output`.
    The metrics shown are those `st eval` saved for this corpus, or measured now with `measure`.
    `png`: also write each chart as a PNG file into this folder."""
    from st.train import save_metrics, saved_metrics

    try:
        import matplotlib  # noqa: F401
        import plotly  # noqa: F401

        from st import report_page as report_mod
    except ImportError as e:
        raise UsageError(f"the report needs {e.name}: pip install 'st[report]'") from None
    fitted = model._trained()
    stored_theta(model, corpus)  # fail before any work
    metrics = None if corpus.path is None else saved_metrics(fitted, str(corpus.path))
    with progress_mod.reporting(progress or model.progress):
        if measure:
            metrics = evaluate(model, corpus)
            if corpus.path is not None:
                save_metrics(fitted, str(corpus.path), metrics)
        with progress_mod.status("drawing the report"):
            data = report_mod.build(
                model,
                corpus,
                metrics=metrics,
                map_documents=map_documents or report_mod.MAP_DOCUMENTS,
                map_input=map_input,
            )
            page = report_mod.page(data)
            if png is not None:
                report_mod.write_png(data, Path(png))
    if output is None:
        return page
    report_mod.write_atomic(Path(output), page)
    return Path(output)


@dataclass
class Hit:
    """One search result: the stored document `id` at `row`, its `score` (the divergence from the
    query, or θ_k for a topic), its `topic` (argmax θ), the topic's name (when the topics are
    named) and its record."""

    id: str
    row: int
    score: float
    topic: int
    record: dict[str, Any]
    topic_name: str | None = None


def search(
    model: TopicModel,
    corpus: Corpus,
    query: str | None = None,
    *,
    like: str | None = None,
    topic: int | None = None,
    n: int = 10,
    **options: Any,
) -> list[Hit]:
    """The corpus's documents closest to a query text (through the model's LM, prompt and cache),
    to a stored document (`like=ID`), or most about one topic (`topic=K`), best first.
    Options: `divergence`."""
    from st import ranking
    from st import vocab as vocab_mod

    (opts,) = split_options(options, RankingOptions)
    if sum(x is not None for x in (query, like, topic)) != 1:
        raise UsageError("give exactly one of QUERY, --like ID or --topic K")
    fitted = model._trained()
    theta = stored_theta(model, corpus).astype(np.float32)
    log_key = f"log_theta/{model.id}"
    log_t = corpus.array(log_key) if log_key in corpus else None
    if topic is not None:
        if not 0 <= topic < theta.shape[1]:
            raise UsageError(f"--topic: the model has topics 0 to {theta.shape[1] - 1}")
        idx, scores = ranking.rank_topic(theta, topic, n)
    elif like is not None:
        ids = corpus.ids()
        if like not in ids:
            raise InputError(f"no document with id {like!r}", corpus.name)
        row = ids.index(like)
        idx, scores = ranking.rank(theta, theta[row], n, opts.divergence, exclude=row, log_t=log_t)
    else:
        if fitted.config["training"]["input"] == "bow":
            bow = vocab_mod.bag_of_words([str(query)], fitted.vocab).toarray().astype(np.float32)
            q = fitted.theta(bow)[0]
        else:
            q = model.transform([str(query)])[0]
        idx, scores = ranking.rank(theta, q, n, opts.divergence, log_t=log_t)
    rows = idx.tolist()
    hit_ids, hit_records = corpus.take("ids", rows), corpus.take("records", rows)
    names = fitted.names
    hits = []
    for i, r, j, s in zip(hit_ids, hit_records, rows, scores.tolist(), strict=True):
        t = int(theta[j].argmax())
        rec = records.parse_object(str(r), corpus.name, j)
        hits.append(Hit(str(i), j, float(s), t, rec, names[t] if names else None))
    return hits
