"""The `st` command: each subcommand parses its options, calls the Python API (`st.api`) and
writes records. The whole data flow:

    documents.jsonl ──st vocab──▶ vocab.json
    documents.jsonl ──st softlabel [--vocab]──▶ store.zarr (logits, hidden, bow, records) + records.jsonl
    documents.jsonl ──st embed──▶ store.zarr (hidden, records) + records.jsonl
    records.jsonl ──st train──▶ topics.jsonl, θ in the store, the model
    documents.jsonl ──st infer -m MODEL──▶ records + θ

Records on stdout carry `_st: {store, row}`, so stages compose in a pipe. Options are generated
from the dataclasses of `st.options`, where each is declared once.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from st import __version__, console, records
from st.errors import InputError, StError, UsageError
from st.options import (
    TOP_WORDS,
    DocumentOptions,
    EmbedderOptions,
    EncodeOptions,
    Flag,
    LMOptions,
    Options,
    RankingOptions,
    RayOptions,
    SoftLabelOptions,
    StoreOptions,
    TrainOptions,
    VocabOptions,
    fields,
)
from st.progress import info, reporting, warn
from st.report_page import MAP_DOCUMENTS

F = Callable[..., Any]


# --- options from st.options --------------------------------------------------------------------


def _click_type(spec: Flag) -> Any:
    if spec.choices is not None:
        return click.Choice(spec.choices)
    if spec.path is not None:
        return click.Path(file_okay=spec.path != "dir", dir_okay=spec.path != "file")
    if spec.kind in (int, float) and (spec.min is not None or spec.max is not None) and spec.message is None:
        ranged = click.IntRange if spec.kind is int else click.FloatRange
        return ranged(spec.min, spec.max, min_open=spec.min_open, max_open=spec.max_open)  # type: ignore[arg-type]
    return spec.kind


def _shown_default(name: str, default: Any) -> Any:
    return default.replace("\n", "\\n") if name == "template" else default


def _deprecated_name(name: str) -> str:
    return f"{name}__deprecated"


def options(
    cls: type[Options],
    only: tuple[str, ...] | None = None,
    exclude: tuple[str, ...] = (),
    help: dict[str, str] | None = None,
    deprecated: bool = True,
) -> Callable[[F], F]:
    """The click options of an option group (or of `only` its named fields)."""
    decorators = []
    for f, spec in fields(cls):
        if (only is not None and f.name not in only) or f.name in exclude:
            continue
        text = (help or {}).get(f.name, spec.help)
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        if spec.default_text:
            text += f"  [default: {spec.default_text}]"
        if spec.is_flag:
            decorators.append(click.option(*spec.flags, f.name, is_flag=True, default=default, help=text))
        elif spec.negatable:
            long = spec.flags[0]
            decorators.append(click.option(f"{long}/--no-{long[2:]}", f.name, default=None, help=text))
        else:
            decorators.append(
                click.option(
                    *spec.flags,
                    f.name,
                    default=_shown_default(f.name, default),
                    type=_click_type(spec),
                    metavar=spec.metavar,
                    show_default=spec.default_text is None and default is not None,
                    help=text,
                )
            )
        if deprecated and spec.deprecated:
            decorators.append(
                click.option(
                    *spec.deprecated, _deprecated_name(f.name), default=None, type=_click_type(spec), hidden=True
                )
            )

    def apply(fn: F) -> F:
        for d in reversed(decorators):
            fn = d(fn)
        return fn

    return apply


def take(cls: type[Options], kwargs: dict[str, Any], **extra: Any) -> Any:
    """The option group's values out of a command's keyword arguments; an earlier spelling still
    works, with a warning."""
    values = dict(extra)
    for f, spec in fields(cls):
        if f.name not in kwargs:
            continue
        values[f.name] = kwargs.pop(f.name)
        old = kwargs.pop(_deprecated_name(f.name), None)
        if old is not None:
            warn(f"{'/'.join(spec.deprecated)} is deprecated here; it is {spec.flags[-1]} now")
            values[f.name] = old
        if f.name in CONVERT:
            values[f.name] = CONVERT[f.name](values[f.name])
    return cls(**values)


def _text_or_file(value: str) -> str:
    """`@path` reads the value from a file, as curl does."""
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read {value[1:]}: {e}") from None
    return value


CONVERT: dict[str, Callable[[Any], Any]] = {
    "template": lambda v: _text_or_file(v) if v.startswith("@") else v.replace("\\n", "\n"),
    "instruction": _text_or_file,
}


def _quiet_callback(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    console.set_quiet(value)
    return value


quiet_option = click.option(
    "-q",
    "--quiet",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_quiet_callback,
    help="No progress bars or messages on stderr (warnings and errors still show).",
)
input_argument = click.argument(
    "input", default="-", metavar="[INPUT]", type=click.Path(allow_dash=True, dir_okay=False)
)
topic_model_option = click.option(
    "-m",
    "--model",
    "model_spec",
    required=True,
    metavar="MODEL",
    help="A model folder (st train -o) or STORE#MODEL-ID.",
)
where_lm_help = {"lm": "Where the model's LM is, if not where it was at training (same weights)."}


def _stdout() -> Any:
    return click.get_binary_stream("stdout")  # type: ignore[operator]


def _write(lines: list[bytes]) -> None:
    out = _stdout()
    out.write(b"".join(lines))
    out.flush()


def _print_records(recs: list[dict[str, Any]]) -> None:
    _write([records.dumps(r) + b"\n" for r in recs])


class _Failure(click.ClickException):
    """A library error on its way out through click, with its exit code."""

    def __init__(self, error: StError) -> None:
        super().__init__(error.message)
        self.exit_code = error.exit_code  # type: ignore[misc]
        self.usage = isinstance(error, UsageError)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            with reporting(console.install(console.quiet())):
                return super().invoke(ctx)
        except StError as e:
            raise _Failure(e) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="st")
def cli() -> None:
    """Topic modeling supervised by language-model soft labels.

    Every command reads JSONL documents from a file or stdin (`-`), writes data to stdout and
    progress and messages to stderr.
    """


@cli.command()
@input_argument
@options(DocumentOptions)
@options(VocabOptions, help={"vocab_size": "Number of words to keep."})
@options(LMOptions, only=("lm", "cache_dir"), help={"lm": "LM whose tokenizer decides first sub-tokens."})
@quiet_option
def vocab(input: str, **kwargs: Any) -> None:
    """Build the topic vocabulary: a JSON list of words, most frequent first.

    Lowercased alphabetic words longer than 2 characters, English stop words removed, the top
    --vocab-size by corpus frequency. Words sharing a first LM sub-token get one soft-label
    probability; they are reported on stderr.
    """
    from st import api
    from st.encode import corpus_vocabulary, project_vocabulary, projector

    docs = take(DocumentOptions, kwargs)
    opts = take(VocabOptions, kwargs)
    lm = api.LM.from_options(take(LMOptions, kwargs))
    name = records.source_name(input)
    words = corpus_vocabulary(records.read_documents(input, docs.text_field, docs.lines), opts, name)
    words = project_vocabulary(projector(lm.tokenizer()), words, opts.unique_prefix).words
    _write([records.dumps(words) + b"\n"])  # type: ignore[arg-type]


def _encode(kind: str, input: str, kwargs: dict[str, Any]) -> None:
    from st import api
    from st import vocab as vocab_mod
    from st.encode import count_lines, spool

    docs = take(DocumentOptions, kwargs)
    store = take(StoreOptions, kwargs)
    enc = take(EncodeOptions, kwargs)
    labels = take(SoftLabelOptions, kwargs) if kind == "softlabel" else None
    vocab_opts = take(VocabOptions, kwargs) if kind == "softlabel" else None
    ray = take(RayOptions, kwargs)
    embedder = take(EmbedderOptions, kwargs) if kind == "embed" else None
    lm = api.LM.from_options(take(LMOptions, kwargs))
    vocab_path = kwargs.pop("vocab_path", None)
    words = vocab_mod.load(vocab_path) if vocab_path else None
    _ = lm.cache  # a bad cache location fails before any work
    name = records.source_name(input)
    building = kind == "softlabel" and words is None
    path, cleanup = spool(input) if building else (input, lambda: None)
    try:
        api.encode(
            lambda: records.read_documents(path, docs.text_field, docs.lines, name=name),
            kind,
            lm,
            enc,
            labels,
            vocab_opts,
            words,
            ray,
            store.output,
            store.force,
            docs.text_field,
            name,
            count_lines(path),
            _print_records,
            embedder,
        )
    finally:
        cleanup()


@cli.command()
@input_argument
@options(DocumentOptions)
@options(StoreOptions)
@options(SoftLabelOptions)
@click.option(
    "--vocab",
    "vocab_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Vocabulary file (JSON list of words, from `st vocab`).  [default: built from the input]",
)
@options(VocabOptions, only=("vocab_size", "unique_prefix"), deprecated=False)
@options(LMOptions)
@options(EncodeOptions)
@options(RayOptions)
@quiet_option
def softlabel(input: str, **kwargs: Any) -> None:
    """Soft labels: the LM's next-token logits over the vocabulary, and its hidden state, per document.

    Writes the store (-o) and prints each input record plus `_st: {store, row}` on stdout.
    """
    _encode("softlabel", input, kwargs)


@cli.command()
@input_argument
@options(DocumentOptions)
@options(StoreOptions)
@options(EmbedderOptions)
@options(LMOptions)
@options(EncodeOptions)
@options(RayOptions)
@quiet_option
def embed(input: str, **kwargs: Any) -> None:
    """Document representations: the LM's last-position hidden state under the prompt, or a
    sentence embedder's embedding (--embedder), alone or beside it (--with-lm).

    Writes the store (-o) and prints each input record plus `_st: {store, row}` on stdout.
    """
    _encode("embed", input, kwargs)


def _training_rows(
    input: str | None, store_path: str | None, keep: bool = False
) -> tuple[Any, Any, list[dict[str, Any]] | None]:
    """The store and the rows to train on: every row of `--store`, or the rows that piped records
    point at (so that `head`, `grep` or `shuf` between stages choose the training set); with
    `keep`, the piped records too (a million of them would weigh gigabytes, so only when printed)."""
    from st.store import Store

    if input is None and store_path is not None:
        store = Store(store_path)
        return store, np.arange(store.rows), None
    source = input or "-"
    name = records.source_name(source)
    stores: dict[str, Any] = {}
    rows: list[int] = []
    recs: list[dict[str, Any]] = []
    for number, line in records.iter_lines(source):
        if not line.strip():
            continue
        rec = records.parse_object(line, name, number)
        ref = rec.get("_st")
        if not (isinstance(ref, dict) and isinstance(ref.get("store"), str) and isinstance(ref.get("row"), int)):
            raise InputError(
                "no '_st' store reference; pipe records from `st softlabel`, or pass --store", name, number
            )
        path = store_path or ref["store"]
        if path not in stores:
            if stores:
                raise InputError("records point into more than one store; train on one store at a time", name, number)
            stores[path] = Store(path, require_complete=False)
        if store_path is not None and Path(ref["store"]).absolute() != stores[path].path:
            raise InputError(f"the record points into {ref['store']}, not into --store", name, number)
        if not 0 <= ref["row"] < stores[path].rows:
            raise InputError(f"row {ref['row']} is not in the store ({stores[path].rows} rows)", name, number)
        rows.append(ref["row"])
        if keep:
            recs.append(rec)
    if not rows:
        raise InputError("no records; pipe the output of `st softlabel`, or pass --store", name)
    return next(iter(stores.values())), np.asarray(rows), recs if keep else None


@cli.command()
@click.argument("source", required=False, metavar="[INPUT]", type=click.Path(allow_dash=True, dir_okay=False))
@click.option(
    "--store",
    "store_path",
    default=None,
    type=click.Path(file_okay=False),
    help="Train on every document of this store (instead of records from INPUT or stdin).",
)
@click.option(
    "-o",
    "--output",
    default=None,
    type=click.Path(file_okay=False),
    help="Save the model in this folder.  [default: inside the store, as STORE#MODEL-ID]",
)
@options(TrainOptions)
@click.option(
    "--top-words", default=TOP_WORDS, show_default=True, type=click.IntRange(min=1), help="Words printed per topic."
)
@click.option(
    "--docs", is_flag=True, help="Print one record per document (input record + theta + topic) instead of topics."
)
@quiet_option
def train(
    source: str | None, store_path: str | None, output: str | None, top_words: int, docs: bool, **kwargs: Any
) -> None:
    """Train a topic model on soft labels (DSL), or a bag-of-words baseline.

    Prints one JSON record per topic, writes θ of every store document to `theta/MODEL-ID` in the
    store, and saves the model (-o, or inside the store).
    """
    from st import api

    opts = take(TrainOptions, kwargs)
    store, rows, recs = _training_rows(source, store_path, keep=docs)
    model = api.TopicModel(top_words=top_words, **dataclasses.asdict(opts))
    model.fit(store, rows, output)
    theta = model.theta_
    assert theta is not None
    topics = model.topic_records()
    _topic_table(topics)
    if docs:
        stored = store.array("records") if not recs else None
        lines = []
        for i, row in enumerate(rows.tolist()):
            rec = recs[i] if recs else records.parse_object(str(stored[row]), str(store.path), row)  # type: ignore[index]
            lines.append(_with_theta(rec, theta[row]))
            if len(lines) == 4096:  # printed as it goes: a million records never sit in memory as text
                _write(lines)
                lines = []
        _write(lines)
    else:
        _print_records(topics)


def _with_theta(rec: dict[str, Any], t: np.ndarray) -> bytes:
    return records.dumps({**rec, "theta": [round(float(v), 6) for v in t], "topic": int(t.argmax())}) + b"\n"


def _topic_table(topics: list[dict[str, Any]], title: str = "topics", stdout: bool = False) -> None:
    """The topics (with their names, once named) as a table on stderr, or on stdout when it is the data."""
    if not stdout and (console.quiet() or not console.err.is_terminal):
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    table.add_column("#", justify="right")
    named = any("name" in t for t in topics)
    if named:
        table.add_column("name")
    table.add_column("top words")
    for t in topics:
        table.add_row(str(t["topic"]), *([t.get("name", "")] if named else []), " ".join(t["words"][:10]))
    (Console(file=sys.stdout, width=200) if stdout else console.err).print(table)


def _model_and_lm(model_spec: str, kwargs: dict[str, Any]) -> Any:
    """The topic model, with the LM it was trained on (`--lm` where it moved)."""
    from st import api
    from st.train import load

    lm_opts = take(LMOptions, kwargs)
    fitted, _ = load(model_spec)
    lm = api.trained_lm(
        fitted,
        lm_opts.lm,
        device=lm_opts.device,
        cache_dir=lm_opts.cache_dir,
        trust_remote_code=lm_opts.trust_remote_code,
    )
    return api.TopicModel._from_fitted(fitted, lm)


@cli.command()
@topic_model_option
@input_argument
@options(DocumentOptions)
@options(LMOptions, exclude=("dtype",), help=where_lm_help, deprecated=False)
@options(EncodeOptions, only=("lm_batch_size", "batch_tokens"))
@quiet_option
def infer(model_spec: str, input: str, **kwargs: Any) -> None:
    """θ for new documents: each input record plus `theta` and `topic` (its argmax).

    Documents go through the LM, prompt and max tokens the model was trained with (and the shared
    cache); records encoded by another LM or prompt are refused.
    """
    from st.infer import infer as infer_chunks

    docs = take(DocumentOptions, kwargs)
    enc = take(EncodeOptions, kwargs)
    model = _model_and_lm(model_spec, kwargs)
    name = records.source_name(input)
    chunks = infer_chunks(
        records.read_documents(input, docs.text_field, docs.lines),
        model.fitted,
        lambda: model.lm.model,
        model.lm.cache,
        enc.batch_tokens,
        enc.lm_batch_size,
        name,
        lambda: model.lm.known,
    )
    for chunk, theta in chunks:
        _write([_with_theta(d.record, t) for d, t in zip(chunk, theta, strict=True)])


@cli.command("eval")
@click.option(
    "--store",
    "store_path",
    required=True,
    type=click.Path(file_okay=False),
    help="The store the models were trained on.",
)
@click.option(
    "-m",
    "--model",
    "model_specs",
    multiple=True,
    required=True,
    metavar="MODEL",
    help="A model folder or STORE#MODEL-ID; repeat to compare models side by side.",
)
@click.option(
    "--metrics",
    default=None,
    help="Comma-separated subset of: npmi, cv, td, irbo, purity, inverse_purity, "
    "harmonic_purity, nmi, ari, p@1, p@5, p@10.  [default: all the inputs allow]",
)
@click.option(
    "--reference",
    default=None,
    type=click.Path(dir_okay=False),
    help="JSONL corpus whose texts are the coherence reference.  [default: the store's documents]",
)
@click.option(
    "--top-words", default=10, show_default=True, type=click.IntRange(min=2), help="Words per topic for coherence."
)
@options(RankingOptions)
@click.option(
    "--balanced",
    default=None,
    type=click.IntRange(min=2),
    help="Measure retrieval on a label-balanced subset of N documents.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "table"]),
    default="json",
    show_default=True,
    help="json: one object per model on stdout (a table on stderr); table: the table on stdout.",
)
@click.option("--llm-rating", is_flag=True, help="Also rate each topic's coherence (1-3) with an instruction-tuned LM.")
@click.option(
    "--rater", default=None, metavar="MODEL", help="The rating LM.  [default: the embedded SmolLM2-135M-Instruct]"
)
@options(LMOptions, only=("cache_dir", "trust_remote_code"), deprecated=False)
@quiet_option
def eval_command(
    store_path: str,
    model_specs: tuple[str, ...],
    metrics: str | None,
    reference: str | None,
    top_words: int,
    balanced: int | None,
    fmt: str,
    llm_rating: bool,
    rater: str | None,
    **kwargs: Any,
) -> None:
    """Measure topic models: coherence (gensim), diversity, clustering and retrieval against labels."""
    from st import api
    from st import metrics as ev
    from st.store import Store

    ranking = take(RankingOptions, kwargs)
    lm_opts = take(LMOptions, kwargs)
    wanted = ev.parse_metrics(metrics)
    store = Store(store_path)
    from st import vocab as vocab_mod

    # What every model is measured against, read and tokenized once.
    labels = store.field("label")
    words = None
    if {"npmi", "cv"} & set(wanted):
        if reference is not None:
            words = [vocab_mod.tokenize(d.text) for d in records.read_documents(reference) if d.text]
        else:
            words = [vocab_mod.tokenize(str(t or "")) for t in store.field(store.attrs.get("text_field", "text"))]
    from st.train import save_metrics

    results = []
    named = []
    rating_lm = None
    for spec in model_specs:
        model = api.load(spec)
        if f"theta/{model.id}" not in store:
            raise api.no_theta(model, store)
        row = api.evaluate(
            model,
            store,
            labels=labels,
            metrics=wanted,
            reference_words=words,
            top_words=top_words,
            balanced=balanced,
            divergence=ranking.divergence,
        )
        if llm_rating:
            if rating_lm is None:
                rating_lm = api.LM(rater, cache_dir=lm_opts.cache_dir, trust_remote_code=lm_opts.trust_remote_code)
            row["llm_rating"] = api.rate(model, rating_lm, top_words)
        save_metrics(model._trained(), store_path, row)
        if model.names:
            row["topic_names"] = model.names
            named.append(model)
        results.append(row)
    _eval_output(results, fmt)
    for model in named:
        _topic_table(model.topic_records(), f"topics of {model.id}", stdout=fmt == "table")


def _eval_output(results: list[dict[str, Any]], fmt: str) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = [c for c in results[0] if c not in ("model", "topic_names")]
    table = Table(title="st eval")
    table.add_column("model")
    for c in columns:
        table.add_column(c, justify="right")
    for r in results:
        table.add_row(r["model"], *[f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in columns])
    if fmt == "table":
        Console(file=sys.stdout, width=200).print(table)
        return
    _print_records(results)
    if not console.quiet():
        console.err.print(table)


@cli.command()
@click.argument("query", required=False)
@topic_model_option
@click.option("--store", "store_path", required=True, type=click.Path(file_okay=False), help="The store to search.")
@click.option("--like", default=None, metavar="ID", help="Find documents like this stored one (by id).")
@click.option("--topic", default=None, type=click.IntRange(min=0), help="Find the documents most about this topic.")
@click.option("-n", "--hits", "n", default=10, show_default=True, type=click.IntRange(min=1), help="Number of hits.")
@options(RankingOptions)
@click.option(
    "--snippet",
    default=200,
    show_default=True,
    type=click.IntRange(min=0),
    help="Truncate the text of each hit to this many characters (0: whole text).",
)
@options(LMOptions, exclude=("dtype",), help=where_lm_help, deprecated=False)
@quiet_option
def search(
    query: str | None,
    model_spec: str,
    store_path: str,
    like: str | None,
    topic: int | None,
    n: int,
    snippet: int,
    **kwargs: Any,
) -> None:
    """Topic-guided retrieval: the stored documents whose θ is closest to a query's.

    QUERY is free text (encoded through the model's LM, prompt and the shared cache); or --like ID
    for documents like a stored one; or --topic K for the documents most about topic K. Prints
    JSONL hits, best first: id, score (the divergence, or θ_K with --topic), topic, text, and the
    document's other fields.
    """
    from st import api
    from st.store import Store

    if sum(x is not None for x in (query, like, topic)) != 1:
        raise UsageError("give exactly one of QUERY, --like ID or --topic K")
    ranking = take(RankingOptions, kwargs)
    model = _model_and_lm(model_spec, kwargs)
    store = Store(store_path)
    hits = api.search(model, store, query, like=like, topic=topic, n=n, divergence=ranking.divergence)
    field = store.attrs.get("text_field", "text")
    out = []
    for h in hits:
        text = str(h.record.get(field, ""))
        hit: dict[str, Any] = {"id": h.id, "score": round(h.score, 6), "topic": h.topic}
        if h.topic_name is not None:
            hit["topic_name"] = h.topic_name
        hit["text"] = text[:snippet] if snippet else text
        hit.update({k: v for k, v in h.record.items() if k not in hit and k != field})
        out.append(hit)
    _print_records(out)


def _model_and_store(model_spec: str, store_path: str | None, why: str) -> tuple[Any, Any]:
    """The topic model and its store: `--store`, or the store a STORE#MODEL-ID points into."""
    from st import api
    from st.store import Store
    from st.train import load

    fitted, store = load(model_spec)
    if store_path is not None:
        store = Store(store_path)
    if store is None:
        raise UsageError(f"give --store: {why}")
    return api.TopicModel._from_fitted(fitted), store


store_of_model_option = click.option(
    "--store",
    "store_path",
    default=None,
    type=click.Path(file_okay=False),
    help="The store the model was trained on.  [default: the store of a STORE#MODEL-ID]",
)


@cli.command()
@topic_model_option
@store_of_model_option
@click.option(
    "--template",
    "name_template",
    default=None,
    metavar="TEXT|@FILE",
    help="The request sent to the LM, with {words} and {documents}.  [default: a fixed few-shot chat]",
)
@click.option(
    "--documents",
    default=3,
    show_default=True,
    type=click.IntRange(min=0),
    help="Representative documents shown to the LM per topic.",
)
@options(LMOptions, deprecated=False)
@quiet_option
def label(model_spec: str, store_path: str | None, name_template: str | None, documents: int, **kwargs: Any) -> None:
    """Name each topic (2-5 words) with an LM that reads its top words and representative documents.

    Greedy decoding through the shared LM cache (a second run costs nothing). The names are saved
    in the model folder (topics.json) and show up in the topics JSONL, `st eval`, `st search` and
    `st report`. Prints the topics JSONL with a "name" each.
    """
    from st import api

    lm = api.LM.from_options(take(LMOptions, kwargs))
    model, store = _model_and_store(model_spec, store_path, "the names are written from the topics' documents")
    template = None if name_template is None else CONVERT["template"](name_template)
    model.name_topics(store, lm=lm, template=template, documents=documents)
    topics = model.topic_records()
    _topic_table(topics)
    _print_records(topics)


@cli.command()
@topic_model_option
@store_of_model_option
@click.option(
    "-o",
    "--output",
    "page",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=False),
    help="The HTML file to write (self-contained: it opens offline).",
)
@click.option("--eval", "measure", is_flag=True, help="Measure the model now (st eval's metrics) for the overview.")
@click.option("--png", default=None, type=click.Path(file_okay=False), help="Also write each chart as a PNG in DIR.")
@click.option(
    "--map-documents",
    default=MAP_DOCUMENTS,
    show_default=True,
    type=click.IntRange(min=1),
    help="Documents drawn on the document map (a random sample above this; stated on the page).",
)
@click.option(
    "--map-input",
    type=click.Choice(["theta", "hidden"]),
    default="theta",
    show_default=True,
    help="What the document map projects: θ, or the LM's hidden states.",
)
@quiet_option
def report(
    model_spec: str,
    store_path: str | None,
    page: str,
    measure: bool,
    png: str | None,
    map_documents: int,
    map_input: str,
) -> None:
    """A self-contained HTML report: names, sizes, top words and documents, an intertopic distance
    map, a document map, topic similarity, a topic hierarchy and, with gold labels, topics × labels."""
    from st import api

    model, store = _model_and_store(model_spec, store_path, "the report draws the model's documents")
    out = Path(page)
    if not out.parent.is_dir():
        raise InputError("cannot write there (no such folder)", page)
    api.report(model, store, output=out, measure=measure, png=png, map_documents=map_documents, map_input=map_input)
    info(f"report written to {out.absolute()}")


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (see the README to enable it)."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "st", "_ST_COMPLETE").source())


def _one_line(e: click.ClickException, command: str) -> str:
    msg = e.format_message().strip().replace("\n", " ")
    if isinstance(e, click.UsageError) or getattr(e, "usage", False):
        return f"{command}: error: {msg} (see '{command} --help')"
    return f"{command}: error: {msg}"


class _Terminated(Exception):
    pass


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


def main(args: list[str] | None = None) -> None:
    """Entry point: data on stdout; one line on stderr and a documented exit code on failure."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    argv = sys.argv[1:] if args is None else args
    command = "st" + (f" {argv[0]}" if argv and argv[0] in cli.commands else "")
    code = 0
    try:
        cli.main(args=argv, prog_name="st", standalone_mode=False)
    except click.ClickException as e:
        print(_one_line(e, command), file=sys.stderr)
        code = e.exit_code
    except (KeyboardInterrupt, click.Abort):
        print(f"{command}: interrupted; finished work is kept, run it again to resume", file=sys.stderr)
        code = 130
    except _Terminated:
        print(f"{command}: terminated; finished work is kept, run it again to resume", file=sys.stderr)
        code = 143
    except BrokenPipeError:
        code = 141
    except Exception as e:  # the promise is: no traceback, one line
        if os.environ.get("ST_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"{command}: error: {type(e).__name__}: {first} (set ST_DEBUG=1 for a traceback)", file=sys.stderr)
        code = 1
    finally:
        _quiet_exit_streams(code)
    sys.exit(code)


def _quiet_exit_streams(code: int) -> None:
    # A closed stdout (`st ... | head`) must not make Python print an error while it exits.
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError, OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
