"""`st report`: one self-contained HTML page about a topic model and its corpus (plotly, its
JavaScript inlined, so the page opens offline), and the same charts as PNG files (matplotlib).

What is drawn is computed once (`Report`), then rendered by either writer."""

from __future__ import annotations

import html
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from st.errors import InputError

if TYPE_CHECKING:
    from st.api import TopicModel
    from st.store import Corpus

MAP_DOCUMENTS = 2000  # t-SNE takes about 10 s for 2,000 points on 2 cores, and grows faster than N
BAR_WORDS = 8  # words per topic in the bar charts
SNIPPET = 160
CHARTS = ("words", "topic_map", "document_map", "similarity", "hierarchy", "labels")


@dataclass
class Report:
    title: str
    overview: dict[str, Any]
    metrics: dict[str, Any] | None
    names: list[str]  # the LM's names, or the top 3 words
    named: bool  # whether `names` came from the LM
    words: list[list[str]]
    weights: list[list[float]]
    share: np.ndarray  # K: share of documents whose main topic it is
    prevalence: np.ndarray  # K: mean θ
    top_documents: list[list[str]]
    topic_xy: np.ndarray  # K x 2: classical MDS of the Jensen-Shannon distances between topics
    similarity: np.ndarray  # K x K: cosine similarity of the topics' departures from the mean topic
    distances: np.ndarray  # condensed Jensen-Shannon distances, for the hierarchy
    doc_xy: np.ndarray  # n x 2: t-SNE of the sampled documents
    doc_topic: np.ndarray  # n: their main topic
    doc_text: list[str]
    map_total: int
    map_input: str
    label_names: list[str] = field(default_factory=list)
    topic_label: np.ndarray | None = None  # K x L: documents per topic and label

    @property
    def k(self) -> int:
        return len(self.names)

    def charts(self) -> list[str]:
        return [c for c in CHARTS if c != "labels" or self.topic_label is not None]


def _snippet(text: str, n: int = SNIPPET) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _embed_documents(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if len(x) < 4:
        return np.zeros((len(x), 2)) if len(x) else np.zeros((0, 2))
    if x.shape[1] > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    perplexity = float(min(30, (len(x) - 1) / 3))
    return TSNE(2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(x)


def build(
    model: TopicModel,
    corpus: Corpus,
    *,
    metrics: dict[str, Any] | None = None,
    map_documents: int = MAP_DOCUMENTS,
    map_input: str = "theta",
    seed: int = 0,
) -> Report:
    """Everything the page shows, from the model and the θ that training wrote into the corpus."""
    from scipy.spatial.distance import pdist, squareform
    from sklearn.manifold import ClassicalMDS

    from st.api import stored_theta

    theta = stored_theta(model, corpus).astype(np.float64)
    topics = model.topic_records(max(BAR_WORDS, 10))
    names = model.names or [" ".join(t["words"][:3]) for t in topics]
    k, n = theta.shape[1], theta.shape[0]
    main = theta.argmax(axis=1)
    beta = model.beta.astype(np.float64)
    beta = beta / beta.sum(axis=1, keepdims=True)
    distances = np.nan_to_num(pdist(beta, "jensenshannon"))
    topic_xy = (
        ClassicalMDS(2, metric="precomputed").fit_transform(squareform(distances))
        if k > 2
        else np.c_[np.arange(k, dtype=np.float64), np.zeros(k)]
    )
    # Soft-label topics share much of their mass (a softmax at τ = 3 is flat), so raw cosines are all
    # near 1; what tells topics apart is how each departs from the average topic.
    centred = beta - beta.mean(axis=0)
    unit = centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)

    field_name = corpus.attrs.get("text_field", "text")
    from st.naming import representative_rows

    top_rows = representative_rows(theta, 3)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, map_documents, replace=False)) if n > map_documents else np.arange(n)
    # Only the documents shown are parsed (a store may hold millions), and the labels alone of the rest.
    shown = sorted({*sample.tolist(), *(j for rows in top_rows for j in rows)})
    text = dict(zip(shown, (str(v or "") for v in corpus.field(field_name, shown)), strict=True))
    if map_input == "hidden":
        x = np.asarray(corpus.take("hidden", sample.tolist()), np.float32)
    else:
        x = np.sqrt(theta[sample])  # Euclidean distance between these is the Hellinger distance
    labels = corpus.field("label")
    topic_label, label_names = None, []
    if n and all(lab is not None for lab in labels):
        label_names = sorted({str(lab) for lab in labels})
        index = {lab: i for i, lab in enumerate(label_names)}
        topic_label = np.zeros((k, len(label_names)), np.int64)
        np.add.at(topic_label, (main, [index[str(lab)] for lab in labels]), 1)

    attrs = corpus.attrs
    lm = attrs.get("lm", {})
    training = model.config.get("training", {})
    overview = {
        "corpus": corpus.name,
        "documents": n,
        "model": model.id,
        "topics (K)": k,
        "backbone": model.config.get("backbone", training.get("backbone", "")),
        "target / input": f"{training.get('target', '')} / {training.get('input', '')}",
        "LM": f"{lm.get('model', '?')} ({lm.get('dtype', '?')})" if lm else "none (bag of words)",
        "τ": training.get("temperature", attrs.get("temperature", "")),
        "vocabulary": len(model.vocab),
        "names": "written by the LM" if model.names else "top 3 words (run `st label` for LM names)",
    }
    return Report(
        title=f"st report: {Path(corpus.name).name} · {model.id}",
        overview=overview,
        metrics=metrics,
        names=names,
        named=model.names is not None,
        words=[t["words"] for t in topics],
        weights=[t["weights"] for t in topics],
        share=np.bincount(main, minlength=k) / max(n, 1),
        prevalence=theta.mean(axis=0),
        top_documents=[[_snippet(text[j], 300) for j in rows] for rows in top_rows],
        topic_xy=np.asarray(topic_xy),
        similarity=unit @ unit.T,
        distances=distances,
        doc_xy=_embed_documents(x, seed),
        doc_topic=main[sample],
        doc_text=[_snippet(text[j]) for j in sample.tolist()],
        map_total=n,
        map_input=map_input,
        label_names=label_names,
        topic_label=topic_label,
    )


# --- the page -----------------------------------------------------------------------------------


def _label(r: Report, t: int) -> str:
    return f"{t}: {r.names[t]}"


def figures(r: Report) -> dict[str, Any]:
    """The plotly figures, by chart name."""
    import plotly.figure_factory as ff
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots
    from scipy.cluster.hierarchy import linkage

    k = r.k
    palette = qualitative.Dark24 + qualitative.Light24
    color = [palette[t % len(palette)] for t in range(k)]
    figs: dict[str, Any] = {}

    cols = 4
    rows = (k + cols - 1) // cols
    words = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[_snippet(_label(r, t), 40) for t in range(k)],
        horizontal_spacing=0.12,
        vertical_spacing=min(0.3 / rows, 0.08),
    )
    for t in range(k):
        w, v = r.words[t][:BAR_WORDS][::-1], r.weights[t][:BAR_WORDS][::-1]
        words.add_trace(
            go.Bar(x=v, y=w, orientation="h", marker_color=color[t], showlegend=False, hovertemplate="%{y}: %{x}"),
            row=t // cols + 1,
            col=t % cols + 1,
        )
    words.update_layout(height=max(260, 210 * rows), title="Top words of each topic", margin=dict(t=80))
    words.update_annotations(font_size=11)
    figs["words"] = words

    hover = [f"<b>{html.escape(_label(r, t))}</b><br>{html.escape(', '.join(r.words[t][:10]))}" for t in range(k)]
    size = np.sqrt(r.prevalence / max(r.prevalence.max(), 1e-12)) * 60 + 8
    figs["topic_map"] = go.Figure(
        go.Scatter(
            x=r.topic_xy[:, 0],
            y=r.topic_xy[:, 1],
            mode="markers+text",
            text=[str(t) for t in range(k)],
            hovertext=[f"{h}<br>share of documents: {r.share[t]:.1%}" for t, h in enumerate(hover)],
            hoverinfo="text",
            marker=dict(size=size, color=color, opacity=0.55, line=dict(width=1, color="#333")),
        ),
        layout=dict(
            title="Intertopic distance map (classical MDS of Jensen-Shannon distances; size: prevalence)",
            height=560,
            xaxis=dict(title="dimension 1", zeroline=False),
            yaxis=dict(title="dimension 2", zeroline=False, scaleanchor="x"),
        ),
    )

    docs = go.Figure(
        layout=dict(
            title=f"Document map (t-SNE of {'LM hidden states' if r.map_input == 'hidden' else 'θ'}; "
            f"{len(r.doc_text):,} of {r.map_total:,} documents)",
            height=640,
            xaxis=dict(visible=False),
            yaxis=dict(visible=False),
            legend=dict(title="main topic", font=dict(size=10)),
        )
    )
    for t in range(k):
        sel = np.flatnonzero(r.doc_topic == t)
        if len(sel) == 0:
            continue
        docs.add_trace(
            go.Scatter(
                x=r.doc_xy[sel, 0],
                y=r.doc_xy[sel, 1],
                mode="markers",
                name=_snippet(_label(r, t), 40),
                marker=dict(size=5, color=color[t], opacity=0.7),
                hovertext=[html.escape(r.doc_text[i]) for i in sel],
                hoverinfo="text",
            )
        )
    figs["document_map"] = docs

    axis = [_snippet(_label(r, t), 30) for t in range(k)]
    figs["similarity"] = go.Figure(
        go.Heatmap(
            z=r.similarity,
            x=axis,
            y=axis,
            colorscale="RdBu",
            zmid=0,
            zmin=-1,
            zmax=1,
            hovertemplate="%{y}<br>%{x}<br>%{z:.2f}",
        ),
        layout=dict(
            title="Topic similarity (cosine of the word distributions minus the mean topic's)",
            height=max(500, 18 * k + 200),
        ),
    )
    if k > 1:
        hierarchy = ff.create_dendrogram(
            np.zeros((k, 1)),
            orientation="left",
            labels=axis,
            distfun=lambda _: r.distances,
            linkagefun=lambda d: linkage(d, "average"),
        )
    else:
        hierarchy = go.Figure(go.Scatter(x=[0], y=[0], mode="text", text=axis))
    hierarchy.update_layout(
        title="Topic hierarchy (average linkage of Jensen-Shannon distances)",
        height=max(420, 20 * k + 150),
        margin=dict(l=220),
    )
    figs["hierarchy"] = hierarchy

    if r.topic_label is not None:
        per_topic = r.topic_label / np.maximum(r.topic_label.sum(axis=1, keepdims=True), 1)
        figs["labels"] = go.Figure(
            go.Heatmap(
                z=per_topic,
                x=r.label_names,
                y=axis,
                customdata=r.topic_label,
                colorscale="Viridis",
                hovertemplate="%{y}<br>label %{x}: %{customdata} documents (%{z:.0%})",
            ),
            layout=dict(
                title="Topics × labels (share of each topic's documents with each label)",
                height=max(500, 18 * k + 200),
            ),
        )
    return figs


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0 auto;max-width:1280px;
  padding:16px 28px;color:#222}
h1{font-size:22px} h2{font-size:18px;margin-top:36px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;vertical-align:top;padding:6px 8px;border-bottom:1px solid #eee}
.kv td:first-child{color:#666;width:180px} .share{white-space:nowrap}
.w{display:flex;align-items:center;gap:6px;font-size:12px;line-height:1.25}
.w span:first-child{width:110px;text-align:right;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar{background:#4c78a8;height:9px;border-radius:2px} .docs{font-size:12px;color:#444;max-width:420px}
.docs li{margin-bottom:4px} .note{color:#666;font-size:12px} .chart{min-height:200px}
"""


def _table(r: Report) -> str:
    rows = []
    for t in range(r.k):
        top = max(r.weights[t][:BAR_WORDS] or [1.0]) or 1.0
        bars = "".join(
            f'<div class="w"><span>{html.escape(w)}</span><div class="bar" style="width:{120 * v / top:.0f}px"></div>'
            f"<span>{v:.3g}</span></div>"
            for w, v in zip(r.words[t][:BAR_WORDS], r.weights[t][:BAR_WORDS], strict=True)
        )
        docs = "".join(f"<li>{html.escape(d)}</li>" for d in r.top_documents[t])
        rows.append(
            f"<tr><td>{t}</td><td><b>{html.escape(r.names[t])}</b></td>"
            f'<td class="share">{r.share[t]:.1%}</td><td>{bars}</td><td class="docs"><ul>{docs}</ul></td></tr>'
        )
    return (
        "<table><tr><th>#</th><th>name</th><th>documents</th><th>top words</th><th>top documents</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _kv(d: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    return (
        '<table class="kv">'
        + "".join(f"<tr><td>{html.escape(str(a))}</td><td>{html.escape(show(b))}</td></tr>" for a, b in d.items())
        + "</table>"
    )


def page(r: Report) -> str:
    """The whole HTML page, plotly's JavaScript included."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    figs = figures(r)
    headings = {
        "words": "Top words",
        "topic_map": "Intertopic distance map",
        "document_map": "Document map",
        "similarity": "Topic similarity",
        "hierarchy": "Topic hierarchy",
        "labels": "Topics and labels",
    }
    sections = []
    for name in r.charts():
        div = pio.to_html(
            figs[name], include_plotlyjs=False, full_html=False, div_id=f"chart-{name}", config={"responsive": True}
        )
        sections.append(f'<h2>{headings[name]}</h2><div class="chart" data-chart="{name}">{div}</div>')
    metrics = (
        _kv({k: v for k, v in r.metrics.items() if k not in ("model", "topic_names", "k", "documents")})
        if r.metrics
        else '<p class="note">Not measured: run <code>st eval</code> on this store and model, or '
        "<code>st report --eval</code>.</p>"
    )
    sampled = (
        f"The document map shows a random sample of {len(r.doc_text):,} of the {r.map_total:,} documents "
        "(<code>--map-documents</code> sets the limit)."
        if len(r.doc_text) < r.map_total
        else f"The document map shows all {r.map_total:,} documents."
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(r.title)}</title>
<style>{CSS}</style><script>{get_plotlyjs()}</script></head>
<body><h1>{html.escape(r.title)}</h1>
<h2>Overview</h2>{_kv(r.overview)}
<h2>Metrics</h2>{metrics}
<h2>Topics</h2>{_table(r)}
{"".join(sections)}
<p class="note">{sampled} Made by <code>st report</code>; it opens offline.</p>
</body></html>
"""


# --- files --------------------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    """Written under a temporary name beside `path` and renamed into place: no partial page."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent if str(path.parent) else ".")
    except OSError as e:
        raise InputError(f"cannot write there ({e.strerror or e})", str(path)) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        raise InputError(f"cannot write there ({e.strerror or e})", str(path)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_png(r: Report, folder: Path) -> list[Path]:
    """The same charts as static PNG images (matplotlib), one file per chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import dendrogram, linkage

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot make the folder ({e.strerror or e})", str(folder)) from None
    cmap = plt.get_cmap("tab20")
    color = [cmap(t % 20) for t in range(r.k)]
    labels = [_snippet(_label(r, t), 30) for t in range(r.k)]
    written = []

    def save(fig: Any, name: str) -> None:
        path = folder / f"{name}.png"
        tmp = folder / f".{name}.png.tmp"
        try:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
            os.replace(tmp, path)
        except OSError as e:
            raise InputError(f"cannot write there ({e.strerror or e})", str(path)) from None
        finally:
            plt.close(fig)
            tmp.unlink(missing_ok=True)
        written.append(path)

    cols = 4
    rows = (r.k + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(16, 2.4 * rows), squeeze=False)
    for t, ax in enumerate(axes.flat):
        if t >= r.k:
            ax.axis("off")
            continue
        ax.barh(r.words[t][:BAR_WORDS][::-1], r.weights[t][:BAR_WORDS][::-1], color=color[t])
        ax.set_title(labels[t], fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    save(fig, "words")

    fig, ax = plt.subplots(figsize=(8, 7))
    size = (r.prevalence / max(r.prevalence.max(), 1e-12)) * 2500 + 40
    ax.scatter(r.topic_xy[:, 0], r.topic_xy[:, 1], s=size, c=color, alpha=0.5, edgecolors="#333")
    for t in range(r.k):
        ax.annotate(str(t), r.topic_xy[t], ha="center", va="center", fontsize=8)
    ax.set_title("Intertopic distance map (size: prevalence)")
    save(fig, "topic_map")

    fig, ax = plt.subplots(figsize=(10, 8))
    for t in range(r.k):
        sel = r.doc_topic == t
        if sel.any():
            ax.scatter(r.doc_xy[sel, 0], r.doc_xy[sel, 1], s=5, color=color[t], label=labels[t])
    ax.set_axis_off()
    ax.set_title(f"Document map ({len(r.doc_text):,} of {r.map_total:,} documents)")
    ax.legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    save(fig, "document_map")

    def heat(z: np.ndarray, xl: list[str], title: str, name: str, cm: str, limits: tuple[float, float]) -> None:
        fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(xl) + 4), max(5, 0.3 * r.k + 2)))
        im = ax.imshow(z, cmap=cm, aspect="auto", vmin=limits[0], vmax=limits[1])
        ax.set_xticks(range(len(xl)), xl, rotation=90, fontsize=7)
        ax.set_yticks(range(r.k), labels, fontsize=7)
        ax.set_title(title)
        fig.colorbar(im, ax=ax)
        save(fig, name)

    heat(r.similarity, labels, "Topic similarity (cosine, mean topic removed)", "similarity", "RdBu_r", (-1, 1))

    fig, ax = plt.subplots(figsize=(8, max(4, 0.3 * r.k + 1)))
    if r.k > 1:
        dendrogram(linkage(r.distances, "average"), labels=labels, orientation="left", ax=ax, leaf_font_size=7)
    ax.set_title("Topic hierarchy (Jensen-Shannon, average linkage)")
    save(fig, "hierarchy")

    if r.topic_label is not None:
        per_topic = r.topic_label / np.maximum(r.topic_label.sum(axis=1, keepdims=True), 1)
        heat(per_topic, r.label_names, "Topics × labels (share of each topic's documents)", "labels", "viridis", (0, 1))
    return written
