"""st: topic modeling supervised by language-model soft labels.

The Python API (see `st.api`): `st.LM`, `st.softlabel`, `st.embed`, `st.vocabulary`,
`st.open_store`, `st.DSL` / `st.ProdLDA` / `st.CTM` / `st.LDA` / `st.TopicModel`, `st.load`,
`st.evaluate`, `st.rate`, `st.search`, `st.report`. They are imported on first use: `import st` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = "CTM DSL LDA LM Hit ProdLDA TopicModel embed evaluate load open_store rate report search softlabel vocabulary"
_EXPORTS = {
    **dict.fromkeys(_API.split(), "st.api"),
    **dict.fromkeys(["Corpus", "Store", "MemoryCorpus"], "st.store"),
    **dict.fromkeys(["StError", "InputError"], "st.errors"),
    "Progress": "st.progress",
}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports on first use
    from st.api import (  # noqa: F401
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
        report,
        search,
        softlabel,
        vocabulary,
    )
    from st.errors import InputError, StError  # noqa: F401
    from st.progress import Progress  # noqa: F401
    from st.store import Corpus, MemoryCorpus, Store  # noqa: F401


def __getattr__(name: str) -> Any:
    import importlib

    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'st' has no attribute {name!r}")
