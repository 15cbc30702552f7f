"""st from Python: soft labels, a DSL topic model, θ of new texts, evaluation and search.

    python examples/python_api.py                      # the embedded LM on the 200 example titles
    python examples/python_api.py --lm MODEL_FOLDER --epochs 5 --out result.npz

Nothing is written unless asked (`--out`): the corpus and the model stay in memory.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import st

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", default=str(HERE / "stackoverflow-200.jsonl"))
    parser.add_argument("--lm", default=None, help="an LM folder (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--vocab-size", type=int, default=2000)
    parser.add_argument("--out", default=None, help="save θ, topics and the model id here (.npz)")
    args = parser.parse_args()

    records = [json.loads(line) for line in Path(args.docs).read_text().splitlines() if line.strip()]
    seen, new = records[:150], records[150:]

    lm = st.LM(args.lm, dtype=args.dtype)
    corpus = st.softlabel(seen, lm=lm, temperature=3, vocab_size=args.vocab_size)
    print(corpus, "soft labels:", corpus.soft_label().shape)

    model = st.DSL(k=args.k, seed=0, epochs=args.epochs).fit(corpus)
    for i, words in enumerate(model.topics(top_words=8)):
        print(f"topic {i}: {' '.join(words)}")

    theta = model.transform([r["text"] for r in new])  # the same LM, prompt and cache as training
    print("θ of the new titles:", theta.shape, "first one's topic:", int(theta[0].argmax()))

    scores = st.evaluate(model, corpus, metrics=["npmi", "td", "purity", "p@10"])
    print({k: v for k, v in scores.items() if k != "model"})

    for hit in st.search(model, corpus, new[0]["text"], n=3):
        print(f"{hit.score:.3f}  {hit.record['text']}")

    with tempfile.TemporaryDirectory() as folder:
        model.save(folder)
        again = st.load(folder, lm=lm)
        assert np.allclose(again.transform(corpus), model.transform(corpus), atol=1e-6)

    if args.out:
        np.savez(
            args.out,
            theta=model.theta_,
            theta_new=theta,
            topics=np.asarray(json.dumps(model.topic_records())),
            id=np.asarray(model.id),
        )


if __name__ == "__main__":
    main()
