"""The `st` command. The whole data flow:

    documents.jsonl ──st vocab──▶ vocab.json
    documents.jsonl ──st softlabel [--vocab]──▶ store.zarr (logits, hidden, bow, records) + records.jsonl
    documents.jsonl ──st embed──▶ store.zarr (hidden, records) + records.jsonl

Records on stdout carry `_st: {store, row}`, so stages compose in a pipe. Commands are thin: the
work is in one module per stage (st.vocab, st.softlabel), the LM backend (st.lm), the cache
(st.cache) and the store (st.store).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from st import __version__, console, records
from st import vocab as vocab_mod
from st.errors import InputError
from st.prompt import INSTRUCTION, TEMPLATE, Prompt

if TYPE_CHECKING:
    from st.cache import LMCache

F = Callable[..., Any]


def _compose(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


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
document_options = _compose(
    input_argument,
    click.option(
        "--text-field", default="text", show_default=True, help="Field of each JSON record that holds the text."
    ),
    click.option("--lines", is_flag=True, help="Read each input line as a plain-text document (ids are line numbers)."),
)


def _text_or_file(value: str) -> str:
    """`@path` reads the value from a file, as curl does."""
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read {value[1:]}: {e}") from None
    return value


device_option = click.option(
    "--device", default="auto", show_default=True, help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."
)
cache_dir_option = click.option(
    "--cache-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="LM cache and converted models; an fsspec URL (s3://…) holds the LM cache alone, for clusters.  "
    "[default: $ST_CACHE_DIR or ~/.cache/st]",
)
trust_remote_code_option = click.option(
    "--trust-remote-code", is_flag=True, help="Let a Hugging Face model run its own Python code (off: safer)."
)
divergence_option = click.option(
    "--divergence",
    type=click.Choice(["kl", "js"]),
    default="kl",
    show_default=True,
    help="How documents are ranked by their θ: KL(θ_i ‖ θ_j), or Jensen-Shannon.",
)
lm_location_option = click.option(
    "--lm", default=None, metavar="LM", help="Where the model's LM is, if not where it was at training (same weights)."
)
lm_options = _compose(
    click.option(
        "--model",
        "-m",
        "model",
        default=None,
        metavar="MODEL",
        help="A local model folder, a .gguf file, or a Hugging Face id in the local cache.  "
        "[default: the embedded SmolLM2-135M-Instruct]",
    ),
    device_option,
    click.option(
        "--dtype",
        default="auto",
        show_default=True,
        type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
        help="auto: bfloat16 on GPU and on CPUs with AMX/AVX-512 BF16, else float32.",
    ),
    click.option(
        "--max-tokens",
        default=512,
        show_default=True,
        type=click.IntRange(min=1),
        help="Truncate each document to this many LM tokens before it is put into the prompt.",
    ),
    click.option(
        "--instruction", default=INSTRUCTION, show_default=True, help="Prompt instruction (@FILE reads it from a file)."
    ),
    click.option(
        "--template",
        default=TEMPLATE.replace("\n", "\\n"),
        show_default=True,
        help="Prompt template with {instruction} and {document}; \\n is a newline (@FILE reads a file).",
    ),
    click.option(
        "--batch-size",
        default=None,
        type=click.IntRange(min=1),
        help="Most documents in one LM batch.  [default: as many as fit --batch-tokens]",
    ),
    click.option(
        "--batch-tokens",
        default=None,
        type=click.IntRange(min=1),
        help="Most padded tokens in one LM batch.  [default: 1024 on CPU, 16384 on GPU]",
    ),
    cache_dir_option,
    trust_remote_code_option,
)
backend_options = _compose(
    click.option(
        "--backend",
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        help="local: the LM in this process; ray: a pool of LM workers on a Ray cluster (pip install 'st[ray]').",
    ),
    click.option(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to join (e.g. ray://head:10001 or auto).  [default: start Ray on this machine]",
    ),
    click.option(
        "--workers",
        default=None,
        type=click.IntRange(min=1),
        help="LM workers for --backend ray.  [default: one per --gpus-per-worker GPUs, else 1]",
    ),
    click.option(
        "--gpus-per-worker",
        default=0.0,
        show_default=True,
        type=click.FloatRange(min=0),
        help="GPUs each Ray worker holds (0: CPU workers).",
    ),
    click.option(
        "--cpus-per-worker",
        default=None,
        type=click.FloatRange(min=0, min_open=True),
        help="CPUs each Ray worker holds (its torch threads).  [default: 1 with GPUs, else the cluster's share]",
    ),
    click.option(
        "--chunk-rows",
        default=1024,
        show_default=True,
        type=click.IntRange(min=1),
        help="Rows per store chunk: the unit written at once, and the unit of work of a Ray worker.",
    ),
)
force_option = click.option("--force", is_flag=True, help="Replace the output store even if it holds trained models.")
output_option = click.option(
    "-o",
    "--output",
    default="st.zarr",
    show_default=True,
    type=click.Path(),
    help="The store to write (a Zarr folder; an existing st store there is replaced, unless it holds models).",
)


def _prompt(template: str, instruction: str) -> Prompt:
    template = _text_or_file(template) if template.startswith("@") else template.replace("\\n", "\n")
    return Prompt(template=template, instruction=_text_or_file(instruction))


def _cache_dir(value: str | None) -> Path:
    """Where converted models go: the cache folder, or the default one when the LM cache is a URL."""
    from st.cache import default_cache_dir, is_url

    return Path(value) if value and not is_url(value) else default_cache_dir()


def _cache_spec(value: str | None) -> str:
    """The LM cache's location as every process (and Ray worker) can open it."""
    from st.cache import is_url

    return value if value and is_url(value) else str(_cache_dir(value).absolute())


def _lm_cache(value: str | None) -> LMCache:
    from st.cache import open_cache

    return open_cache(_cache_spec(value))


def _load_lm(model: str | None, device: str, dtype: str, cache_dir: Path, trust_remote_code: bool):
    from st.lm import LM

    with console.status("loading the LM"):
        return LM(model, device=device, dtype=dtype, cache_dir=cache_dir, trust_remote_code=trust_remote_code)


def _training_lm(model: Any, where: str | None, device: str, cache_dir: Path, trust_remote_code: bool):
    """The LM (and dtype) a topic model's inputs came from; `where` overrides its location."""
    identity = (model.config.get("input_source") or model.config).get("lm") or {}
    name = where or identity.get("model")
    if isinstance(name, str) and name.startswith("embedded:"):
        name = None
    return _load_lm(name, device, identity.get("dtype", "auto"), cache_dir, trust_remote_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="st")
def cli() -> None:
    """Topic modeling supervised by language-model soft labels.

    Every command reads JSONL documents from a file or stdin (`-`), writes data to stdout and
    progress and messages to stderr.
    """


@cli.command()
@document_options
@click.option("--size", default=2000, show_default=True, type=click.IntRange(min=1), help="Number of words to keep.")
@click.option(
    "--min-df",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Keep words in at least this many documents.",
)
@click.option(
    "--max-df",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="Keep words in at most this share of documents.",
)
@click.option(
    "--unique-prefix", is_flag=True, help="Keep only the most frequent word of each group sharing a first LM sub-token."
)
@click.option(
    "--model",
    "-m",
    "model",
    default=None,
    metavar="MODEL",
    help="LM whose tokenizer decides first sub-tokens.  [default: the embedded SmolLM2-135M-Instruct]",
)
@cache_dir_option
@quiet_option
def vocab(
    input: str,
    text_field: str,
    lines: bool,
    size: int,
    min_df: int,
    max_df: float,
    unique_prefix: bool,
    model: str | None,
    cache_dir: str | None,
) -> None:
    """Build the topic vocabulary: a JSON list of words, most frequent first.

    Lowercased alphabetic words longer than 2 characters, English stop words removed, the top
    --size by corpus frequency. Words sharing a first LM sub-token get one soft-label probability;
    they are reported on stderr.
    """
    name = records.source_name(input)
    texts = (d.text for d in records.read_documents(input, text_field, lines) if d.text)
    words, n = vocab_mod.build(texts, size=size, min_df=min_df, max_df=max_df)
    if n == 0:
        raise InputError("no documents (the input is empty or has only empty texts)", name)
    if not words:
        raise InputError("no word passes the filters (only stop words, digits or short words?)", name)
    from st.lm import load_tokenizer, resolve

    tokenizer = load_tokenizer(resolve(model), _cache_dir(cache_dir))
    projection = vocab_mod.project(words, tokenizer)
    if projection.collisions:
        if unique_prefix:
            words = vocab_mod.unique_prefix(words, projection)
        else:
            console.warn(vocab_mod.collision_report(projection, tokenizer))
    console.info(f"{len(words)} words from {n} documents")
    out = click.get_binary_stream("stdout")
    out.write(records.dumps(words) + b"\n")  # type: ignore[arg-type]
    out.flush()


def _encode_command(kind: str) -> Callable[..., None]:
    def run(
        input: str,
        output: str,
        text_field: str,
        lines: bool,
        model: str | None,
        device: str,
        dtype: str,
        max_tokens: int,
        instruction: str,
        template: str,
        batch_size: int | None,
        batch_tokens: int | None,
        cache_dir: str | None,
        trust_remote_code: bool,
        backend: str,
        ray_address: str | None,
        workers: int | None,
        gpus_per_worker: float,
        cpus_per_worker: float | None,
        chunk_rows: int,
        **extra: Any,
    ) -> None:
        from st import softlabel

        opts = softlabel.Options(
            text_field=text_field,
            lines=lines,
            prompt=_prompt(template, instruction),
            max_tokens=max_tokens,
            temperature=extra.get("temperature", 3.0),
            batch_tokens=batch_tokens,
            batch_size=batch_size,
            chunk_rows=chunk_rows,
            force=extra.get("force", False),
            whole_words=extra.get("whole_words", 0),
        )
        words = vocab_mod.load(extra["vocab_path"]) if extra.get("vocab_path") else None
        folder = _cache_dir(cache_dir)
        cache = _lm_cache(cache_dir)  # a bad cache location fails before any work
        if backend == "ray":
            from st.ray_backend import LMSpec, RayEncoder, RayOptions

            spec = LMSpec(model, device, dtype, str(folder.absolute()), _cache_spec(cache_dir), trust_remote_code)
            ray_opts = RayOptions(ray_address, workers, gpus_per_worker, cpus_per_worker)
            encoder: softlabel.Encoder = RayEncoder(spec, ray_opts)
        else:
            load = functools.partial(_load_lm, model, device, dtype, folder, trust_remote_code)
            encoder = softlabel.LocalEncoder(load, cache)
        building = kind == "softlabel" and words is None
        path, cleanup = softlabel.spool_stdin(input) if building else (input, lambda: None)
        try:
            if building:
                words = softlabel.corpus_vocabulary(path, opts, extra["vocab_size"], records.source_name(input))
            softlabel.encode_corpus(
                path,
                output,
                encoder,
                opts,
                click.get_binary_stream("stdout"),
                words,
                extra.get("unique_prefix", False),
                kind,
                records.source_name(input),
            )
        finally:
            cleanup()

    return run


@cli.command()
@document_options
@output_option
@force_option
@click.option(
    "-t",
    "--temperature",
    default=3.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="τ of the soft label softmax(logits/τ), recorded in the store (the logits are stored raw).",
)
@click.option(
    "--vocab",
    "vocab_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Vocabulary file (JSON list of words, from `st vocab`).  [default: built from the input]",
)
@click.option(
    "--vocab-size",
    default=2000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Vocabulary size when it is built from the input.",
)
@click.option(
    "--unique-prefix", is_flag=True, help="Keep one word per shared first sub-token when building the vocabulary."
)
@click.option(
    "--whole-words",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Words that share a first sub-token get P(first) x P(second | first): one extra LM step for each "
    "document's N most probable shared first sub-tokens (the rest split evenly). 0: off.",
)
@lm_options
@backend_options
@quiet_option
def softlabel(**kwargs: Any) -> None:
    """Soft labels: the LM's next-token logits over the vocabulary, and its hidden state, per document.

    Writes the store (-o) and prints each input record plus `_st: {store, row}` on stdout.
    """
    _encode_command("softlabel")(**kwargs)


@cli.command()
@document_options
@output_option
@force_option
@lm_options
@backend_options
@quiet_option
def embed(**kwargs: Any) -> None:
    """Document representations: the LM's last-position hidden state under the prompt.

    Writes the store (-o) and prints each input record plus `_st: {store, row}` on stdout.
    """
    _encode_command("embed")(**kwargs)


def _training_rows(input: str | None, store_path: str | None) -> tuple[Any, Any, list[dict[str, Any]] | None]:
    """The store and the rows to train on: every row of `--store`, or the rows that piped records
    point at (so that `head`, `grep` or `shuf` between stages choose the training set)."""
    import numpy as np

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
        recs.append(rec)
    if not rows:
        raise InputError("no records; pipe the output of `st softlabel`, or pass --store", name)
    return next(iter(stores.values())), np.asarray(rows), recs


@cli.command()
@click.argument("input", required=False, type=click.Path(allow_dash=True, dir_okay=False))
@click.option("-k", "--topics", "k", default=50, show_default=True, type=int, help="Number of topics K.")
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
@click.option(
    "--backbone",
    type=click.Choice(["prodlda", "etm", "ecrtm", "fastopic", "lda"]),
    default="prodlda",
    show_default=True,
    help="The topic model: the VAEs prodlda, etm or ecrtm, or fastopic (each trained on --target); "
    "lda: gensim's LdaModel on the bag of words.",
)
@click.option(
    "--embedding-size",
    default=200,
    show_default=True,
    type=click.IntRange(min=1),
    help="etm, ecrtm: size of the topic and word embeddings.",
)
@click.option(
    "--passes", default=10, show_default=True, type=click.IntRange(min=1), help="LDA: passes over the corpus."
)
@click.option(
    "--iterations", default=100, show_default=True, type=click.IntRange(min=1), help="LDA: inference iterations."
)
@click.option(
    "--target",
    type=click.Choice(["softlabel", "bow"]),
    default="softlabel",
    show_default=True,
    help="What the decoder reconstructs: the LM soft label (DSL) or the bag of words (ProdLDA).",
)
@click.option(
    "--input",
    "input_kind",
    type=click.Choice(["hidden", "bow"]),
    default="hidden",
    show_default=True,
    help="What the encoder reads: the LM hidden state or the bag of words.",
)
@click.option(
    "-t",
    "--temperature",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="τ of the soft-label target.  [default: the store's]",
)
@click.option(
    "--decoder-temperature",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="τ of the decoder softmax.  [default: the target's τ]",
)
@click.option(
    "--decoder-norm",
    default=None,
    type=click.FloatRange(0, 1),
    help="Power of the decoder batch norm's division by each word's spread: 1 standardises (ProdLDA), "
    "0 only centres.  [default: 0.75 for DSL-ProdLDA, else 1]",
)
@click.option(
    "--decoder-affine/--no-decoder-affine",
    default=None,
    help="Follow the decoder norm with a learned gain and shift per word.  [default: on for DSL-ProdLDA]",
)
@click.option(
    "--theta-dropout",
    default=None,
    type=click.FloatRange(0, 1, max_open=True),
    help="Dropout on θ while training.  [default: 0 for DSL-ProdLDA, else 0.2]",
)
@click.option("--topk", default=None, type=click.IntRange(min=1), help="Keep only each target's top N words.")
@click.option(
    "--sparsity",
    default=None,
    type=click.FloatRange(0, 1, max_open=True),
    help="Drop this share of each target's smallest entries.",
)
@click.option(
    "--bow-weight",
    default=0.3,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Mix this share of the document's own normalised bag of words into the soft-label target.",
)
@click.option(
    "--calibrate/--no-calibrate",
    default=None,
    help="Subtract each word's mean logit over the training documents before the softmax.  "
    "[default: on for DSL-ProdLDA]",
)
@click.option(
    "--lambda",
    "lam",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="Weight λ of the reconstruction term.  [default: 1000; fastopic: 10]",
)
@click.option("--loss", type=click.Choice(["kl", "ce"]), default="kl", show_default=True, help="Reconstruction loss.")
@click.option("--lr", default=2e-3, show_default=True, type=float, help="Adam learning rate.")
@click.option(
    "--batch-size",
    default=None,
    type=click.IntRange(min=2),
    help="Documents per step.  [default: 64; DSL-ProdLDA: the largest of 256, 128, 64 that gives 16 steps per epoch]",
)
@click.option("--epochs", default=100, show_default=True, type=click.IntRange(min=1), help="Passes over the documents.")
@click.option(
    "--samples", default=10, show_default=True, type=click.IntRange(min=1), help="θ draws averaged at inference."
)
@click.option(
    "--checkpoint-every",
    default=10,
    show_default=True,
    type=click.IntRange(min=0),
    help="Checkpoint training every N epochs inside the store; the same command resumes from it (0: never).",
)
@click.option(
    "--seed", default=0, show_default=True, type=int, help="Random seed (same seed, same machine: same model)."
)
@click.option("--top-words", default=15, show_default=True, type=click.IntRange(min=1), help="Words printed per topic.")
@click.option(
    "--topic-words",
    "topic_words",
    type=click.Choice(["salient", "beta"]),
    default="salient",
    show_default=True,
    help="Rank a topic's words by their salience in its documents, or by β alone.",
)
@click.option(
    "--docs", is_flag=True, help="Print one record per document (input record + theta + topic) instead of topics."
)
@quiet_option
def train(
    input: str | None,
    k: int,
    store_path: str | None,
    output: str | None,
    backbone: str,
    embedding_size: int,
    passes: int,
    iterations: int,
    target: str,
    input_kind: str,
    temperature: float | None,
    decoder_temperature: float | None,
    decoder_norm: float | None,
    decoder_affine: bool | None,
    theta_dropout: float | None,
    topk: int | None,
    sparsity: float | None,
    bow_weight: float,
    calibrate: bool | None,
    lam: float | None,
    loss: str,
    lr: float,
    batch_size: int | None,
    epochs: int,
    samples: int,
    checkpoint_every: int,
    seed: int,
    top_words: int,
    topic_words: str,
    docs: bool,
) -> None:
    """Train a topic model on soft labels (DSL), or a bag-of-words baseline.

    Prints one JSON record per topic, writes θ of every store document to `theta/MODEL-ID` in the
    store, and saves the model (-o, or inside the store).
    """
    from st import train as train_mod
    from st.store import write_theta

    if k < 2:
        raise click.BadParameter("K must be at least 2", param_hint="-k")
    if topk is not None and sparsity is not None:
        raise click.UsageError("--topk and --sparsity both choose the target's support; give one")
    store, rows, recs = _training_rows(input, store_path)
    opts = train_mod.TrainOptions(
        k=k,
        backbone=backbone,
        embedding_size=embedding_size,
        passes=passes,
        iterations=iterations,
        target=target,
        input=input_kind,
        temperature=temperature,
        decoder_temperature=decoder_temperature,
        decoder_norm=decoder_norm,
        decoder_affine=decoder_affine,
        theta_dropout=theta_dropout,
        topk=topk,
        sparsity=sparsity,
        bow_weight=bow_weight,
        calibrate=calibrate,
        lam=lam,
        loss=loss,
        lr=lr,
        batch_size=batch_size,
        epochs=epochs,
        samples=samples,
        seed=seed,
        topic_words=topic_words,
        checkpoint_every=checkpoint_every,
    )
    model, _ = train_mod.train(store, rows, opts)
    theta = model.theta(train_mod.model_inputs(store, model.config["training"]["input"]))
    write_theta(store, model.id, theta, {"model": model.id, "k": k})
    if output is not None:
        train_mod.save(model, Path(output), top_words)
        console.info(f"model saved in {Path(output).absolute()}")
    else:
        train_mod.save(model, store.path / "models" / model.id, top_words)
        console.info(f"model saved as {store.path}#{model.id}")
    train_mod.drop_checkpoint(store, model.id)
    topics = model.topics(top_words)
    _topic_table(topics)
    out = click.get_binary_stream("stdout")
    if docs:
        stored = store.array("records") if recs is None else None
        for i, row in enumerate(rows.tolist()):
            rec = recs[i] if recs is not None else records.parse_object(str(stored[row]), str(store.path), row)
            t = theta[row]
            out.write(
                records.dumps({**rec, "theta": [round(float(v), 6) for v in t], "topic": int(t.argmax())}) + b"\n"
            )
    else:
        for topic in topics:
            out.write(records.dumps(topic) + b"\n")
    out.flush()


def _topic_table(topics: list[dict[str, Any]]) -> None:
    if console._state["quiet"] or not console.err.is_terminal:
        return
    from rich.table import Table

    table = Table(title="topics", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("top words")
    for t in topics:
        table.add_row(str(t["topic"]), " ".join(t["words"][:10]))
    console.err.print(table)


@cli.command()
@click.option(
    "-m",
    "--model",
    "model_spec",
    required=True,
    metavar="MODEL",
    help="A model folder (st train -o) or STORE#MODEL-ID.",
)
@document_options
@lm_location_option
@device_option
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="Most documents in one LM batch.")
@click.option("--batch-tokens", default=None, type=click.IntRange(min=1), help="Most padded tokens in one LM batch.")
@cache_dir_option
@trust_remote_code_option
@quiet_option
def infer(
    model_spec: str,
    input: str,
    text_field: str,
    lines: bool,
    lm: str | None,
    device: str,
    batch_size: int | None,
    batch_tokens: int | None,
    cache_dir: str | None,
    trust_remote_code: bool,
) -> None:
    """θ for new documents: each input record plus `theta` and `topic` (its argmax).

    Documents go through the LM, prompt and max tokens the model was trained with (and the shared
    cache); records encoded by another LM or prompt are refused.
    """
    from st import infer as infer_mod
    from st import train as train_mod

    model, _ = train_mod.load(model_spec)
    folder = _cache_dir(cache_dir)
    infer_mod.infer(
        input,
        model,
        lambda: _training_lm(model, lm, device, folder, trust_remote_code),
        _lm_cache(cache_dir),
        click.get_binary_stream("stdout"),
        text_field,
        lines,
        batch_tokens,
        batch_size,
    )


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
@divergence_option
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
@cache_dir_option
@trust_remote_code_option
@quiet_option
def eval_command(
    store_path: str,
    model_specs: tuple[str, ...],
    metrics: str | None,
    reference: str | None,
    top_words: int,
    divergence: str,
    balanced: int | None,
    fmt: str,
    llm_rating: bool,
    rater: str | None,
    cache_dir: str | None,
    trust_remote_code: bool,
) -> None:
    """Measure topic models: coherence (gensim), diversity, clustering and retrieval against labels."""
    from st import evaluate as ev
    from st import train as train_mod
    from st.store import Store

    wanted = ev.parse_metrics(metrics)
    store = Store(store_path)
    recs = [records.parse_object(str(r), str(store.path), i) for i, r in enumerate(store.array("records"))]
    field = store.attrs.get("text_field", "text")
    labels = [r.get("label") for r in recs]
    has_labels = all(lab is not None for lab in labels)
    if not has_labels and any(m in ev.LABEL_METRICS for m in wanted):
        console.info("note: not every document has a label; purity, NMI, ARI and P@k are left out")
        wanted = [m for m in wanted if m not in ev.LABEL_METRICS]
    texts = None
    if {"npmi", "cv"} & set(wanted):
        source = reference or None
        if source is None:
            texts = [vocab_mod.tokenize(str(r.get(field, ""))) for r in recs]
        else:
            texts = [vocab_mod.tokenize(d.text) for d in records.read_documents(source) if d.text]
    gold = np.asarray([str(lab) for lab in labels]) if has_labels else None
    results = []
    rating_lm = None
    for spec in model_specs:
        model, _ = train_mod.load(spec)
        key = f"theta/{model.id}"
        if key not in store:
            raise InputError(
                f"the store has no θ for model {model.id}; train the model on this store first (`st train --store`)",
                store_path,
            )
        theta = store.array(key).astype(np.float64)
        topics = [t["words"] for t in model.topics(max(top_words, 25))]
        row: dict[str, Any] = {"model": model.id, "k": int(theta.shape[1]), "documents": int(store.rows)}
        with console.progress(f"st eval {model.id}", total=len(wanted), unit="metrics") as bar:
            for m in wanted:
                row[m] = ev.measure(m, topics, texts, theta, gold, top_words, divergence, balanced, row)
                bar.advance()
        if llm_rating:
            if rating_lm is None:
                rating_lm = _load_lm(rater, "auto", "auto", _cache_dir(cache_dir), trust_remote_code)
            ratings = ev.llm_rating(topics, rating_lm, _lm_cache(cache_dir), top_words)
            row["llm_rating"] = round(float(np.mean(ratings)), 6)
        results.append(row)
    _eval_output(results, fmt)


def _eval_output(results: list[dict[str, Any]], fmt: str) -> None:
    from rich.console import Console
    from rich.table import Table

    for r in results:
        r.pop("_p@k", None)
    out = click.get_binary_stream("stdout")
    columns = [c for c in results[0] if c not in ("model",)]
    table = Table(title="st eval")
    table.add_column("model")
    for c in columns:
        table.add_column(c, justify="right")
    for r in results:
        table.add_row(r["model"], *[f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in columns])
    if fmt == "table":
        Console(file=sys.stdout, width=200).print(table)
        return
    for r in results:
        out.write(records.dumps(r) + b"\n")
    out.flush()
    if not console._state["quiet"]:
        console.err.print(table)


@cli.command()
@click.argument("query", required=False)
@click.option("-m", "--model", "model_spec", required=True, metavar="MODEL", help="A model folder or STORE#MODEL-ID.")
@click.option("--store", "store_path", required=True, type=click.Path(file_okay=False), help="The store to search.")
@click.option("--like", default=None, metavar="ID", help="Find documents like this stored one (by id).")
@click.option("--topic", default=None, type=click.IntRange(min=0), help="Find the documents most about this topic.")
@click.option("-n", "--hits", "n", default=10, show_default=True, type=click.IntRange(min=1), help="Number of hits.")
@divergence_option
@click.option(
    "--snippet",
    default=200,
    show_default=True,
    type=click.IntRange(min=0),
    help="Truncate the text of each hit to this many characters (0: whole text).",
)
@lm_location_option
@device_option
@cache_dir_option
@trust_remote_code_option
@quiet_option
def search(
    query: str | None,
    model_spec: str,
    store_path: str,
    like: str | None,
    topic: int | None,
    n: int,
    divergence: str,
    snippet: int,
    lm: str | None,
    device: str,
    cache_dir: str | None,
    trust_remote_code: bool,
) -> None:
    """Topic-guided retrieval: the stored documents whose θ is closest to a query's.

    QUERY is free text (encoded through the model's LM, prompt and the shared cache); or --like ID
    for documents like a stored one; or --topic K for the documents most about topic K. Prints
    JSONL hits, best first: id, score (the divergence, or θ_K with --topic), topic, text, and the
    document's other fields.
    """
    from st import search as search_mod
    from st import train as train_mod
    from st.store import Store

    if sum(x is not None for x in (query, like, topic)) != 1:
        raise click.UsageError("give exactly one of QUERY, --like ID or --topic K")
    model, _ = train_mod.load(model_spec)
    store = Store(store_path)
    key = f"theta/{model.id}"
    if key not in store:
        raise InputError(f"the store has no θ for model {model.id}; train the model on this store first", store_path)
    theta = store.array(key).astype(np.float32)
    log_key = f"log_theta/{model.id}"
    log_t = store.array(log_key) if log_key in store else None
    if topic is not None:
        if topic >= theta.shape[1]:
            raise click.BadParameter(f"the model has topics 0 to {theta.shape[1] - 1}", param_hint="--topic")
        idx, scores = search_mod.rank_topic(theta, topic, n)
    elif like is not None:
        ids = store.ids()
        if like not in ids:
            raise InputError(f"no document with id {like!r}", store_path)
        row = ids.index(like)
        idx, scores = search_mod.rank(theta, theta[row], n, divergence, exclude=row, log_t=log_t)
    else:
        q = _query_theta(model, str(query), lm, device, cache_dir, trust_remote_code)
        idx, scores = search_mod.rank(theta, q, n, divergence, log_t=log_t)
    field = store.attrs.get("text_field", "text")
    stored = store.group["records"]
    out = click.get_binary_stream("stdout")
    ids = store.ids()
    for j, score in zip(idx.tolist(), scores.tolist(), strict=True):
        rec = records.parse_object(str(stored[j]), str(store.path), j)
        text = str(rec.get(field, ""))
        hit = {
            "id": ids[j],
            "score": round(float(score), 6),
            "topic": int(theta[j].argmax()),
            "text": text[:snippet] if snippet else text,
        }
        hit.update({k: v for k, v in rec.items() if k not in hit and k != field})
        out.write(records.dumps(hit) + b"\n")
    out.flush()


def _query_theta(
    model: Any, text: str, lm: str | None, device: str, cache_dir: str | None, trust_remote_code: bool
) -> Any:
    from st.infer import check_lm
    from st.prompt import Prompt

    source = model.config.get("input_source") or model.config
    if model.config["training"]["input"] == "bow":
        return model.theta(vocab_mod.bag_of_words([text], model.vocab).toarray().astype(np.float32))[0]
    folder = _cache_dir(cache_dir)
    loaded = _training_lm(model, lm, device, folder, trust_remote_code)
    check_lm(model, loaded, "the LM")
    prompt = Prompt(**source["prompt"]) if source.get("prompt") else Prompt()
    hidden, _ = loaded.encode([text], prompt, int(source.get("max_tokens") or 512), _lm_cache(cache_dir))
    return model.theta(hidden)[0]


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
    if isinstance(e, click.UsageError) and not isinstance(e, InputError):
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
