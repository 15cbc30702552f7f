"""The README's generated blocks: text between `<!-- NAME:start -->` and `<!-- NAME:end -->`."""

from __future__ import annotations

import re
import sys
from pathlib import Path


def put(readme: Path, name: str, text: str) -> None:
    body = readme.read_text()
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(body):
        sys.exit(f"{readme} has no <!-- {name}:start --> / <!-- {name}:end --> markers")
    readme.write_text(pattern.sub(lambda m: m.group(1) + text.rstrip("\n") + "\n" + m.group(2), body))


def publish(text: str, name: str, out: Path | None, readme: Path | None) -> None:
    """Print a generated block and write it to `out` and between the README's `name` markers."""
    print(text)
    if out:
        out.write_text(text + "\n")
    if readme:
        put(readme, name, text)
