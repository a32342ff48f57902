"""Backends: records in, one result per record out. One protocol, one registry, one loop.

Every backend implements :class:`Backend` (``predict(records, write) -> seconds``) and is chosen by name
from :data:`REGISTRY`, each entry declaring the settings it needs (:class:`BackendSpec`):

* ``server``  an OpenAI-compatible endpoint (``medner serve``), concurrent requests (:mod:`.server_client`);
* ``vllm``    vLLM's offline engine in-process, the server's engine settings (:mod:`.vllm_engine`);
* ``hf``      plain transformers ``generate``, batched, constrained through xgrammar (:mod:`.hf_generate`);
* ``ray``     Ray Data actors over servers or in-actor vLLM, shards that resume (:mod:`.ray_backend`);
* ``tokcls``  a token-classification run: one forward pass per window, BIO tags to spans (:mod:`.token_tagger`).

The three generative ones only turn planned requests into replies (a :class:`~.generation.Generator`) and
share one loop (:func:`~.generation.predict`), so they cannot differ in prompts, windows, bounds or parsing.
Settings: :class:`~.settings.InferenceSettings`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from medner.data.registry import Corpus
from medner.inference.generation import GenerativeBackend, Generator, Write, resolve_task
from medner.inference.models import resolve_model
from medner.inference.ray_backend import RayBackend
from medner.inference.server_client import ExtractClient, ServerBackend
from medner.inference.settings import InferenceSettings
from medner.inference.token_tagger import TokclsBackend, TokClsError, read_tokcls_record
from medner.inference.vllm_engine import VLLMBackend, resolve_merge
from medner.prompts.contract import Task, resolve_grounded

log = logging.getLogger(__name__)


class Backend(Protocol):
    """Records (``{"id", "text", "token_offsets"}``) -> one result per record, in order, through ``write``;
    returns the wall time of prediction (model loading and one untimed warm-up excluded)."""

    name: str
    prompt_version: str | None  # the prompt templates it queried with (None: no prompts, as tokcls)

    def predict(self, records: Sequence[dict], write: Write) -> float: ...


@dataclasses.dataclass
class BackendSpec:
    """One registered backend: the settings it needs, its own checks, and how to build it (model loading and
    engine start happen in ``make``, after every check)."""

    name: str
    needs: tuple[str, ...]
    make: Callable[[InferenceSettings, Corpus, Path], Backend]
    check: Callable[[InferenceSettings, Corpus | None], list[str]] = lambda cfg, corpus: []
    generative: bool = True


REGISTRY: dict[str, BackendSpec] = {}


def register(spec: BackendSpec) -> BackendSpec:
    REGISTRY[spec.name] = spec
    return spec


def check_settings(cfg: InferenceSettings, corpus: Corpus | None = None) -> list[str]:
    """Every configuration error of ``cfg`` for its backend and ``corpus``, collected (no model is loaded)."""
    spec = REGISTRY.get(cfg.backend)
    if spec is None:
        return [f"backend must be one of {', '.join(REGISTRY)}, not {cfg.backend!r}"]
    errors = [f"backend={spec.name} needs {k}=" for k in spec.needs if not getattr(cfg, k)]
    try:
        grounded = resolve_grounded(cfg.grounded, cfg.constrained, cfg.backend)
        if grounded and not spec.generative:
            errors.append(f"grounded decoding applies to generative backends; backend={spec.name} spans are spans of the input")
    except ValueError as e:
        errors.append(str(e))
    if spec.generative:
        try:
            resolve_merge(cfg.merge)
        except ValueError as e:
            errors.append(str(e))
    return errors + spec.check(cfg, corpus)


def make_backend(cfg: InferenceSettings, corpus: Corpus, out: Path) -> Backend:
    """The backend ``cfg`` names, built and ready; ``out`` is the run folder (shards of the ray backend)."""
    return REGISTRY[cfg.backend].make(cfg, corpus, out)


def _generative(cfg: InferenceSettings, generator: Generator, task: Task) -> GenerativeBackend:
    grounded = resolve_grounded(cfg.grounded, cfg.constrained, cfg.backend)
    return GenerativeBackend(generator, task, cfg.window_tokens, cfg.constrained, cfg.max_tokens, grounded)


# -- the registry ---------------------------------------------------------------------------------
# The implementations import torch, vLLM or Ray (heavy, some optional): each is imported when its backend is built.
def _make_server(cfg: InferenceSettings, corpus: Corpus, out: Path) -> Backend:
    client = ExtractClient(
        cfg.url or "",
        cfg.served_model,
        api_key=cfg.api_key or os.environ.get("MEDNER_API_KEY"),
        concurrency=cfg.concurrency,
        window_tokens=cfg.window_tokens,
        constrained=cfg.constrained,
        max_tokens_cap=cfg.max_tokens,
    )
    gen = ServerBackend(client)  # checks the server: it answers, and serves the model
    model_dir = resolve_model(cfg.model) if cfg.adapter and cfg.model else None
    task = resolve_task(cfg, corpus, model_dir, lambda: client.task_version(cfg.prompt_version), client.served_record)
    return _generative(cfg, gen, task)


def _make_vllm(cfg: InferenceSettings, corpus: Corpus, out: Path) -> Backend:
    model_dir = resolve_model(cfg.model or "")
    task = resolve_task(cfg, corpus, model_dir)  # before the engine starts: a wrong adapter fails in a second
    gen = VLLMBackend(
        model_dir,
        cfg.adapter,
        cfg.merge,
        cfg.max_model_len,
        cfg.batch_size,
        cfg.enable_prefix_caching,
        cfg.kv_cache_gib,
        cfg.block_size,
        cfg.enforce_eager,
        cfg.grammar_fallback,
    )
    return _generative(cfg, gen, task)


def _make_hf(cfg: InferenceSettings, corpus: Corpus, out: Path) -> Backend:
    from medner.inference.hf_generate import HFBackend

    model_dir = resolve_model(cfg.model or "")
    task = resolve_task(cfg, corpus, model_dir)
    if not cfg.constrained:
        log.warning("hf backend with constrained=false: output is unconstrained (free decoding)")
    gen = HFBackend.load(model_dir, cfg.adapter, resolve_merge(cfg.merge), cfg.batch_size, cfg.max_model_len)
    return _generative(cfg, gen, task)


def _make_ray(cfg: InferenceSettings, corpus: Corpus, out: Path) -> Backend:
    return RayBackend(cfg, corpus, out)


def _check_ray(cfg: InferenceSettings, corpus: Corpus | None) -> list[str]:
    if not cfg.url and not cfg.model:
        return ["backend=ray needs url= (servers, comma-separated) or model= (vLLM inside the Ray actors)"]
    return []


def _make_tokcls(cfg: InferenceSettings, corpus: Corpus, out: Path) -> Backend:
    return TokclsBackend(cfg, corpus)


def _check_tokcls(cfg: InferenceSettings, corpus: Corpus | None) -> list[str]:
    errors = []
    if cfg.tokcls_decode not in (None, "argmax", "viterbi"):
        errors.append(f"tokcls_decode must be argmax, viterbi or null (as trained), not {cfg.tokcls_decode!r}")
    if cfg.adapter:
        try:
            rec = read_tokcls_record(cfg.adapter)
        except TokClsError as e:
            return [*errors, str(e)]
        if corpus is not None and rec["corpus"] != corpus.name:
            errors.append(f"{cfg.adapter}: trained on {rec['corpus']!r}, not on {corpus.name!r}: its tag set is {rec['labels']}")
    return errors


register(BackendSpec("server", ("url",), _make_server))
register(BackendSpec("vllm", ("model",), _make_vllm))
register(BackendSpec("hf", ("model",), _make_hf))
register(BackendSpec("ray", (), _make_ray, _check_ray))
register(BackendSpec("tokcls", ("adapter",), _make_tokcls, _check_tokcls, generative=False))
