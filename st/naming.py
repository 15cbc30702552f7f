"""Topic names: an LM reads a topic's top words and its most representative documents and writes a
short name, by greedy decoding, each name computed once (the shared LM cache keeps the answer)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from st import progress
from st.errors import InputError

if TYPE_CHECKING:
    from st.cache import LMCache
    from st.lm import LM

# A system line and two worked examples: a 135M model left without them answers with a sentence,
# the question repeated, or the first document copied. Asking for the topic's most important word
# in the name, with examples that do so, made names right more often (bench/naming.py: chosen on
# 2,000 StackOverflow titles, reported on 2,000 others).
SYSTEM = (
    "You name topics found in a collection of documents. Reply with a short name of 2 to 5 words "
    "and nothing else. Use the topic's most important word in the name."
)
EXAMPLES = (
    (
        ["python", "pandas", "dataframe", "column", "csv", "numpy", "index", "merge"],
        ["How to merge two pandas dataframes", "Read a csv file into a dataframe", "Drop rows with NaN in a column"],
        "Python pandas dataframes",
    ),
    (
        ["election", "vote", "party", "candidate", "senate", "poll", "campaign", "ballot"],
        ["Senate race tightens a week before the vote", "Party picks new candidate for mayor", "Polls close"],
        "Elections and politics",
    ),
)
TEMPLATE = "Top words: {words}\nDocuments:\n{documents}"
MAX_NEW_TOKENS = 16
MAX_WORDS = 6  # a longer answer is cut: names are labels, not sentences
SNIPPET = 200  # characters of each document shown to the LM


def check_template(template: str) -> None:
    try:
        template.format(words="", documents="")
    except (KeyError, IndexError, ValueError) as e:
        raise InputError(
            f"the naming template may only use {{words}} and {{documents}} (found {e}); "
            "write literal braces as {{ and }}"
        ) from None


def representative_rows(theta: np.ndarray, n: int) -> list[list[int]]:
    """Per topic, the `n` documents it weighs most among those it is the main topic of (then among
    all, for a topic that is no document's main topic)."""
    main = theta.argmax(axis=1)
    out = []
    for k in range(theta.shape[1]):
        own = np.flatnonzero(main == k)
        pool = own if len(own) else np.arange(len(theta))
        order = pool[np.argsort(-theta[pool, k], kind="stable")[:n]]
        out.append(order.tolist())
    return out


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET else text[: SNIPPET - 1].rsplit(" ", 1)[0] + "…"


def request(words: Sequence[str], documents: Sequence[str], template: str = TEMPLATE) -> str:
    return template.format(words=", ".join(words), documents="\n".join(f"- {_snippet(d)}" for d in documents))


def prompt_text(tokenizer: object, words: Sequence[str], documents: Sequence[str], template: str | None) -> str:
    """What the LM reads: the default few-shot chat, or the user's template as the one message."""
    if template is not None:
        turns = [{"role": "user", "content": request(words, documents, template)}]
    else:
        turns = [{"role": "system", "content": SYSTEM}]
        for w, d, name in EXAMPLES:
            turns += [{"role": "user", "content": request(w, d)}, {"role": "assistant", "content": name}]
        turns.append({"role": "user", "content": request(words, documents)})
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))  # type: ignore[attr-defined]
    # A base model: the same exchange as plain text, each answer after "Name:".
    parts: list[str] = []
    for t in turns:
        if t["role"] == "assistant":
            parts[-1] += f" {t['content']}\n"
        else:
            parts.append(t["content"] + ("\nName:" if t["role"] == "user" else ""))
    return "\n".join(parts)


def clean(answer: str, fallback: Sequence[str]) -> str:
    """The first line of the answer without quotes, a "Topic:"-style prefix, a final full stop or a
    word said twice in a row, cut to MAX_WORDS words; the top 3 words when nothing is left."""
    line = next((s.strip() for s in answer.splitlines() if s.strip()), "")
    line = re.sub(r"^(topic( name)?|name|label)\s*[:\-]\s*", "", line, flags=re.I)
    line = line.strip(" \"'`*-•.:;,")
    words = [w for i, w in enumerate(line.split()) if i == 0 or w.lower() != line.split()[i - 1].lower()]
    line = " ".join(words)  # "Magento Magento website" -> "Magento website"
    if len(words) > MAX_WORDS:
        line = " ".join(words[:MAX_WORDS])
    return line or " ".join(fallback[:3])


def namespace(lm: LM, max_new_tokens: int) -> bytes:
    spec = {**lm.identity, "kind": "topic-name", "decoding": "greedy", "max_new_tokens": max_new_tokens}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).digest()


def topic_names(
    words: Sequence[Sequence[str]],
    documents: Sequence[Sequence[str]],
    lm: LM,
    cache: LMCache,
    template: str | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> list[str]:
    """One name per topic from its top words and documents. The answer's tokens are cached by the
    prompt, so a second run (or a run with a topic whose words and documents did not change)
    does not reach the LM."""
    import torch

    if template is not None:
        check_template(template)
    tok = lm.tokenizer
    prompts = [prompt_text(tok, w, d, template) for w, d in zip(words, documents, strict=True)]
    space = namespace(lm, max_new_tokens)
    keys = [cache.key(space, p) for p in prompts]
    found = cache.get_many(keys)
    answers: dict[int, list[int]] = {i: found[k].astype(np.int64).tolist() for i, k in enumerate(keys) if k in found}
    missing = [i for i in range(len(prompts)) if i not in answers]
    with progress.task("naming topics", len(missing), "topics") as bar:
        for i in missing:
            ids = torch.tensor([tok(prompts[i])["input_ids"]], device=lm.device)
            with torch.inference_mode():
                out = lm.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=lm.pad_id,
                )
            answers[i] = out[0, ids.shape[1] :].tolist()
            cache.put_many({keys[i]: np.asarray(answers[i], np.float32)})
            bar.advance()
    return [clean(tok.decode(answers[i], skip_special_tokens=True), words[i]) for i in range(len(prompts))]
