"""Document records in, records with store references out (JSONL).

A document record is one JSON object per line with a `text` (the field can be renamed), an optional
`id` (default: the 0-based line number) and an optional `label`; every other field passes through.
"""

from __future__ import annotations

import json
import lzma
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

from st.errors import InputError

BOM = b"\xef\xbb\xbf"
# A longer line is almost surely not one document (a file without line breaks, a binary): refuse it
# before it is held in memory, decoded, parsed and tokenized.
MAX_LINE_BYTES = 16 << 20


def max_line_bytes() -> int:
    return int(os.environ.get("ST_MAX_LINE_BYTES") or MAX_LINE_BYTES)


@dataclass
class Document:
    line: int  # 1-based, for error messages
    id: str
    text: str
    record: dict[str, Any]


def source_name(path: str) -> str:
    return "<stdin>" if path == "-" else path


# Large corpora are kept compressed: these are read through their decompressor, chosen by suffix.
COMPRESSED = (".gz", ".bz2", ".xz", ".zst")


def is_compressed(path: str) -> bool:
    return path.endswith(COMPRESSED)


def open_binary(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    try:
        if path.endswith(".gz"):
            import gzip

            return gzip.open(path, "rb")  # type: ignore[return-value]
        if path.endswith(".bz2"):
            import bz2

            return bz2.open(path, "rb")
        if path.endswith(".xz"):
            return lzma.open(path, "rb")
        if path.endswith(".zst"):
            return _open_zstd(path)
        return open(path, "rb")  # closed by the caller's generator
    except OSError as e:
        raise InputError(f"cannot open: {e.strerror}", source_name(path)) from None


def _open_zstd(path: str) -> IO[bytes]:
    try:
        import zstandard
    except ImportError:
        raise InputError(
            "reading .zst needs the zstandard package (pip install zstandard), or decompress it first: "
            "zstd -dc FILE | st ...",
            path,
        ) from None
    import io

    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))


def _readline(f: IO[bytes], size: int, name: str, number: int) -> bytes:
    try:
        return f.readline(size)
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise InputError(f"cannot read: {e} (a damaged or truncated compressed file?)", name, number) from None


def iter_lines(path: str, name: str | None = None) -> Iterator[tuple[int, str]]:
    """Decoded lines with their 1-based numbers; a BOM and CRLF line ends are accepted.
    `name` is what error messages call the input (stdin spooled to a file is still <stdin>)."""
    name = name or source_name(path)
    f = open_binary(path)
    limit = max_line_bytes()
    try:
        number = 0
        while raw := _readline(f, limit + 1, name, number + 1):
            number += 1
            if len(raw) > limit:
                raise InputError(
                    f"line longer than {limit:,} bytes; one line must hold one document "
                    "(split the input, or raise the limit with ST_MAX_LINE_BYTES)",
                    name,
                    number,
                )
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"not UTF-8 (byte {e.start}); re-encode the file as UTF-8", name, number) from None
            yield number, line.rstrip("\r\n")
    finally:
        if f is not sys.stdin.buffer:
            f.close()


def parse_object(line: str, name: str, number: int) -> dict[str, Any]:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        try:  # orjson refuses integers beyond 64 bits that the JSON grammar allows
            value = json.loads(line)
        except ValueError:
            raise InputError(
                f"not valid JSON ({e.msg}); each line must be one JSON object (or use --lines for plain text)",
                name,
                number,
            ) from None
    if not isinstance(value, dict):
        raise InputError(f"expected a JSON object, got {type(value).__name__}", name, number)
    return value


def read_documents(
    path: str, text_field: str = "text", lines: bool = False, name: str | None = None
) -> Iterator[Document]:
    """Validated documents, streamed. A blank document comes with text "" (whitespace is not a
    document); the caller skips and counts it."""
    name = name or source_name(path)
    seen: dict[str, int] = {}
    for number, line in iter_lines(path, name):
        if lines:
            doc_id, text, record = str(number - 1), line, {"id": str(number - 1), "text": line}
        else:
            if not line.strip():
                continue
            record = parse_object(line, name, number)
            if text_field not in record:
                raise InputError(f"no {text_field!r} field; name the text field with --text-field", name, number)
            text = record[text_field]
            if not isinstance(text, str):
                raise InputError(f"field {text_field!r} must be a string, got {type(text).__name__}", name, number)
            raw_id = record.get("id", number - 1)
            if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
                raise InputError(f"'id' must be a string or an integer, got {raw_id!r}", name, number)
            doc_id = str(raw_id)
        if doc_id in seen:
            raise InputError(
                f"duplicate id {doc_id!r} (first on line {seen[doc_id]}); ids must be unique", name, number
            )
        seen[doc_id] = number
        yield Document(number, doc_id, text if text.strip() else "", record)


def dumps(record: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(record)
    except TypeError:  # e.g. an integer beyond 64 bits, parsed by the json fallback
        return json.dumps(record, ensure_ascii=False).encode()


def with_store_ref(record: dict[str, Any], store: str, row: int) -> dict[str, Any]:
    """The input record unchanged plus `_st`; a previous stage's `_st` is replaced."""
    out = dict(record)
    out["_st"] = {"store": store, "row": row}
    return out
