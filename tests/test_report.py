"""Topic names and the HTML report, as a person sees them: names written by the LM (checked against
transformers' own greedy decoding), kept in the model folder and shown by every command; the
report opened in a real headless browser, every chart drawn, no console error; bad input refused
without a partial file."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.conftest import EXAMPLES, read_jsonl, st_env, st_exe

K = 5


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, models_cache: Path):
    """A store of the 200 example titles (with their labels) made by the tiny LM, a DSL model
    trained inside it, and a second store the model was not trained on."""
    import st

    tmp = tmp_path_factory.mktemp("report")
    cache = tmp / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(models_cache / "models", target_is_directory=True)
    lm = st.LM(str(tiny_model), dtype="float32", cache_dir=cache)
    rows = read_jsonl(EXAMPLES)
    store = st.softlabel(rows, lm=lm, store=tmp / "s.zarr", vocab_size=300)
    model = st.DSL(K, epochs=5, seed=0).fit(store)
    other = st.softlabel(rows[:40], lm=lm, store=tmp / "other.zarr", vocab_size=300)
    return tmp, cache, lm, store, model, other


def run(cache: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([st_exe(), *args], capture_output=True, env=st_env(cache), timeout=600)


def test_names_are_the_lms_greedy_answer_and_a_second_run_does_not_reach_the_lm(trained, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from st import naming

    tmp, cache, lm, store, model, _ = trained
    names = model.name_topics(store, lm=lm)
    assert len(names) == K and all(isinstance(n, str) and 0 < len(n.split()) <= naming.MAX_WORDS for n in names)

    # Independently: the prompt holds the topic's words and its top documents, and the name is
    # what transformers' greedy decoding of the tiny model answers to it, cleaned.
    theta = store.theta(model.id)
    texts = [r["text"] for r in store.records()]
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    for t in range(K):
        own = np.flatnonzero(theta.argmax(1) == t)
        pool = own if len(own) else np.arange(len(theta))
        docs = [texts[j] for j in pool[np.argsort(-theta[pool, t], kind="stable")[:3]]]
        words = model.topics(10)[t]
        prompt = naming.prompt_text(tok, words, docs, None)
        assert ", ".join(words) in prompt and all(d.split()[0] in prompt for d in docs)
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
        answer = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        assert names[t] == naming.clean(answer, words)

    # A second run answers from the cache: the model is not asked again.
    def refuse(*a, **k):
        raise AssertionError("generate called for a cached name")

    original = lm.model.model.generate
    lm.model.model.generate = refuse
    try:
        assert model.name_topics(store, lm=lm) == names
    finally:
        lm.model.model.generate = original

    saved = json.loads((model._trained().folder / "topics.json").read_text())
    assert [t["name"] for t in saved] == names
    import st

    assert st.load(f"{store.path}#{model.id}").names == names


def test_a_bad_naming_template_is_one_line(trained, tiny_model):
    tmp, cache, lm, store, model, _ = trained
    r = run(cache, "label", "-m", f"{store.path}#{model.id}", "--lm", str(tiny_model), "--template", "{nope}")
    err = r.stderr.decode().strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "{words} and {documents}" in err, err


def test_clean_keeps_a_short_name():
    from st.naming import clean

    assert clean('Topic: "Baking recipes".\nMore text', ["a", "b", "c"]) == "Baking recipes"
    assert clean("  \n", ["oracle", "sql", "table", "x"]) == "oracle sql table"
    assert clean("one two three four five six seven eight", ["a"]) == "one two three four five six"
    assert clean("Magento Magento website", ["a"]) == "Magento website"


def test_names_show_in_label_eval_search_and_the_report(trained, tiny_model, tmp_path):
    tmp, cache, lm, store, model, _ = trained
    spec = f"{store.path}#{model.id}"
    r = run(cache, "label", "-m", spec, "--lm", str(tiny_model), "--dtype", "float32", "-q")
    assert r.returncode == 0, r.stderr.decode()
    topics = [orjson.loads(x) for x in r.stdout.splitlines()]
    names = [t["name"] for t in topics]
    assert len(topics) == K and all(names)

    r = run(cache, "eval", "--store", str(store.path), "-m", spec, "--metrics", "td,purity", "-q")
    assert r.returncode == 0, r.stderr.decode()
    assert orjson.loads(r.stdout)["topic_names"] == names
    r = run(cache, "eval", "--store", str(store.path), "-m", spec, "--metrics", "td", "--format", "table")
    assert r.returncode == 0 and all(n[:20] in r.stdout.decode() for n in names)

    r = run(cache, "search", "-m", spec, "--store", str(store.path), "--topic", "1", "-n", "3", "-q")
    assert r.returncode == 0, r.stderr.decode()
    hits = [orjson.loads(x) for x in r.stdout.splitlines()]
    assert hits and all(h["topic_name"] == names[h["topic"]] for h in hits)

    out = tmp_path / "r.html"
    r = run(cache, "report", "-m", spec, "-o", str(out), "-q")
    assert r.returncode == 0 and r.stdout == b"", r.stderr.decode()
    import html

    page = out.read_text()
    assert all(html.escape(n) in page for n in names)
    # metrics that `st eval` measured above are on the page without --eval
    assert re.search(r"<td>purity</td><td>\d\.\d{4}</td>", page)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no headless browser: install Debian's chromium (.ci/run does)")


def browse(page: Path, screenshot: Path) -> tuple[str, list[str]]:
    """The page's DOM after its scripts ran, and the browser console's messages."""
    flags = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--virtual-time-budget=20000",
    ]
    url = page.absolute().as_uri()
    dom = subprocess.run(
        [*flags, "--enable-logging=stderr", "--v=0", "--dump-dom", url], capture_output=True, timeout=300
    )
    assert dom.returncode == 0, dom.stderr.decode()[-2000:]
    shot = subprocess.run(
        [*flags, "--window-size=1400,5000", f"--screenshot={screenshot}", url], capture_output=True, timeout=300
    )
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr.decode()[-2000:]
    console = [line for line in dom.stderr.decode().splitlines() if ":CONSOLE" in line]
    return dom.stdout.decode(), console


def test_the_report_opens_offline_in_a_browser_with_every_chart_drawn(trained, tmp_path):
    tmp, cache, lm, store, model, _ = trained
    out, png = tmp_path / "report.html", tmp_path / "png"
    r = run(cache, "report", "-m", f"{store.path}#{model.id}", "-o", str(out), "--png", str(png), "--eval")
    assert r.returncode == 0 and r.stdout == b"", r.stderr.decode()
    assert "report written to" in r.stderr.decode()
    page = out.read_text()
    assert "http://" not in page.split("<body>")[1].split("<script")[0]  # no CDN: nothing fetched
    assert not re.search(r"<script[^>]+src=", page)

    screenshot = Path(os.environ.get("ST_SCREENSHOTS", tmp_path)) / "test-report.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    dom, console = browse(out, screenshot)
    assert console == [], console
    # each chart's part of the DOM: from its container to the next one
    parts = dom.split('data-chart="')[1:]
    charts = [(p.split('"', 1)[0], p) for p in parts]
    assert [c for c, _ in charts] == ["words", "topic_map", "document_map", "similarity", "hierarchy", "labels"]
    for name, body in charts:
        assert body.count('class="main-svg"') >= 1, name
        # drawn: marks, not only axes (bars, points, heatmap images, dendrogram lines)
        assert re.search(r'class="(point|bars?|hm|trace scatter)', body) or "<image" in body, name
    assert re.search(r"Document map \(t-SNE of θ; 200 of 200 documents\)", dom)

    files = sorted(p.name for p in png.iterdir())
    assert files == sorted(f"{c}.png" for c, _ in charts)
    assert all((png / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)


def test_a_large_corpus_is_sampled_on_the_document_map_and_says_so(trained):
    import st

    tmp, cache, lm, store, model, _ = trained
    page = st.report(model, store, map_documents=50, map_input="hidden")
    assert isinstance(page, str)
    assert "a random sample of 50 of the 200 documents" in page
    assert "t-SNE of LM hidden states; 50 of 200 documents" in page


@pytest.mark.parametrize("case", ["other store", "unwritable", "no folder", "no store"])
def test_bad_input_is_one_line_exit_2_and_leaves_no_file(trained, tmp_path, case):
    tmp, cache, lm, store, model, other = trained
    spec, out = f"{store.path}#{model.id}", tmp_path / "r.html"
    args = {
        "other store": ["-m", spec, "--store", str(other.path), "-o", str(out)],
        "unwritable": ["-m", spec, "-o", "/proc/st-report.html"],
        "no folder": ["-m", spec, "-o", str(tmp_path / "missing" / "r.html")],
        "no store": ["-m", str(tmp_path / "copy"), "-o", str(out)],
    }[case]
    if case == "no store":
        shutil.copytree(model._trained().folder, tmp_path / "copy")
    r = run(cache, "report", *args)
    err = r.stderr.decode().strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and err.startswith("st report: error:"), err
    assert "Traceback" not in err
    expected = {
        "other store": "has no θ",
        "unwritable": "cannot write",
        "no folder": "no such folder",
        "no store": "--store",
    }
    assert expected[case] in err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "copy") == []
