"""`--backend ray`: the LM stage spread over a pool of Ray actors.

Store chunks are the unit of work: a pool of stateful actors (each holding the LM, the GPU it was
given and a handle on the LM cache) turns each chunk into hidden states and logits with
`encode_chunk`, the batch function of the local backend. The input is read as the workers need it
(at most two chunks in flight per worker), and results come back in order to this process, which
alone writes the store, one whole chunk at a time, and prints the records; so the driver holds a
bounded number of chunks, and workers need no shared disk for the store. They do share the LM
cache: a local folder on one machine, a shared folder or an object-store URL
(`--cache-dir s3://…`) on a cluster.

A worker that dies is restarted by Ray and its chunk retried; batches it finished are in the cache
and are not computed again. A run that stops altogether resumes the same way when re-run.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from st import progress
from st.encode import Projector, Vocabulary, encode_chunk, projector
from st.errors import StError
from st.options import EncodeOptions, RayOptions


@dataclass
class LMSpec:
    """What every worker needs to load the same LM: all plain data, so it travels to any node."""

    model: str | None
    device: str
    dtype: str
    models_dir: str
    cache: str
    trust_remote_code: bool


class ChunkEncoder:
    """A Ray actor: loads the LM once, then encodes one store chunk per call."""

    def __init__(self, spec: LMSpec, opts: dict[str, Any], vocabulary: dict[str, Any] | None) -> None:
        from st.cache import open_cache
        from st.encoder import Encoder
        from st.lm import LM

        models = Path(spec.models_dir)
        self.lm = LM(spec.model, spec.device, spec.dtype, cache_dir=models, trust_remote_code=spec.trust_remote_code)
        self.encoder = Encoder(self.lm, open_cache(spec.cache))
        self.opts = EncodeOptions(**opts)
        self.vocabulary = None
        if vocabulary is not None:
            from st.lm import WholeWords

            ids = np.asarray(vocabulary["token_ids"], dtype=np.int64)
            whole = (
                WholeWords.from_tokens(vocabulary["tokens"], vocabulary["whole_words"])
                if vocabulary["whole_words"]
                else None
            )
            self.vocabulary = Vocabulary(
                vocabulary["words"], ids, vocabulary["fingerprint"], vocabulary["tokens"], whole
            )
        self.identity = orjson.dumps(self.lm.identity, option=orjson.OPT_SORT_KEYS).decode()

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray | None, str, int]:
        before = self.lm.documents_computed
        hidden, logits = encode_chunk(self.encoder, texts, self.vocabulary, self.opts)
        hidden = np.ascontiguousarray(hidden, dtype=np.float32)
        logits = None if logits is None else np.ascontiguousarray(logits, dtype=np.float32)
        return hidden, logits, self.identity, self.lm.documents_computed - before


IN_FLIGHT_PER_WORKER = 2  # one being computed, one waiting: workers never idle, the driver stays bounded


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise StError("the Ray backend needs Ray: pip install 'st[ray]' (or pip install ray)") from None
    return ray


def _cause(error: BaseException) -> BaseException:
    """The user-code exception inside Ray's wrappers."""
    seen = error
    while True:
        inner = getattr(seen, "cause", None) or seen.__cause__
        if inner is None or inner is seen:
            return seen
        seen = inner


class RayBackend:
    def __init__(self, spec: LMSpec, options: RayOptions) -> None:
        self.spec, self.options = spec, options
        self.identity: dict[str, str] = {}
        self.hidden_size = 0
        self.documents_computed = 0
        self.started_ray = False

    def _resolved_dtype(self) -> str:
        """Every worker must compute in the same dtype (it is part of the cache key and the store's
        identity), so `auto` is decided once, here."""
        from st.lm import dtype_name

        return dtype_name(self.spec.dtype, "cuda" if self.options.gpus_per_worker > 0 else "cpu")

    def start(self) -> Projector:
        from transformers import AutoConfig

        from st.lm import load_tokenizer, local_folder, resolve

        ray = _ray()
        source = resolve(self.spec.model)
        models = Path(self.spec.models_dir)
        tokenizer = load_tokenizer(source, models, self.spec.trust_remote_code)
        self.spec.dtype = self._resolved_dtype()
        # What the workers will report, known before any of them starts, so that the store is
        # created (or refused) first; each worker's own is checked against it.
        self.identity = {**source.identity, "dtype": self.spec.dtype}
        try:
            config = AutoConfig.from_pretrained(
                local_folder(source, models), trust_remote_code=self.spec.trust_remote_code
            )
        except (OSError, ValueError) as e:
            raise StError(f"{source.name}: cannot read the model's configuration: {str(e).splitlines()[0]}") from None
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.hidden_size = int(text_config.hidden_size)
        if not ray.is_initialized():
            # Worker output is not forwarded: stdout carries records only.
            with progress.status("starting Ray"):
                try:
                    ray.init(
                        address=self.options.ray_address,
                        include_dashboard=False,
                        log_to_driver=False,
                        logging_level=logging.ERROR,
                        configure_logging=True,
                    )
                except (ConnectionError, RuntimeError, ValueError) as e:
                    where = self.options.ray_address or "a local Ray instance"
                    raise StError(f"cannot start or reach {where}: {str(e).splitlines()[0]}") from None
            self.started_ray = True
        return projector(tokenizer)

    def _workers(self, ray: Any) -> int:
        if self.options.workers:
            return self.options.workers
        resources = ray.cluster_resources()
        if self.options.gpus_per_worker > 0:
            gpus = int(resources.get("GPU", 0) // self.options.gpus_per_worker)
            if gpus < 1:
                raise StError(
                    f"the Ray cluster has {resources.get('GPU', 0):g} GPUs, fewer than --gpus-per-worker "
                    f"{self.options.gpus_per_worker:g}"
                )
            return gpus
        return 1

    def encode(
        self,
        chunks: Iterator[list[str]],
        vocabulary: Vocabulary | None,
        opts: EncodeOptions,
        advance: Callable[[int], None],
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        ray = _ray()
        workers = self._workers(ray)
        cpus = self.options.cpus_per_worker
        if cpus is None and self.options.gpus_per_worker > 0:
            cpus = 1.0
        elif cpus is None:
            cpus = max(1.0, ray.cluster_resources().get("CPU", 1) // workers)
        worker_opts = dataclasses.asdict(opts)
        vocab_spec = None
        if vocabulary is not None:
            vocab_spec = {
                "words": vocabulary.words,
                "token_ids": vocabulary.token_ids.tolist(),
                "fingerprint": vocabulary.fingerprint,
                "tokens": vocabulary.tokens,
                "whole_words": vocabulary.whole_words.top if vocabulary.whole_words else 0,
            }
        gpus = f", {self.options.gpus_per_worker:g} GPUs" if self.options.gpus_per_worker else ""
        progress.info(f"Ray: chunks over {workers} workers ({cpus:g} CPUs{gpus} each)")
        # A dead actor is restarted with the same arguments and its pending calls are retried.
        actor = ray.remote(max_restarts=-1, max_task_retries=-1)(ChunkEncoder).options(
            num_cpus=cpus,
            num_gpus=self.options.gpus_per_worker or None,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": str(int(cpus))}},
        )
        pool = [actor.remote(self.spec, worker_opts, vocab_spec) for _ in range(workers)]
        in_flight: deque[tuple[int, Any]] = deque()
        submitted = 0
        done = 0
        logging.getLogger("ray").setLevel(logging.ERROR)

        def submit() -> bool:
            nonlocal submitted
            texts = next(chunks, None)
            if texts is None:
                return False
            in_flight.append((len(texts), pool[submitted % workers].encode.remote(texts)))
            submitted += 1
            return True

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray's advice on tuning goes to its logs, not to our users
            try:
                while len(in_flight) < workers * IN_FLIGHT_PER_WORKER and submit():
                    pass
                while in_flight:
                    n, ref = in_flight.popleft()
                    hidden, logits, identity_json, computed = ray.get(ref)
                    identity = orjson.loads(identity_json)
                    if identity != self.identity:
                        raise StError(f"a Ray worker loaded another LM: {identity}, not {self.identity}")
                    if hidden.shape != (n, self.hidden_size):
                        raise StError(f"a Ray worker returned hidden states of shape {hidden.shape} for chunk {done}")
                    self.documents_computed += int(computed)
                    advance(n)
                    done += 1
                    submit()  # the next chunk is read only as one leaves
                    yield hidden, logits
            except StError:
                raise
            except Exception as e:  # Ray wraps worker errors in many types
                cause = _cause(e)
                if isinstance(cause, StError):
                    raise StError(str(cause)) from None
                first = (str(cause).strip().splitlines() or [type(cause).__name__])[-1]
                raise StError(f"the Ray run failed: {type(cause).__name__}: {first}") from None
            finally:
                for handle in pool:
                    ray.kill(handle)
                if self.started_ray:
                    ray.shutdown()
                    self.started_ray = False
