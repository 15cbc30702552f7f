"""st: topic modeling supervised by language-model soft labels.

The Python API (see `st.api`): `st.LM`, `st.softlabel`, `st.embed`, `st.vocabulary`,
`st.open_store`, `st.DSL` / `st.ProdLDA` / `st.CTM` / `st.LDA` / `st.TopicModel`, `st.load`,
`st.evaluate`, `st.rate`, `st.search`. They are imported on first use: `import st` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = (
    "CTM",
    "DSL",
    "LDA",
    "LM",
    "Hit",
    "ProdLDA",
    "TopicModel",
    "embed",
    "evaluate",
    "load",
    "open_store",
    "rate",
    "search",
    "softlabel",
    "vocabulary",
)
_OTHER = {
    "Corpus": "st.store",
    "Store": "st.store",
    "MemoryCorpus": "st.store",
    "StError": "st.errors",
    "InputError": "st.errors",
    "Progress": "st.progress",
}

if TYPE_CHECKING:
    from st.api import (
        CTM,
        DSL,
        LDA,
        LM,
        Hit,
        ProdLDA,
        TopicModel,
        embed,
        evaluate,
        load,
        open_store,
        rate,
        search,
        softlabel,
        vocabulary,
    )
    from st.errors import InputError, StError
    from st.progress import Progress
    from st.store import Corpus, MemoryCorpus, Store


def __getattr__(name: str) -> Any:
    import importlib

    if name in _API:
        return getattr(importlib.import_module("st.api"), name)
    if name in _OTHER:
        return getattr(importlib.import_module(_OTHER[name]), name)
    raise AttributeError(f"module 'st' has no attribute {name!r}")


__all__ = [
    "CTM",
    "DSL",
    "LDA",
    "LM",
    "Corpus",
    "Hit",
    "InputError",
    "MemoryCorpus",
    "ProdLDA",
    "Progress",
    "StError",
    "Store",
    "TopicModel",
    "embed",
    "evaluate",
    "load",
    "open_store",
    "rate",
    "search",
    "softlabel",
    "vocabulary",
]
