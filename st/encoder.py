"""The cached encoder: an LM behind the cache of its outputs. Cache lookup, batching, reuse of the
prompt's shared prefix and whole-word probabilities are decided here, once, for every backend (the
local one and each Ray worker) and for `st infer`, `st search` and the eval rater; the LM itself
(`st.lm.LM`) only loads, tokenizes and runs forward passes.

A document never goes through the LM twice for the same model, prompt and max tokens: what is
cached is its last-position hidden state, from which any vocabulary's logits follow with the
model's own head (or, for a model whose head is not exact, the logits per vocabulary).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from st.cache import LMCache
from st.errors import StError
from st.prompt import Prompt

if TYPE_CHECKING:
    from st.known import Known
    from st.lm import LM, WholeWords


class Encoder:
    """Documents to hidden states (and logits over a vocabulary) through an LM, each computed once.

    `lm` answers for the model (identity, head); it may be the loaded LM or, when the facts are
    recorded, `st.known.Known`, and then `load` gives the loaded LM for the documents the cache
    lacks: torch and the weights are only loaded for those."""

    def __init__(self, lm: LM | Known, cache: LMCache, load: Callable[[], LM] | None = None) -> None:
        self.lm, self.cache = lm, cache
        self._load = load
        self.documents_computed = 0  # documents that went through the LM (cache misses)

    def model(self) -> LM:
        from st.lm import LM

        if isinstance(self.lm, LM):
            return self.lm
        assert self._load is not None, "a Known LM needs a loader"
        return self._load()

    def namespace(self, prompt: Prompt, max_tokens: int, kind: str) -> bytes:
        """The cache's key space for one LM, prompt, max tokens and kind of output."""
        spec = {
            **self.lm.identity,
            "template": prompt.template,
            "instruction": prompt.instruction,
            "max_tokens": max_tokens,
            "kind": kind,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).digest()

    def encode(
        self,
        texts: Sequence[str],
        prompt: Prompt,
        max_tokens: int,
        batch_tokens: int | None = None,
        batch_size: int | None = None,
        vocab_token_ids: np.ndarray | None = None,
        vocab_fingerprint: str | None = None,
        on_batch: Callable[[int], None] | None = None,
        whole_words: WholeWords | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Hidden states (N x H float32) and, when `vocab_token_ids` is given, the vocabulary's
        logits (N x V float32), in input order. Only documents missing from the cache reach the LM.
        With `whole_words`, the "logits" are the words' log-probabilities (see _whole_word_logits)."""
        hidden_ns = self.namespace(prompt, max_tokens, "hidden")
        keys = [self.cache.key(hidden_ns, t) for t in texts]
        want_logits = vocab_token_ids is not None
        whole = want_logits and whole_words is not None
        if whole and not self.lm.head_is_exact:
            raise StError(
                f"{self.lm.source.name}: whole-word probabilities need a model whose logits come from its head"
            )
        logit_keys: list[bytes] = []
        if want_logits and (whole or not self.lm.head_is_exact):
            kind = f"logits:{vocab_fingerprint}" + (f":whole-words:{whole_words.top}" if whole_words else "")
            logit_ns = self.namespace(prompt, max_tokens, kind)
            logit_keys = [self.cache.key(logit_ns, t) for t in texts]
        found = self.cache.get_many(keys)
        found_logits = self.cache.get_many(logit_keys) if logit_keys else {}
        missing = [
            i for i, k in enumerate(keys) if k not in found or (logit_keys and logit_keys[i] not in found_logits)
        ]
        if on_batch:
            on_batch(len(texts) - len(missing))
        if missing:
            import torch

            from st.lm import Batch, make_batches

            lm = self.model()
            token_ids = lm.tokenize_prompts([texts[i] for i in missing], prompt, max_tokens)
            budget = batch_tokens or lm.default_batch_tokens()
            prefix = lm._prefix(prompt) if not logit_keys or whole else None
            # Prompts that start with the shared prefix's tokens reuse its key/value cache and compute
            # only the rest; any other prompt (a tokenizer that merges across the boundary) runs whole.
            groups: list[tuple[list[int], list[list[int]], bool]] = []
            if prefix is not None:
                p = len(prefix.token_ids)
                fits = [r for r, ids in enumerate(token_ids) if ids[:p] == prefix.token_ids and len(ids) > p]
                fit_set = set(fits)
                groups.append((fits, [token_ids[r][p:] for r in fits], True))
                rest = [r for r in range(len(token_ids)) if r not in fit_set]
                groups.append((rest, [token_ids[r] for r in rest], False))
            else:
                groups.append((list(range(len(token_ids))), token_ids, False))
            batches = [
                (batch, [where[r] for r in batch.rows], prefixed)
                for where, ids, prefixed in groups
                for batch in make_batches(ids, lm.pad_id, budget, batch_size or 10**9)
            ]
            for batch, rows_in_missing, prefixed in batches:
                full = None
                if whole:
                    assert whole_words is not None
                    h, word_logp = lm._whole_word_logits(batch, prefix if prefixed else None, whole_words)
                elif logit_keys:  # logits that the head alone does not give: one pass of the whole model
                    h, full = lm._hidden_and_logits(batch)
                else:
                    h = lm._forward(batch, prefix if prefixed else None)
                batch = Batch(rows_in_missing, batch.input_ids, batch.attention_mask, batch.position_ids)
                lm.documents_computed += len(batch.rows)
                lm.tokens_computed += int(batch.attention_mask.sum())
                self.documents_computed += len(batch.rows)
                entries = {keys[missing[r]]: v for r, v in zip(batch.rows, h.float().cpu().numpy(), strict=True)}
                found.update(entries)
                if logit_keys:
                    if whole:
                        full = word_logp
                    else:
                        assert full is not None
                        full = full[:, torch.as_tensor(vocab_token_ids, device=lm.device)]
                    rows = zip(batch.rows, full.float().cpu().numpy(), strict=True)
                    found_logits.update({logit_keys[missing[r]]: v for r, v in rows})
                    entries.update({k: found_logits[k] for k in (logit_keys[missing[r]] for r in batch.rows)})
                self.cache.put_many(entries)  # one transaction per batch: a batch is cached whole or not at all
                if on_batch:
                    on_batch(len(batch.rows))
        hidden = np.stack([found[k] for k in keys]).astype(np.float32, copy=False)
        if not want_logits:
            return hidden, None
        if logit_keys:
            return hidden, np.stack([found_logits[k] for k in logit_keys]).astype(np.float32, copy=False)
        assert vocab_token_ids is not None
        head = self.lm.vocab_head(vocab_token_ids)
        w, b = head if head is not None else self.model().vocab_head(vocab_token_ids)
        # In float64 the rounded result no longer depends on how rows are grouped into matrix
        # products, so a document's logits are the same in any run, chunk or order.
        logits = hidden.astype(np.float64) @ w.T.astype(np.float64)
        if b is not None:
            logits += b
        return hidden, logits.astype(np.float32)
