"""The LM: find and load a causal LM once, tokenize prompts, and run forward passes over
length-sorted, left-padded batches (the shared prefix's key/value cache reused; whole-word second
steps); check and read its output head. What to compute, and what the cache already holds, is
decided by the cached encoder (`st.encoder`).

What is encoded is the last-position, last-layer hidden state of the prompt; the soft label's
logits over any vocabulary are derived from it with the model's own output head.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from st import progress
from st.cache import default_cache_dir
from st.errors import InputError, StError
from st.lm_files import (  # noqa: F401  (st.lm is where callers have found these)
    BF16_FLAGS,
    EMBEDDED,
    ModelSource,
    available_cores,
    cpu_flags,
    cpu_has_fast_bf16,
    dtype_name,
    embedded_gguf,
    fingerprint_path,
    local_folder,
    resolve,
)
from st.prompt import Prompt

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _quiet_transformers() -> None:
    """transformers' own progress bars and advice would go to stderr between ours."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF once and keep it as a plain safetensors folder: loading that takes about a
    second, loading the GGUF about thirty."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    progress.info(f"converting {gguf.name} to safetensors once (about 30 s); kept in {target.parent}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = quantized.config
        # A model loaded from GGUF refuses save_pretrained; a plain one built from its config does not.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantized.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)  # atomic; another process may have won the race, which is fine
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_tokenizer(source: ModelSource, cache_dir: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    _quiet_transformers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = cache_dir / "models" / f"{source.path.stem}-{source.fingerprint}"
        if source.path.is_file() and not (folder / "config.json").is_file():
            # A tokenizer alone does not justify converting the weights.
            return AutoTokenizer.from_pretrained(source.path.parent, gguf_file=source.path.name)
        return AutoTokenizer.from_pretrained(local_folder(source, cache_dir), trust_remote_code=trust_remote_code)


# --- the loaded model -----------------------------------------------------------------------


def set_threads(device: torch.device) -> None:
    """One compute thread per available core on CPU, unless the user chose (OMP_NUM_THREADS)."""
    if device.type == "cpu" and not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(available_cores())


def pick_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda, but no CUDA GPU is available here; use --device cpu")
    return dev


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    return DTYPES[dtype_name(dtype, device.type)]


@dataclass
class PrefixCache:
    token_ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (1 x heads x P x d)


@dataclass
class WholeWords:
    """How the vocabulary's words sit in the LM's tokens, for whole-word probabilities."""

    first_ids: np.ndarray  # (V,) first sub-token of " " + word
    second_ids: np.ndarray  # (V,) second sub-token, or -1 for a one-token word
    groups: np.ndarray  # (G,) first sub-tokens shared by several words
    group_sizes: np.ndarray  # (G,) words per shared first sub-token
    group_of: np.ndarray  # (V,) index into groups, or -1
    same_pair: np.ndarray  # (V,) words with this word's first two sub-tokens (split evenly)
    top: int  # shared first sub-tokens per document that get their own extra step

    @classmethod
    def from_tokens(cls, tokens: Sequence[Sequence[int]], top: int) -> WholeWords:
        first = np.asarray([t[0] for t in tokens], dtype=np.int64)
        second = np.asarray([t[1] if len(t) > 1 else -1 for t in tokens], dtype=np.int64)
        values, inverse, counts = np.unique(first, return_inverse=True, return_counts=True)
        shared = counts > 1
        index = np.full(len(values), -1, dtype=np.int64)
        index[shared] = np.arange(int(shared.sum()))
        pairs = list(zip(first.tolist(), second.tolist(), strict=True))
        pair_counts: dict[tuple[int, int], int] = {}
        for p in pairs:
            pair_counts[p] = pair_counts.get(p, 0) + 1
        return cls(
            first_ids=first,
            second_ids=second,
            groups=values[shared],
            group_sizes=counts[shared],
            group_of=index[inverse],
            same_pair=np.asarray([pair_counts[p] for p in pairs], dtype=np.int64),
            top=top,
        )


@dataclass
class Batch:
    rows: list[int]  # positions in the caller's list
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor


def make_batches(token_ids: Sequence[list[int]], pad_id: int, max_tokens: int, max_docs: int) -> list[Batch]:
    """Length-sorted, left-padded batches of at most `max_tokens` padded tokens (and `max_docs`
    documents). The split is greedy from the shortest, so the batches that remain after an
    interrupted run are the same as in an uninterrupted one: results resume bit for bit."""
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    groups: list[list[int]] = []
    for i in order:
        if groups and len(groups[-1]) < max_docs and len(token_ids[i]) * (len(groups[-1]) + 1) <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    batches = []
    for rows in groups:
        width = max(len(token_ids[i]) for i in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            toks = token_ids[i]
            ids[r, width - len(toks) :] = torch.tensor(toks, dtype=torch.long)
            mask[r, width - len(toks) :] = 1
        # Positions start at 0 on each document's first real token, as if it were alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        batches.append(Batch(rows, ids, mask, positions))
    return batches


class LM:
    """A causal LM, loaded once, that turns prompts into last-position hidden states."""

    def __init__(
        self,
        model: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: Path | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoModelForCausalLM

        _quiet_transformers()
        self.cache_dir = cache_dir or default_cache_dir()
        self.source = resolve(model)
        self.device = pick_device(device)
        set_threads(self.device)
        self.dtype = pick_dtype(dtype, self.device)
        folder = local_folder(self.source, self.cache_dir)
        self.tokenizer = load_tokenizer(self.source, self.cache_dir, trust_remote_code)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self.model = AutoModelForCausalLM.from_pretrained(
                    folder, dtype=self.dtype, trust_remote_code=trust_remote_code
                )
            except (OSError, ValueError, RuntimeError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise StError(f"{self.source.name}: cannot load the model: {first}") from None
        self.model.to(self.device)  # type: ignore[arg-type]
        self.model.eval()
        self.head = self.model.get_output_embeddings()
        self.body = self.model.base_model
        self.pad_id = self._pad_id()
        self.hidden_size = int(self.head.weight.shape[1])
        # Cached is the hidden state, from which any vocabulary's logits follow, unless this model
        # does something after its head (soft-capping, scaling): then logits are cached per vocabulary.
        self.head_is_exact = self._check_head()
        self._record_facts(folder)
        self.documents_computed = 0  # documents that went through the LM (cache misses)
        self.tokens_computed = 0  # their prompt tokens actually computed (not the reused prefix, not padding)
        self._prefixes: dict[Prompt, PrefixCache | None] = {}
        import inspect

        params = inspect.signature(self.body.forward).parameters
        self._cache_arg = "cache" if "cache" in params else ("past_key_values" if "past_key_values" in params else "")

    def _pad_id(self) -> int:
        t = self.tokenizer
        for candidate in (t.pad_token_id, t.eos_token_id, t.unk_token_id, 0):
            if candidate is not None:
                return int(candidate)
        return 0

    @property
    def identity(self) -> dict[str, str]:
        return {**self.source.identity, "dtype": str(self.dtype).removeprefix("torch.")}

    def tokenize_prompts(self, texts: Sequence[str], prompt: Prompt, max_tokens: int) -> list[list[int]]:
        """Each document truncated to `max_tokens` LM tokens, then put into the template, so the
        template's tail is never cut off."""
        enc = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        docs = []
        for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"], strict=True):
            docs.append(text[: offsets[max_tokens - 1][1]] if len(ids) > max_tokens else text)
        return self.tokenizer([prompt.render(d) for d in docs])["input_ids"]

    @torch.inference_mode()
    def _forward(self, batch: Batch, prefix: PrefixCache | None = None) -> torch.Tensor:
        return self._run(batch, prefix, keep=False)[0]

    def _run(self, batch: Batch, prefix: PrefixCache | None, keep: bool) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Last-position hidden states; with `keep`, also the key/value cache and its attention mask."""
        if prefix is None:
            kv = None
            if keep:
                from transformers import DynamicCache

                kv = DynamicCache(config=self.model.config)
            mask = batch.attention_mask
            out = self.body(
                input_ids=batch.input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=batch.position_ids.to(self.device),
                use_cache=keep,
                **({self._cache_arg: kv} if keep else {}),
            )
            return out.last_hidden_state[:, -1, :], kv, mask
        from transformers import DynamicCache

        n, p = batch.input_ids.shape[0], len(prefix.token_ids)
        # Views of the prefix's keys and values, expanded to the batch: the cache appends the rest
        # by concatenation, so the prefix itself is never written to.
        layers = [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in prefix.layers]
        kv = DynamicCache(layers, config=self.model.config)
        # Padding sits between the prefix and the document; positions continue after the prefix.
        mask = torch.cat([torch.ones((n, p), dtype=batch.attention_mask.dtype), batch.attention_mask], dim=1)
        out = self.body(
            input_ids=batch.input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=(batch.position_ids + p).to(self.device),
            use_cache=True,
            **{self._cache_arg: kv},
        )
        return out.last_hidden_state[:, -1, :], kv, mask

    @torch.inference_mode()
    def _whole_word_logits(
        self, batch: Batch, prefix: PrefixCache | None, words: WholeWords, rows_per_step: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states and each vocabulary word's log-probability. A word read from a first
        sub-token shared with other words gets log P(t1) + log P(t2 | t1), its second sub-token's
        probability after the first (one extra step, on the document's key/value cache, for the
        `words.top` most probable shared first sub-tokens of each document); the other shared first
        sub-tokens' probability is split evenly among their words."""
        hidden, kv, mask = self._run(batch, prefix, keep=True)
        logp = torch.log_softmax(self.head(hidden).float(), dim=-1)
        first = torch.as_tensor(words.first_ids, device=logp.device)
        out = logp[:, first].clone()
        if not len(words.groups):
            return hidden, out
        groups = torch.as_tensor(words.groups, device=logp.device)  # (G,) shared first sub-tokens
        sizes = torch.as_tensor(words.group_sizes, dtype=torch.float32, device=logp.device)
        member = torch.as_tensor(words.group_of, device=logp.device)  # (V,) group index or -1
        shared = member >= 0
        out[:, shared] -= torch.log(sizes[member[shared]])  # the even split, replaced below where computed
        top = min(words.top, len(words.groups))
        n = hidden.shape[0]
        chosen = logp[:, groups].topk(top, dim=1).indices  # (n, top) group indices per document
        doc = torch.arange(n, device=logp.device).repeat_interleave(top)
        group = chosen.reshape(-1)
        layers = [(layer.keys, layer.values) for layer in kv.layers]
        last = (batch.position_ids[:, -1] + (len(prefix.token_ids) if prefix is not None else 0) + 1).to(logp.device)
        second = torch.as_tensor(words.second_ids, device=logp.device)
        same_pair = torch.as_tensor(words.same_pair, dtype=torch.float32, device=logp.device)
        from transformers import DynamicCache

        for start in range(0, len(doc), rows_per_step):
            d, g = doc[start : start + rows_per_step], group[start : start + rows_per_step]
            step_kv = DynamicCache([(k[d], v[d]) for k, v in layers], config=self.model.config)
            step_mask = torch.cat([mask.to(logp.device)[d], torch.ones((len(d), 1), dtype=mask.dtype)], dim=1)
            step = self.body(
                input_ids=groups[g].unsqueeze(1),
                attention_mask=step_mask,
                position_ids=last[d].unsqueeze(1),
                use_cache=True,
                **{self._cache_arg: step_kv},
            )
            logp2 = torch.log_softmax(self.head(step.last_hidden_state[:, -1, :]).float(), dim=-1)
            for r in range(len(d)):
                cols = (member == g[r]).nonzero().squeeze(1)
                base = logp[d[r], groups[g[r]]]
                seconds = second[cols]
                multi = seconds >= 0
                cont = torch.full((len(cols),), 0.0, device=logp.device)
                cont[multi] = logp2[r, seconds[multi]] - torch.log(same_pair[cols[multi]])
                if (~multi).any():  # the first sub-token is itself a word: what does not continue it
                    continuing = torch.logsumexp(logp2[r, seconds[multi].unique()], dim=0) if multi.any() else None
                    rest = torch.log1p(-continuing.exp().clamp(max=1 - 1e-6)) if continuing is not None else 0.0
                    cont[~multi] = rest
                out[d[r], cols] = base + cont
        return hidden, out

    @torch.inference_mode()
    def _prefix(self, prompt: Prompt) -> PrefixCache | None:
        """The key/value cache of the prompt's fixed beginning (the instruction), computed once."""
        if prompt in self._prefixes:
            return self._prefixes[prompt]
        marker = "\u2063st-document\u2063"
        text = prompt.render(marker)
        head = text[: text.index(marker)]
        ids = self.tokenizer(head)["input_ids"][:-1]  # the last token may merge with the document
        result = None
        if len(ids) >= 2 and self._cache_arg:
            out = self.body(input_ids=torch.tensor([ids], device=self.device), use_cache=True)
            kv = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            if kv is not None and hasattr(kv, "layers"):
                result = PrefixCache(ids, [(layer.keys, layer.values) for layer in kv.layers])
            elif kv is not None and hasattr(kv, "key_cache"):
                result = PrefixCache(ids, list(zip(kv.key_cache, kv.value_cache, strict=True)))
        self._prefixes[prompt] = result
        return result

    @torch.inference_mode()
    def _hidden_and_logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Last-position hidden states and full next-token logits, from one pass of the whole model."""
        kwargs: dict[str, Any] = dict(
            input_ids=batch.input_ids.to(self.device),
            attention_mask=batch.attention_mask.to(self.device),
            position_ids=batch.position_ids.to(self.device),
            use_cache=False,
            output_hidden_states=True,
        )
        try:
            out = self.model(**kwargs, logits_to_keep=1)
        except TypeError:
            out = self.model(**kwargs)
        return out.hidden_states[-1][:, -1, :], out.logits[:, -1, :]

    @torch.inference_mode()
    def _check_head(self) -> bool:
        ids = self.tokenizer([Prompt().render("A short check that the output head is exact.")])["input_ids"]
        batch = make_batches(ids, self.pad_id, 10**9, 1)[0]
        hidden, full = self._hidden_and_logits(batch)
        full, derived = full.float(), self.head(hidden).float()
        scale = float(full.abs().max()) or 1.0
        tol = 1e-4 if self.dtype == torch.float32 else 2e-2
        return bool((full - derived).abs().max() <= tol * scale)

    def _record_facts(self, folder: Path) -> None:
        """What a later run needs to know of this model without loading it (`st.known`)."""
        from st import known

        if self.device.type != "cpu" or known.recorded(self.cache_dir, self.identity):
            return
        params = list(self.model.named_parameters(remove_duplicate=False))
        names = [n for n, p in params if p is self.head.weight]
        bias = getattr(self.head, "bias", None)
        bias_names = [n for n, p in params if bias is not None and p is bias]
        known.record(
            self.cache_dir,
            self.identity,
            folder,
            self.hidden_size,
            self.head_is_exact,
            names,
            bias_names,
            int(self.head.weight.shape[0]),
            self.vocab_head,
            self.tokenizer,
        )

    def vocab_head(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        w = self.head.weight.detach()[torch.as_tensor(token_ids, device=self.head.weight.device)]
        b = getattr(self.head, "bias", None)
        bias = None if b is None else b.detach()[torch.as_tensor(token_ids)].float().cpu().numpy()
        return w.float().cpu().numpy(), bias

    def default_batch_tokens(self) -> int:
        return 16384 if self.device.type != "cpu" else 1024
