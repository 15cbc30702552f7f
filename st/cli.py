"""The `st` command. The whole data flow:

    documents.jsonl ──st vocab──▶ vocab.json
    documents.jsonl ──st softlabel [--vocab]──▶ store.zarr (logits, hidden, bow, records) + records.jsonl
    documents.jsonl ──st embed──▶ store.zarr (hidden, records) + records.jsonl

Records on stdout carry `_st: {store, row}`, so stages compose in a pipe. Commands are thin: the
work is in one module per stage (st.vocab, st.softlabel), the LM backend (st.lm), the cache
(st.cache) and the store (st.store).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from st import __version__, console, records
from st import vocab as vocab_mod
from st.errors import InputError
from st.prompt import INSTRUCTION, TEMPLATE, Prompt

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
    click.option(
        "--device", default="auto", show_default=True, help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."
    ),
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
    click.option(
        "--cache-dir",
        default=None,
        type=click.Path(file_okay=False),
        help="LM cache and converted models.  [default: $ST_CACHE_DIR or ~/.cache/st]",
    ),
    click.option(
        "--trust-remote-code", is_flag=True, help="Let a Hugging Face model run its own Python code (off: safer)."
    ),
)
output_option = click.option(
    "-o",
    "--output",
    default="st.zarr",
    show_default=True,
    type=click.Path(),
    help="The store to write (a Zarr folder; an existing st store there is replaced).",
)


def _prompt(template: str, instruction: str) -> Prompt:
    template = _text_or_file(template) if template.startswith("@") else template.replace("\\n", "\n")
    return Prompt(template=template, instruction=_text_or_file(instruction))


def _cache_dir(value: str | None) -> Path:
    from st.cache import default_cache_dir

    return Path(value) if value else default_cache_dir()


def _load_lm(model: str | None, device: str, dtype: str, cache_dir: Path, trust_remote_code: bool):  # noqa: ANN202
    from st.lm import LM

    with console.err.status("loading the LM", spinner="dots") if not console._state["quiet"] else _null():
        return LM(model, device=device, dtype=dtype, cache_dir=cache_dir, trust_remote_code=trust_remote_code)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


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
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False), help="Cache folder (converted models).")
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
        **extra: Any,
    ) -> None:
        from st import softlabel
        from st.cache import Cache

        opts = softlabel.Options(
            text_field=text_field,
            lines=lines,
            prompt=_prompt(template, instruction),
            max_tokens=max_tokens,
            temperature=extra.get("temperature", 3.0),
            batch_tokens=batch_tokens,
            batch_size=batch_size,
        )
        words = vocab_mod.load(extra["vocab_path"]) if extra.get("vocab_path") else None
        building = kind == "softlabel" and words is None
        path, cleanup = softlabel.spool_stdin(input) if building else (input, lambda: None)
        try:
            folder = _cache_dir(cache_dir)
            if building:
                words = softlabel.corpus_vocabulary(path, opts, extra["vocab_size"], records.source_name(input))
            softlabel.encode_corpus(
                path,
                output,
                lambda: _load_lm(model, device, dtype, folder, trust_remote_code),
                Cache(folder),
                opts,
                click.get_binary_stream("stdout"),
                words,
                extra.get("unique_prefix", False),
                kind,
            )
        finally:
            cleanup()

    return run


@cli.command()
@document_options
@output_option
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
@lm_options
@quiet_option
def softlabel(**kwargs: Any) -> None:
    """Soft labels: the LM's next-token logits over the vocabulary, and its hidden state, per document.

    Writes the store (-o) and prints each input record plus `_st: {store, row}` on stdout.
    """
    _encode_command("softlabel")(**kwargs)


@cli.command()
@document_options
@output_option
@lm_options
@quiet_option
def embed(**kwargs: Any) -> None:
    """Document representations: the LM's last-position hidden state under the prompt.

    Writes the store (-o) and prints each input record plus `_st: {store, row}` on stdout.
    """
    _encode_command("embed")(**kwargs)


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
    except Exception as e:  # noqa: BLE001 - the promise is: no traceback, one line
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
