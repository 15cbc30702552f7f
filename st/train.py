"""`st train`: fit a topic model on a store's soft labels (or bag of words), write θ back into the
store, save the model. Also the model folder format, which `st infer`, `st eval` and `st search` read.

A model folder holds `config.json` (every hyper-parameter, the vocabulary's fingerprint, the LM and
prompt that produced the inputs), `model.safetensors`, `vocab.json` and `topics.json`. Nothing in it
is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from st import console
from st.errors import InputError
from st.models import GensimLDA, ProdLDA, ProdLDAConfig, reconstruction_loss
from st.store import Store

MODEL_FORMAT = "st-model"
MODEL_VERSION = 1


@dataclass
class TrainOptions:
    k: int = 50
    backbone: str = "prodlda"  # prodlda | lda
    passes: int = 10  # lda
    iterations: int = 100  # lda
    target: str = "softlabel"  # softlabel | bow
    input: str = "hidden"  # hidden | bow
    temperature: float | None = None  # τ of the target; None: the store's
    decoder_temperature: float | None = None  # None: the target's τ
    topk: int | None = None
    sparsity: float | None = None
    lam: float = 1000.0
    loss: str = "kl"
    lr: float = 2e-3
    betas: tuple[float, float] = (0.99, 0.99)
    batch_size: int = 64
    epochs: int = 100
    samples: int = 10
    seed: int = 0
    hidden: list[int] = field(default_factory=lambda: [200, 200])
    dropout: float = 0.2
    theta_dropout: float = 0.2


@dataclass
class TopicModel:
    model: ProdLDA | GensimLDA
    config: dict[str, Any]
    vocab: list[str]

    @property
    def id(self) -> str:
        return str(self.config["id"])

    def topic_word(self) -> np.ndarray:
        """K x V: each topic's distribution over the vocabulary."""
        if isinstance(self.model, GensimLDA):
            return self.model.topic_word()
        return torch.softmax(self.model.beta.detach().double(), dim=-1).numpy()

    def topics(self, top_words: int = 15) -> list[dict[str, Any]]:
        weights = self.topic_word()
        out = []
        for i, row in enumerate(weights):
            top = np.argsort(-row, kind="stable")[:top_words].tolist()
            out.append(
                {"topic": i, "words": [self.vocab[j] for j in top], "weights": [round(float(row[j]), 6) for j in top]}
            )
        return out

    def theta(self, x: np.ndarray, batch: int = 4096) -> np.ndarray:
        training = self.config["training"]
        if isinstance(self.model, GensimLDA):
            return self.model.theta(x, training["seed"])
        parts = [
            self.model.theta(torch.from_numpy(x[i : i + batch]).float(), training["samples"], training["seed"]).numpy()
            for i in range(0, len(x), batch)
        ]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, self.model.config.k), np.float32)

    def state(self) -> dict[str, torch.Tensor]:
        if isinstance(self.model, GensimLDA):
            return self.model.state()
        return {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}


# --- data ---------------------------------------------------------------------------------------


def soft_label(
    logits: np.ndarray, temperature: float, topk: int | None = None, sparsity: float | None = None
) -> np.ndarray:
    """softmax(logits / τ), optionally keeping only each row's top entries (the rest get 0)."""
    z = logits.astype(np.float64) / temperature
    v = z.shape[1]
    keep = topk if topk is not None else (max(1, int(round(v * (1 - sparsity)))) if sparsity is not None else None)
    if keep is not None and keep < v:
        cut = np.partition(z, v - keep, axis=1)[:, v - keep : v - keep + 1]
        z = np.where(z >= cut, z, -np.inf)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def model_inputs(store: Store, kind: str) -> np.ndarray:
    if kind == "hidden":
        return store.array("hidden").astype(np.float32)
    return store.bow().toarray().astype(np.float32)


def targets(store: Store, opts: TrainOptions) -> tuple[np.ndarray, float]:
    if opts.target == "bow":
        bow = store.bow().toarray().astype(np.float64)
        total = bow.sum(axis=1, keepdims=True)
        return (bow / np.where(total == 0, 1, total)).astype(np.float32), 1.0
    if "logits" not in store:
        raise InputError("the store has no soft labels (no 'logits'); make it with `st softlabel`", str(store.path))
    tau = opts.temperature if opts.temperature is not None else float(store.attrs.get("temperature", 3.0))
    if opts.topk is not None and opts.topk > store.array("vocab").shape[0]:
        raise InputError(f"--topk {opts.topk} is larger than the vocabulary ({len(store.vocab())} words)")
    return soft_label(store.array("logits"), tau, opts.topk, opts.sparsity), tau


def check_finite(store: Store, name: str, values: np.ndarray) -> None:
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(f"row {row} of {name!r} holds NaN or Inf; re-create the store", str(store.path))


# --- training -----------------------------------------------------------------------------------


def model_id(opts: TrainOptions, store: Store, rows: np.ndarray) -> str:
    name = {("softlabel", "hidden"): "dsl", ("bow", "bow"): "prodlda", ("bow", "hidden"): "ctm"}.get(
        (opts.target, opts.input), f"{opts.target}-{opts.input}"
    )
    if opts.backbone == "lda":
        name = "lda"
    spec = json.dumps([asdict(opts), store.attrs.get("vocab_fingerprint"), store.attrs.get("lm")], sort_keys=True)
    digest = hashlib.sha256(spec.encode() + rows.astype(np.int64).tobytes()).hexdigest()[:8]
    return f"{name}-k{opts.k}-{digest}"


def train(store: Store, rows: np.ndarray, opts: TrainOptions) -> tuple[TopicModel, list[float]]:
    """Fit on the given store rows. Reproducible for a seed on one machine (CPU)."""
    if opts.k < 2:
        raise InputError("K must be at least 2 (-k)")
    if opts.backbone == "lda":
        return train_lda(store, rows, opts), []
    x_all = model_inputs(store, opts.input)
    y_all, tau = targets(store, opts)
    check_finite(store, opts.input, x_all)
    check_finite(store, "logits" if opts.target == "softlabel" else "bow", y_all)
    x, y = torch.from_numpy(x_all[rows]), torch.from_numpy(y_all[rows])
    if len(rows) < 2:
        raise InputError("at least 2 documents are needed to train", str(store.path))
    torch.manual_seed(opts.seed)
    config = ProdLDAConfig(
        input_size=x.shape[1],
        vocab_size=y.shape[1],
        k=opts.k,
        hidden=list(opts.hidden),
        dropout=opts.dropout,
        theta_dropout=opts.theta_dropout,
        decoder_temperature=opts.decoder_temperature if opts.decoder_temperature is not None else tau,
    )
    model = ProdLDA(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=opts.lr, betas=opts.betas)
    shuffle = torch.Generator().manual_seed(opts.seed)
    losses = []
    model.train()
    with console.progress("st train", total=opts.epochs, unit="epochs") as bar:
        for _ in range(opts.epochs):
            order = torch.randperm(len(x), generator=shuffle)
            total, seen = 0.0, 0
            for start in range(0, len(x), opts.batch_size):
                idx = order[start : start + opts.batch_size]
                if len(idx) < 2:  # batch norm needs two documents
                    continue
                log_recon, mu, logvar = model(x[idx])
                loss = (
                    model.kl_prior(mu, logvar) + opts.lam * reconstruction_loss(log_recon, y[idx], opts.loss)
                ).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
                seen += len(idx)
            losses.append(total / max(seen, 1))
            bar.advance()
    model.eval()
    full = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "id": model_id(opts, store, rows),
        "backbone": "prodlda",
        "model": config.to_dict(),
        "training": {
            **asdict(opts),
            "temperature": tau if opts.target == "softlabel" else None,
            "documents": int(len(rows)),
            "final_loss": losses[-1] if losses else None,
        },
        "vocab_fingerprint": store.attrs.get("vocab_fingerprint"),
        "lm": store.attrs.get("lm"),
        "prompt": store.attrs.get("prompt"),
        "max_tokens": store.attrs.get("max_tokens"),
        "input_source": store.attrs.get("hidden_source") if opts.input == "hidden" else None,
    }
    return TopicModel(model, full, store.vocab()), losses


def train_lda(store: Store, rows: np.ndarray, opts: TrainOptions) -> TopicModel:
    """gensim's LdaModel on the store's bag of words and vocabulary."""
    if len(rows) < 2:
        raise InputError("at least 2 documents are needed to train", str(store.path))
    bow = store.bow()[rows]
    if bow.nnz == 0:
        raise InputError("no document holds a vocabulary word; LDA has nothing to learn from", str(store.path))
    opts = TrainOptions(**{**asdict(opts), "target": "bow", "input": "bow"})
    with console.status("st train: gensim LDA"):
        lda = GensimLDA.fit(bow, opts.k, opts.passes, opts.iterations, opts.seed)
    config = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "id": model_id(opts, store, rows),
        "backbone": "lda",
        "model": {"k": opts.k, "vocab_size": int(bow.shape[1])},
        "training": {**asdict(opts), "documents": int(len(rows))},
        "vocab_fingerprint": store.attrs.get("vocab_fingerprint"),
        "lm": store.attrs.get("lm"),
        "prompt": store.attrs.get("prompt"),
        "max_tokens": store.attrs.get("max_tokens"),
        "input_source": None,
    }
    return TopicModel(lda, config, store.vocab())


# --- saving and loading -------------------------------------------------------------------------


def save(model: TopicModel, folder: Path, top_words: int = 15) -> None:
    """Written under a temporary name and renamed into place: a folder that exists is whole."""
    folder = folder.absolute()
    if folder.exists() and not (folder / "config.json").is_file() and any(folder.iterdir()):
        raise InputError("exists and is not an st model folder; name another -o or remove it", str(folder))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(model.config, indent=2))
        save_file(model.state(), str(tmp / "model.safetensors"))
        (tmp / "vocab.json").write_text(json.dumps(model.vocab, ensure_ascii=False))
        (tmp / "topics.json").write_text(json.dumps(model.topics(top_words), ensure_ascii=False, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load(spec: str) -> tuple[TopicModel, Store | None]:
    """A model folder, or `store.zarr#model-id` for a model saved inside a store."""
    store = None
    folder = Path(spec)
    if "#" in spec and not folder.exists():
        store_path, model_name = spec.rsplit("#", 1)
        store = Store(store_path)
        if "/" in model_name or model_name in ("", ".", ".."):
            raise InputError("not a model id", spec)
        folder = store.path / "models" / model_name
        if not folder.is_dir():
            known = sorted(p.name for p in (store.path / "models").glob("*") if p.is_dir())
            raise InputError(f"no model {model_name!r} in the store (it has: {', '.join(known) or 'none'})", spec)
    if not (folder / "config.json").is_file():
        raise InputError("not an st model folder (no config.json); make one with `st train -o`", spec)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"damaged config.json ({e}); train the model again", spec) from None
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT or config.get("version") != MODEL_VERSION:
        raise InputError(f"not an st model of format version {MODEL_VERSION}", spec)
    try:
        vocab = json.loads((folder / "vocab.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"damaged model folder ({e}); train it again", spec) from None
    try:
        state = load_file(str(folder / "model.safetensors"))
        if config.get("backbone") == "lda":
            t = config["training"]
            model: ProdLDA | GensimLDA = GensimLDA.from_state(state, t["seed"], t["passes"], t["iterations"])
        else:
            model = ProdLDA(ProdLDAConfig(**config["model"]))
            model.load_state_dict(state)
            model.eval()
    except Exception as e:  # noqa: BLE001 - safetensors, torch and OS errors all mean the same here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"missing or damaged model.safetensors ({first}); train it again", spec) from None
    return TopicModel(model, config, vocab), store
