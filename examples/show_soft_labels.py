"""Print the top soft-label words of the first documents in a store: python show_soft_labels.py STORE [N]."""

from __future__ import annotations

import sys

import numpy as np
import orjson

from st.store import Store


def main() -> None:
    store = Store(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    vocab = np.asarray(store.vocab())
    tau = float(store.attrs["temperature"])
    logits = store.array("logits")[:n].astype(np.float64) / tau
    soft_label = np.exp(logits - logits.max(axis=1, keepdims=True))
    soft_label /= soft_label.sum(axis=1, keepdims=True)
    for record, p in zip(store.array("records")[:n], soft_label, strict=False):
        doc = orjson.loads(record)
        top = np.argsort(-p)[:6]
        words = ", ".join(f"{vocab[j]} {p[j]:.3f}" for j in top)
        print(f"[{doc.get('label', '')}] {doc['text'][:70]}\n    -> {words}")


if __name__ == "__main__":
    main()
