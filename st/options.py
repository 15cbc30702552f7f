"""Every option of `st`, declared once: a dataclass field whose metadata says how the command line
spells it. The Python API takes the fields as keyword arguments; `st.cli` generates its click
options from them, so a name, a default or a range is written in one place only.

One meaning per flag across commands: `--lm` is the language model, `-m/--model` the topic model,
`--lm-batch-size` documents per LM batch, `--batch-size` documents per training step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from st.errors import FLAG_NAMES, UsageError
from st.prompt import INSTRUCTION, TEMPLATE

CHUNK_ROWS = 1024
TEMPERATURE = 3.0  # the published optimum for τ
# Half the disk and memory of float32; the soft label is a softmax at τ ≈ 3, where float16's rounding
# of a logit (at most 0.008 for |logit| < 16) changes no measured quality (README, "Scale").
LOGITS_DTYPE = "float16"
# The sentence embedder beside the LM's hidden state in a soft-label store (README, "Robustness").
EMBEDDER = "minilm"
NO_EMBEDDER = "none"
WINDOW_ROWS = 65536  # training documents in memory at a time (README, "Scale")
TOP_WORDS = 15  # words shown and saved per topic


@dataclass(frozen=True)
class Flag:
    """How one option is spelled and checked on the command line (and checked in Python)."""

    flags: tuple[str, ...]
    help: str
    choices: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    is_flag: bool = False
    negatable: bool = False  # --x/--no-x, for a bool whose None means "the default rule"
    metavar: str | None = None
    default_text: str | None = None  # how --help states a default that is a rule, not a value
    path: str | None = None  # "file" or "dir"
    kind: type = str
    deprecated: tuple[str, ...] = ()  # earlier spellings that still work, with a warning
    message: str | None = None  # what to say when the value is below `min` (the CLI then checks it here too)


def option(default: Any, *flags: str, help: str, **spec: Any) -> Any:
    kind = spec.pop("kind", type(default) if default is not None and not callable(default) else str)
    meta = {"flag": Flag(tuple(flags), help, kind=kind, **spec)}
    if callable(default):
        return dataclasses.field(default_factory=default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def fields(cls: type) -> list[tuple[dataclasses.Field[Any], Flag]]:
    return [(f, f.metadata["flag"]) for f in dataclasses.fields(cls) if "flag" in f.metadata]


def flag_of(cls: type, name: str) -> str:
    """The long flag of an option, for messages."""
    for f, spec in fields(cls):
        if f.name == name:
            return next(s for s in spec.flags if s.startswith("--"))
    raise KeyError(name)


def check(opts: Any) -> None:
    """Ranges and choices, for callers that do not come through the command line."""
    for f, spec in fields(type(opts)):
        value = getattr(opts, f.name)
        if value is None or spec.is_flag or spec.negatable:
            continue
        name = flag_of(type(opts), f.name)
        if spec.choices is not None and value not in spec.choices:
            raise UsageError(f"{name} must be one of {', '.join(spec.choices)}, not {value!r}")
        if spec.min is not None and (value < spec.min or (spec.min_open and value == spec.min)):
            if spec.message:
                raise UsageError(spec.message)
            raise UsageError(f"{name} must be {'>' if spec.min_open else '>='} {spec.min:g}, not {value!r}")
        if spec.max is not None and (value > spec.max or (spec.max_open and value == spec.max)):
            raise UsageError(f"{name} must be {'<' if spec.max_open else '<='} {spec.max:g}, not {value!r}")


class Options:
    def __post_init__(self) -> None:
        check(self)

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass
class DocumentOptions(Options):
    text_field: str = option("text", "--text-field", help="Field of each JSON record that holds the text.")
    lines: bool = option(
        False, "--lines", is_flag=True, help="Read each input line as a plain-text document (ids are line numbers)."
    )


@dataclass
class VocabOptions(Options):
    vocab_size: int = option(
        2000,
        "--vocab-size",
        min=1,
        deprecated=("--size",),
        help="Vocabulary size when it is built from the input (words kept, most frequent first).",
    )
    min_df: int = option(1, "--min-df", min=1, help="Keep words in at least this many documents.")
    max_df: float = option(
        1.0, "--max-df", min=0, max=1, min_open=True, help="Keep words in at most this share of documents."
    )
    unique_prefix: bool = option(
        False,
        "--unique-prefix",
        is_flag=True,
        help="Keep only the most frequent word of each group sharing a first LM sub-token.",
    )


@dataclass
class LMOptions(Options):
    lm: str | None = option(
        None,
        "--lm",
        metavar="LM",
        deprecated=("--model", "-m"),
        default_text="the embedded SmolLM2-135M-Instruct",
        help="The language model: a local model folder, a .gguf file, or a Hugging Face id in the local cache.",
    )
    device: str = option("auto", "--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")
    dtype: str = option(
        "auto",
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="auto: bfloat16 on GPU and on CPUs with AMX/AVX-512 BF16, else float32.",
    )
    cache_dir: str | None = option(
        None,
        "--cache-dir",
        path="dir",
        default_text="$ST_CACHE_DIR or ~/.cache/st",
        help="LM cache and converted models; an fsspec URL (s3://…) holds the LM cache alone, for clusters.",
    )
    trust_remote_code: bool = option(
        False,
        "--trust-remote-code",
        is_flag=True,
        help="Let a Hugging Face model run its own Python code (off: safer).",
    )


@dataclass
class EncodeOptions(Options):
    max_tokens: int = option(
        512,
        "--max-tokens",
        min=1,
        help="Truncate each document to this many LM tokens before it is put into the prompt.",
    )
    instruction: str = option(INSTRUCTION, "--instruction", help="Prompt instruction (@FILE reads it from a file).")
    template: str = option(
        TEMPLATE,
        "--template",
        help="Prompt template with {instruction} and {document}; \\n is a newline (@FILE reads a file).",
    )
    lm_batch_size: int | None = option(
        None,
        "--lm-batch-size",
        min=1,
        kind=int,
        deprecated=("--batch-size",),
        default_text="as many as fit --batch-tokens",
        help="Most documents in one LM batch.",
    )
    batch_tokens: int | None = option(
        None,
        "--batch-tokens",
        min=1,
        kind=int,
        default_text="1024 on CPU, 16384 on GPU",
        help="Most padded tokens in one LM batch.",
    )
    chunk_rows: int = option(
        CHUNK_ROWS,
        "--chunk-rows",
        min=1,
        help="Rows per store chunk: the unit written at once, and the unit of work of a Ray worker.",
    )


@dataclass
class SoftLabelOptions(Options):
    temperature: float = option(
        TEMPERATURE,
        "-t",
        "--temperature",
        min=0,
        min_open=True,
        help="τ of the soft label softmax(logits/τ), recorded in the store (the logits are stored raw).",
    )
    whole_words: int = option(
        0,
        "--whole-words",
        min=0,
        help="Words that share a first sub-token get P(first) x P(second | first): one extra LM step for each "
        "document's N most probable shared first sub-tokens (the rest split evenly). 0: off.",
    )
    logits_dtype: str = option(
        LOGITS_DTYPE,
        "--logits-dtype",
        choices=("float16", "float32"),
        help="How the store keeps the logits: float16 halves its size and changes no measured quality.",
    )
    embedder: str = option(
        EMBEDDER,
        "--embedder",
        metavar="MODEL",
        help="The document's representation (the topic model's input) is the LM's hidden state and this sentence "
        "embedder's embedding side by side, each of unit length: minilm (all-MiniLM-L6-v2, packaged offline), a "
        "local sentence-transformers folder, or none (the LM's hidden state alone).",
    )


@dataclass
class StoreOptions(Options):
    output: str = option(
        "st.zarr",
        "-o",
        "--output",
        path="any",
        help="The store to write (a Zarr folder; an existing st store there is replaced, unless it holds models).",
    )
    force: bool = option(
        False, "--force", is_flag=True, help="Replace the output store even if it holds trained models."
    )


@dataclass
class EmbedderOptions(Options):
    """`st embed`: a sentence embedder as the documents' representation (the soft label stays the target)."""

    embedder: str | None = option(
        None,
        "--embedder",
        metavar="MODEL",
        default_text="the LM's hidden state",
        help="A local sentence-transformers folder, or minilm (all-MiniLM-L6-v2, packaged offline): "
        "its sentence embedding becomes the document's representation.",
    )
    with_lm: bool = option(
        False,
        "--with-lm",
        is_flag=True,
        help="With --embedder: the LM's hidden state and the sentence embedding side by side, each of unit length.",
    )


@dataclass
class RayOptions(Options):
    backend: str = option(
        "local",
        "--backend",
        choices=("local", "ray"),
        help="local: the LM in this process; ray: a pool of LM workers on a Ray cluster (pip install 'st[ray]').",
    )
    ray_address: str | None = option(
        None,
        "--ray-address",
        metavar="ADDR",
        default_text="start Ray on this machine",
        help="Ray cluster to join (e.g. ray://head:10001 or auto).",
    )
    workers: int | None = option(
        None,
        "--workers",
        min=1,
        kind=int,
        default_text="one per --gpus-per-worker GPUs, else 1",
        help="LM workers for --backend ray.",
    )
    gpus_per_worker: float = option(
        0.0, "--gpus-per-worker", min=0, help="GPUs each Ray worker holds (0: CPU workers)."
    )
    cpus_per_worker: float | None = option(
        None,
        "--cpus-per-worker",
        min=0,
        min_open=True,
        kind=float,
        default_text="1 with GPUs, else the cluster's share",
        help="CPUs each Ray worker holds (its torch threads).",
    )


@dataclass
class RankingOptions(Options):
    divergence: str = option(
        "kl",
        "--divergence",
        choices=("kl", "js"),
        help="How documents are ranked by their θ: KL(θ_i ‖ θ_j), or Jensen-Shannon.",
    )


@dataclass
class TrainOptions(Options):
    """A topic model's hyper-parameters: everything but `checkpoint_every` is part of its id."""

    k: int = option(50, "-k", "--topics", min=2, message="K must be at least 2 (-k)", help="Number of topics K.")
    backbone: str = option(
        "prodlda",
        "--backbone",
        choices=("prodlda", "etm", "ecrtm", "fastopic", "lda"),
        help="The topic model: the VAEs prodlda, etm or ecrtm, or fastopic (each trained on --target); "
        "lda: gensim's LdaModel on the bag of words.",
    )
    passes: int = option(10, "--passes", min=1, help="LDA: passes over the corpus.")
    iterations: int = option(100, "--iterations", min=1, help="LDA: inference iterations.")
    target: str = option(
        "softlabel",
        "--target",
        choices=("softlabel", "bow"),
        help="What the decoder reconstructs: the LM soft label (DSL) or the bag of words (ProdLDA).",
    )
    input: str = option(
        "hidden",
        "--input",
        choices=("hidden", "bow"),
        help="What the encoder reads: the LM hidden state or the bag of words.",
    )
    temperature: float | None = option(
        None,
        "-t",
        "--temperature",
        min=0,
        min_open=True,
        kind=float,
        default_text="the store's",
        help="τ of the soft-label target.",
    )
    decoder_temperature: float | None = option(
        None,
        "--decoder-temperature",
        min=0,
        min_open=True,
        kind=float,
        default_text="the target's τ",
        help="τ of the decoder softmax.",
    )
    decoder_norm: float | None = option(
        None,
        "--decoder-norm",
        min=0,
        max=1,
        kind=float,
        default_text="0.75 for DSL-ProdLDA, else 1",
        help="Power of the decoder batch norm's division by each word's spread: 1 standardises (ProdLDA), "
        "0 only centres.",
    )
    decoder_affine: bool | None = option(
        None,
        "--decoder-affine",
        negatable=True,
        kind=bool,
        default_text="on for DSL-ProdLDA",
        help="Follow the decoder norm with a learned gain and shift per word.",
    )
    topk: int | None = option(None, "--topk", min=1, kind=int, help="Keep only each target's top N words.")
    sparsity: float | None = option(
        None,
        "--sparsity",
        min=0,
        max=1,
        max_open=True,
        kind=float,
        help="Drop this share of each target's smallest entries.",
    )
    bow_weight: float = option(
        0.3,
        "--bow-weight",
        min=0,
        max=1,
        help="Mix this share of the document's own normalised bag of words into the soft-label target.",
    )
    neighbours: int | None = option(
        None,
        "--neighbours",
        min=0,
        kind=int,
        default_text="10 for DSL-ProdLDA, else 0",
        help="Mix into each document's target the mean target of this many documents nearest to it in the "
        "encoder's inputs (cosine, among up to 20,000 training documents; 0: none).",
    )
    neighbour_weight: float = option(
        0.5,
        "--neighbour-weight",
        min=0,
        max=1,
        help="The share of the target that comes from the --neighbours.",
    )
    layout: str | None = option(
        None,
        "--layout",
        choices=("umap", "inputs"),
        kind=str,
        default_text="umap for DSL-ProdLDA, else inputs",
        help="Where --neighbours and the k-means start (--init kmeans) look for documents alike: a 5-dimensional "
        "UMAP layout of the standardised inputs, which draws each theme's documents together, or the inputs.",
    )
    balance_inputs: bool | None = option(
        None,
        "--balance-inputs",
        negatable=True,
        kind=bool,
        default_text="on for DSL-ProdLDA",
        help="Where the input is the LM's hidden state beside a sentence embedder's, let both count alike when "
        "--neighbours and the k-means start look for documents alike (each standardised part scaled to unit length).",
    )
    calibrate: bool | None = option(
        None,
        "--calibrate",
        negatable=True,
        kind=bool,
        default_text="on for DSL-ProdLDA",
        help="Subtract each word's mean logit over the training documents before the softmax.",
    )
    lam: float | None = option(
        None,
        "--lambda",
        min=0,
        min_open=True,
        kind=float,
        default_text="1000; fastopic: 10",
        help="Weight λ of the reconstruction term.",
    )
    loss: str = option("kl", "--loss", choices=("kl", "ce"), help="Reconstruction loss.")
    lr: float = option(2e-3, "--lr", help="Adam learning rate.")
    betas: tuple[float, float] = (0.99, 0.99)
    batch_size: int | None = option(
        None,
        "--batch-size",
        min=2,
        kind=int,
        default_text="64; DSL-ProdLDA: the largest of 256, 128, 64 that gives 16 steps per epoch",
        help="Documents per training step.",
    )
    epochs: int = option(100, "--epochs", min=1, help="Passes over the documents.")
    window: int = option(
        WINDOW_ROWS,
        "--window",
        min=0,
        help="Training documents in memory at once: each epoch reads the store's chunks in a random order, "
        "this many documents at a time, shuffled within (0: the whole corpus).",
    )
    restarts: int = option(
        1,
        "--restarts",
        min=1,
        help="Train this many times from different seeds and keep the model with the lowest training objective "
        "(measured over all training documents at the end; no labels).",
    )
    init: str | None = option(
        None,
        "--init",
        choices=("random", "kmeans"),
        kind=str,
        default_text="kmeans for DSL-ProdLDA, else random",
        help="prodlda: start β at random, or at the mean targets of a k-means clustering of the encoder's inputs.",
    )
    cluster_weight: float | None = option(
        None,
        "--cluster-weight",
        min=0,
        kind=float,
        default_text="0",
        help="With --init kmeans: the weight of a cross-entropy that holds each document's θ to the k-means "
        "cluster its topics started from, beside the objective (0: none; 30 helped noisy short texts).",
    )
    theta_neighbours: int | None = option(
        None,
        "--theta-neighbours",
        min=0,
        kind=int,
        default_text="30 for DSL-ProdLDA, else 0",
        help="Mix into each document's θ the mean θ of this many documents nearest to it in the encoder's inputs, "
        "among up to 2,000 training documents the model keeps (cosine; the same for training and new documents; "
        "0: none).",
    )
    theta_neighbour_weight: float = option(
        0.5,
        "--theta-neighbour-weight",
        min=0,
        max=1,
        help="The share of θ that comes from the --theta-neighbours.",
    )
    samples: int = option(10, "--samples", min=1, help="θ draws averaged at inference.")
    seed: int = option(0, "--seed", help="Random seed (same seed, same machine: same model).")
    hidden: list[int] = dataclasses.field(default_factory=lambda: [200, 200])
    dropout: float = 0.2
    theta_dropout: float | None = option(
        None,
        "--theta-dropout",
        min=0,
        max=1,
        max_open=True,
        kind=float,
        default_text="0 for DSL-ProdLDA, else 0.2",
        help="Dropout on θ while training.",
    )
    embedding_size: int = option(
        200, "--embedding-size", min=1, help="etm, ecrtm: size of the topic and word embeddings."
    )
    topic_words: str = option(
        "salient",
        "--topic-words",
        choices=("salient", "beta"),
        help="Rank a topic's words by their salience in its documents, or by β alone.",
    )
    checkpoint_every: int = option(
        10,
        "--checkpoint-every",
        min=0,
        help="Checkpoint training every N epochs inside the store; the same command resumes from it (0: never).",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.topk is not None and self.sparsity is not None:
            raise UsageError("--topk and --sparsity both choose the target's support; give one")


def _register() -> None:
    for cls in Options.__subclasses__():
        for f, spec in fields(cls):
            for flag in (*spec.flags, *spec.deprecated):
                if flag.startswith("--"):
                    FLAG_NAMES.setdefault(flag, f.name)
    FLAG_NAMES["-k"] = "k"


_register()
