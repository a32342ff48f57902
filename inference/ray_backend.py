"""Batch extraction at scale on Ray Data: ``medner extract --engine ray --file IN.jsonl --out OUT_DIR``.

The input (JSONL, ``{"id"?, "text"}`` per line; a local path or any URI pyarrow's filesystems know) is cut
into shards of ``--shard-records`` lines by one streaming pass on the driver, which also checks every line
(a bad one is refused as ``FILE:LINE`` before anything runs) and hashes the input. The shards then flow
through a Ray Data pipeline (``map_batches`` over actors), each actor either

* calling a pool of ``medner serve`` endpoints (``--url``, one or more: a shard goes to one endpoint, and to
  the next one if that one is down), through :class:`~medner.inference.server_client.ExtractClient`; or
* holding vLLM's engine itself (``--base-model`` [``--adapter``]): eval's
  :class:`~medner.inference.vllm_engine.VLLMBackend` driven by :func:`~medner.inference.generation.predict`, the loop
  every eval backend shares.

Either way the prompts, schema, windows, parsing and grounding are medner's own (the contract of
:mod:`medner.prompts.contract`), so a result is the one ``medner extract`` gives for the same text. Each shard's results are
written to ``OUT_DIR/part-NNNNN.jsonl`` (atomically: a ``.tmp`` renamed when complete), in input order with
the input's ids (``<file name>:<line>`` where a line has none). A rerun with the same input and ``--out``
runs only the shards whose part file is missing; another input in the same ``--out`` is refused. A shard
that fails (its endpoints still down after ``ATTEMPTS`` tries each, an engine error) does not stop the others:
the run finishes them, then names each failed shard with its first input line and exits non-zero.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from medner.data.ground import simple_token_offsets
from medner.data.registry import get_corpus
from medner.data.windows import WINDOW_TOKENS
from medner.files import open_private
from medner.inference.generation import predict
from medner.inference.models import resolve_model
from medner.inference.runrecord import check_adapter, decode_wider, prompt_version_for
from medner.inference.server_client import ExtractClient, ServerError, UnknownModel
from medner.inference.vllm_engine import VLLMBackend
from medner.prompts.contract import MAX_MODEL_LEN, resolve_grounded, task_for

log = logging.getLogger(__name__)

MANIFEST = "_shards.json"
ATTEMPTS = 3  # per endpoint and shard, before the shard moves on to the next endpoint
RETRY_WAIT_S = 2.0  # times the attempt number


class RayExtractError(ValueError):
    pass


def _open(path: str):
    """(binary input stream, display name) for a local path or a pyarrow filesystem URI."""
    if "://" not in path:
        return open(path, "rb"), path
    from pyarrow import fs

    filesystem, inner = fs.FileSystem.from_uri(path)
    return filesystem.open_input_stream(inner), path


def _adapter_hash(adapter: str | None) -> str | None:
    """sha256 of an adapter's weights file, so a retrained adapter in the same folder is another setup."""
    if not adapter:
        return None
    f = Path(adapter) / "adapter_model.safetensors"
    return hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else None


def plan_shards(path: str, shard_records: int) -> dict:
    """One streaming pass: every line checked, shards as byte ranges of ``shard_records`` non-empty lines."""
    h = hashlib.sha256()
    shards: list[dict] = []
    start, first_line, n_in_shard, total, offset = 0, 1, 0, 0, 0
    stream, name = _open(path)
    with stream:
        lineno = 0
        for raw in iter(stream.readline, b""):
            lineno += 1
            h.update(raw)
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8", errors="strict").strip()
            if line:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RayExtractError(f"{name}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    raise RayExtractError(f"{name}:{lineno}: each line needs a string field 'text'")
                if "id" in obj and not isinstance(obj["id"], (str, int)):
                    raise RayExtractError(f"{name}:{lineno}: field 'id' must be a string or an integer")
                if n_in_shard == 0:
                    start, first_line = offset, lineno
                n_in_shard += 1
                total += 1
            offset += len(raw)
            if n_in_shard == shard_records:
                shards.append({"index": len(shards), "start": start, "end": offset, "first_line": first_line, "records": n_in_shard})
                n_in_shard = 0
        if n_in_shard:
            shards.append({"index": len(shards), "start": start, "end": offset, "first_line": first_line, "records": n_in_shard})
    if total == 0:
        raise RayExtractError(f"{name}: no records (empty input)")
    return {"input": path, "sha256": h.hexdigest(), "records": total, "shard_records": shard_records, "shards": shards}


def read_shard(path: str, shard: dict) -> list[dict]:
    """The records of one shard: ``{"id", "text"}``, ids from the input or ``<file name>:<line>``."""
    stream, _ = _open(path)
    with stream:
        if hasattr(stream, "seek"):
            stream.seek(shard["start"])
            data = stream.read(shard["end"] - shard["start"])
        else:  # a stream that cannot seek: skip to the shard
            stream.read(shard["start"])
            data = stream.read(shard["end"] - shard["start"])
    base = Path(path.split("://")[-1]).name
    out = []
    for k, raw in enumerate(data.split(b"\n")):
        line = raw.decode("utf-8").lstrip("\ufeff").strip()
        if line:
            obj = json.loads(line)
            item = {"id": str(obj["id"]) if "id" in obj else f"{base}:{shard['first_line'] + k}", "text": obj["text"]}
            if isinstance(obj.get("token_offsets"), list):  # gold tokens (eval backend=ray): grounding on them, as every eval backend
                item["token_offsets"] = obj["token_offsets"]
            out.append(item)
    return out


def make_task(task_args: dict, prompt_version: str):
    """The task from plain arguments (what travels to the actors): ``{"corpus": NAME} | {"labels", "lang"}``."""

    corpus = get_corpus(task_args["corpus"]) if task_args.get("corpus") else None
    return task_for(corpus, task_args.get("labels"), task_args.get("lang", "en"), prompt_version=prompt_version)


def part_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"part-{index:05d}.jsonl"


def write_part(out_dir: Path, index: int, rows: Sequence[dict]) -> None:
    tmp = out_dir / f".part-{index:05d}.jsonl.tmp"
    with open_private(tmp) as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, part_path(out_dir, index))


def shown(res: dict, raw: bool = False) -> dict:
    out = {
        k: res[k]
        for k in ("id", "text", "entities", "dropped", "status", "error", "finish_reason", "windows", "output_tokens", "latency_s")
        if k in res
    }
    if raw:
        out["raw"] = res.get("raw")
    return out


def _shard_failed(shard: dict, error: Exception) -> str:
    """A shard's failure as the actor's answer: the other shards keep running, :func:`run` reports it."""
    log.warning("shard %d failed: %s", shard["index"], error)
    return json.dumps({"index": shard["index"], "records": 0, "failed": 0, "error": f"{type(error).__name__}: {error}"})


class ShardWorker:
    """A Ray Data actor's loop: each shard of a batch extracted by :meth:`rows`, written as one part file and
    answered with its counts; a shard that fails is answered with its error and the others go on."""

    out_dir: Path
    raw: bool

    def rows(self, shard: dict) -> list[dict]:
        raise NotImplementedError

    def __call__(self, batch: dict) -> dict:
        done = []
        for shard in (json.loads(s) for s in batch["shard"]):
            try:
                rows = self.rows(shard)
            except Exception as e:  # noqa: BLE001 - reported with the shard; the other shards go on
                done.append(_shard_failed(shard, e))
                continue
            write_part(self.out_dir, shard["index"], [shown(r, self.raw) for r in rows])
            done.append(json.dumps({"index": shard["index"], "records": len(rows), "failed": sum(r["status"] != "ok" for r in rows)}))
        return {"done": done}


class ServerShardWorker(ShardWorker):
    """Extracts whole shards through a pool of ``medner serve`` endpoints."""

    def __init__(
        self,
        urls: list[str],
        model: str,
        task_args: dict,
        out_dir: str,
        path: str,
        api_key: str | None = None,
        concurrency: int = 8,
        window_tokens: int = WINDOW_TOKENS,
        grounded: str | None = None,
        raw: bool = False,
    ):
        self.clients = [
            ExtractClient(u, model, api_key=api_key, concurrency=concurrency, window_tokens=window_tokens, grounded=grounded) for u in urls
        ]
        self.task_args, self.out_dir, self.path, self.raw = task_args, Path(out_dir), path, raw

    def _extract(self, shard: dict, items: list[dict]) -> list[dict]:
        """The shard's own endpoint first, then the others; each tried ``ATTEMPTS`` times (a busy server can
        drop a connection) before it counts as down; an endpoint that does not serve the model is not retried."""

        last: Exception | None = None
        for k in range(len(self.clients)):
            client = self.clients[(shard["index"] + k) % len(self.clients)]
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    client.check_server()
                    task = decode_wider(make_task(self.task_args, client.task_version(None)), client.served_record())
                    return client.extract(items, task)
                except UnknownModel as e:  # this endpoint serves another model: on to the next one
                    last = e
                    log.warning("shard %d: %s", shard["index"], e)
                    break
                except ServerError as e:
                    last = e
                    log.warning("shard %d: %s (attempt %d of %d at %s)", shard["index"], e, attempt, ATTEMPTS, client.url)
                    if attempt < ATTEMPTS:
                        time.sleep(RETRY_WAIT_S * attempt)
        raise RayExtractError(f"no endpoint answered ({last})")

    def rows(self, shard: dict) -> list[dict]:
        return self._extract(shard, read_shard(self.path, shard))


class EngineShardWorker(ShardWorker):
    """Holds vLLM's engine (the base model, with the adapter merged on a CPU-only machine)."""

    def __init__(
        self,
        base_model: str,
        adapter: str | None,
        task_args: dict,
        out_dir: str,
        path: str,
        window_tokens: int = WINDOW_TOKENS,
        grounded: str | None = None,
        batch_size: int = 64,
        raw: bool = False,
    ):
        model_dir = resolve_model(base_model)
        record = check_adapter(adapter, model_dir) if adapter else None
        version = record["prompt_version"] if record else prompt_version_for(None, None, base_model)
        self.task = decode_wider(make_task(task_args, version), record)
        self.backend = VLLMBackend(model_dir, adapter, "auto", MAX_MODEL_LEN, batch_size)
        self.out_dir, self.path, self.window_tokens, self.grounded, self.raw = Path(out_dir), path, window_tokens, grounded, raw
        self.warm = False

    def rows(self, shard: dict) -> list[dict]:
        records = [
            {
                "id": it["id"],
                "text": it["text"],
                "token_offsets": it.get("token_offsets") or simple_token_offsets(it["text"], self.task.lang),
            }
            for it in read_shard(self.path, shard)
        ]
        rows: list[dict] = []
        predict(
            self.backend, records, self.task, rows.append, self.window_tokens, True, None, warm_up=not self.warm, grounded=self.grounded
        )
        self.warm = True
        return rows


# long: the Ray Data pipeline in order (plan shards, skip finished ones, map the actors, collect failures), one shared setup
def run(
    path: str,
    out_dir: str,
    task_args: dict,
    urls: Sequence[str] | None = None,
    model: str = "ner",
    base_model: str | None = None,
    adapter: str | None = None,
    address: str | None = None,
    shard_records: int = 256,
    workers: int | None = None,
    api_key: str | None = None,
    concurrency: int = 8,
    window_tokens: int = WINDOW_TOKENS,
    grounded: str | None = "ordered",
    raw: bool = False,
) -> dict:
    """Plan, skip finished shards, run the rest on Ray Data; returns a summary (records, shards run and skipped, failed)."""
    if bool(urls) == bool(base_model):
        raise RayExtractError(
            "give --url (one or more medner serve endpoints) or --base-model (vLLM inside the Ray actors), not both or neither"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_shards(path, shard_records)
    # everything that changes the output: a rerun into the same folder must match it, or mix two runs' parts
    plan["setup"] = {
        "task": task_args,
        "model": model if urls else None,
        "base_model": base_model,
        "adapter": adapter,
        "adapter_sha256": _adapter_hash(adapter),
        "window_tokens": window_tokens,
        "grounded": grounded,
        "raw": raw,
    }
    old = out / MANIFEST
    if old.is_file():
        prev = json.loads(old.read_text())
        if (prev["sha256"], prev["shard_records"]) != (plan["sha256"], plan["shard_records"]):
            raise RayExtractError(
                f"{out} holds results of another input or shard size ({prev['input']}, {prev['shard_records']} records per shard); "
                "use another --out"
            )
        was, now = prev.get("setup") or {}, plan["setup"]
        changed = [k for k in plan["setup"] if k in was and was[k] != plan["setup"][k]] or ([] if was else ["setup (not recorded)"])
        if changed:
            raise RayExtractError(
                f"{out} holds results of another setup ({', '.join(f'{k}: {was.get(k)!r} -> {now.get(k)!r}' for k in changed)}); "
                "use another --out, or delete it to start over"
            )
    old.write_text(json.dumps(plan, indent=2) + "\n")
    todo = [s for s in plan["shards"] if not part_path(out, s["index"]).is_file()]
    log.info(
        "%d records in %d shards; %d already done, %d to run",
        plan["records"],
        len(plan["shards"]),
        len(plan["shards"]) - len(todo),
        len(todo),
    )
    summary = {
        "records": plan["records"],
        "shards": len(plan["shards"]),
        "shards_run": len(todo),
        "shards_skipped": len(plan["shards"]) - len(todo),
        "failed": 0,
        "out": str(out),
    }
    if todo:
        import ray

        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING) if address else ray.init(
                include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
            )
        ds = ray.data.from_items([{"shard": json.dumps(s)} for s in todo])
        if urls:
            n = workers or max(1, min(len(todo), 2 * len(urls)))
            ds = ds.map_batches(
                ServerShardWorker,
                batch_size=1,
                concurrency=n,
                num_cpus=0.25,
                fn_constructor_kwargs={
                    "urls": list(urls),
                    "model": model,
                    "task_args": task_args,
                    "out_dir": str(out),
                    "path": path,
                    "api_key": api_key,
                    "concurrency": concurrency,
                    "window_tokens": window_tokens,
                    "grounded": grounded,
                    "raw": raw,
                },
            )
        else:
            n = workers or 1
            ds = ds.map_batches(
                EngineShardWorker,
                batch_size=1,
                concurrency=n,
                num_cpus=1,
                fn_constructor_kwargs={
                    "base_model": base_model,
                    "adapter": adapter,
                    "task_args": task_args,
                    "out_dir": str(out),
                    "path": path,
                    "window_tokens": window_tokens,
                    "grounded": grounded,
                    "raw": raw,
                },
            )
        lost = []
        for row in ds.take_all():
            done = json.loads(row["done"])
            summary["failed"] += done["failed"]
            if "error" in done:
                lost.append(done)
        if lost:
            written = sum(part_path(out, s["index"]).is_file() for s in plan["shards"])
            shards = {s["index"]: s for s in plan["shards"]}
            lines = "; ".join(
                f"shard {d['index']} (input line {shards[d['index']]['first_line']} on, {shards[d['index']]['records']} records): {d['error']}"
                for d in sorted(lost, key=lambda d: d["index"])
            )
            raise RayExtractError(
                f"{len(lost)} of {len(todo)} shard(s) failed, {written} of {len(plan['shards'])} written to {out}: {lines}; "
                "rerun the same command to run only the missing ones"
            )
    got = sum(1 for s in plan["shards"] for line in part_path(out, s["index"]).open(encoding="utf-8") if line.strip())
    if got != plan["records"]:
        raise RayExtractError(f"{out}: {got} results for {plan['records']} input records; rerun the same command to complete it")
    return summary


# -- backend ray (medner eval run backend=ray) -----------------------------------------------------
class RayBackend:
    """The records through Ray Data: written as JSONL with their gold tokens into the run folder, extracted
    shard by shard (a rerun completes the missing shards), read back in order."""

    name = "ray"
    prompt_version = None  # each actor queries with its model's trained version

    def __init__(self, cfg, corpus, out: Path) -> None:
        self.cfg, self.corpus, self.out = cfg, corpus, out
        self.grounded = resolve_grounded(cfg.grounded, cfg.constrained, cfg.backend)

    def predict(self, records: Sequence[dict], write) -> float:
        cfg = self.cfg
        inp, parts = self.out / "ray-input.jsonl", self.out / "ray-parts"
        content = "".join(
            json.dumps({"id": r["id"], "text": r["text"], "token_offsets": r["token_offsets"]}, ensure_ascii=False) + "\n" for r in records
        )
        manifest = parts / MANIFEST
        if manifest.is_file() and json.loads(manifest.read_text())["sha256"] != hashlib.sha256(content.encode()).hexdigest():
            shutil.rmtree(parts)  # shards of an earlier set of records still to do: their results are in predictions.jsonl already
        inp.write_text(content, encoding="utf-8")
        urls = [u for u in (cfg.url or "").split(",") if u]
        t0 = time.perf_counter()
        run(
            str(inp),
            str(parts),
            {"corpus": self.corpus.name},
            urls=urls or None,
            model=cfg.served_model,
            base_model=None if urls else cfg.model,
            adapter=None if urls else cfg.adapter,
            address=cfg.ray_address,
            shard_records=cfg.ray_shard_records,
            workers=cfg.ray_workers,
            api_key=cfg.api_key or os.environ.get("MEDNER_API_KEY"),
            concurrency=cfg.concurrency,
            window_tokens=cfg.window_tokens,
            grounded=self.grounded,
            raw=True,
        )
        wall = time.perf_counter() - t0
        for part in sorted(parts.glob("part-*.jsonl")):
            for line in part.read_text(encoding="utf-8").splitlines():
                write(json.loads(line))
        return wall
