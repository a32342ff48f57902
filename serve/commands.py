"""`medner serve`, `medner extract` and `medner api`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from medner.config import load_config
from medner.data.formats import write_tool_format
from medner.data.registry import get_corpus
from medner.files import open_private
from medner.inference.ray_backend import make_task, run
from medner.inference.runrecord import decode_wider, trained_types, untrained_warning
from medner.inference.server_client import ExtractClient, task_for
from medner.inference.token_tagger import TokenTagger
from medner.prompts.contract import grounded_mode
from medner.serve.launch import ServeSettings, serve

DEFAULT_SERVE_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


def _serve_defaults(config: str | None):
    path = config or (DEFAULT_SERVE_CONFIG if DEFAULT_SERVE_CONFIG.is_file() else None)
    return load_config(ServeSettings, path, [])


KEY_ON_COMMAND_LINE = (
    "an API key on the command line is visible to every user of this machine (process listings, shell "
    "history); put it in MEDNER_API_KEY or in a file passed with --api-key-file"
)


def read_key(file: str | None, env: str = "MEDNER_API_KEY") -> str | None:
    """An API key from a file (first line, whitespace stripped) or the environment; never from argv."""
    if file:
        try:
            key = Path(file).read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError):
            raise ValueError(f"cannot read an API key from {file} (first line of the file)") from None
        if not key:
            raise ValueError(f"{file}: the first line is empty, not an API key")
        return key
    return os.environ.get(env) or None


def _serve(a: argparse.Namespace) -> int:
    return serve(load_config(ServeSettings, a.config, a.overrides))


def _read_inputs(a: argparse.Namespace) -> list[dict]:
    if a.text is not None and a.file:
        raise ValueError("give TEXT or --file, not both")
    if a.text is not None and a.text != "-":
        return [{"text": a.text}]
    fh = sys.stdin if (a.text == "-" or a.file == "-") else open(a.file, encoding="utf-8-sig")
    name = "<stdin>" if fh is sys.stdin else a.file
    items = []
    with fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if line.lstrip().startswith("{"):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{name}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(obj.get("text"), str):
                    raise ValueError(f"{name}:{lineno}: JSON line needs a string field 'text'")
                items.append({k: obj[k] for k in ("id", "text") if k in obj})
            else:
                items.append({"text": line})
    return items


def _extract(a: argparse.Namespace) -> int:
    """``medner extract``: dispatched on ``--engine`` (a server, or Ray Data shards)."""
    return EXTRACT_ENGINES[a.engine](a)


# long: reads the command line, checks it, runs, and writes one of three output formats
def _extract_server(a: argparse.Namespace) -> int:
    defaults = _serve_defaults(a.serve_config)
    if a.url and len(a.url) > 1:
        raise ValueError("several --url are for --engine ray (a pool of servers); give one --url here")
    if a.base_model or a.adapter:
        raise ValueError("--base-model and --adapter are for --engine ray (vLLM inside the Ray actors)")
    url = a.url[0] if a.url else f"http://{defaults.host}:{defaults.port}/v1"
    model = a.model or (defaults.adapter_name if defaults.adapter else defaults.base_name) or defaults.adapter_name
    labels = None
    if a.labels:
        labels = json.loads(a.labels) if a.labels.strip().startswith(("{", "[")) else [x for x in a.labels.split(",") if x]
    corpus = get_corpus(a.corpus) if (a.corpus and not labels) else None
    items = _read_inputs(a)

    if a.api_key:
        raise ValueError(KEY_ON_COMMAND_LINE)
    client = ExtractClient(
        url,
        model,
        api_key=read_key(a.api_key_file),
        concurrency=a.concurrency,
        window_tokens=a.window_tokens,
        max_tokens_cap=a.max_tokens,
        grounded=grounded_mode(a.grounded),
    )
    client.check_server()
    # the prompt version the served model was trained with (serve config's adapter, or the served folder's record)
    adapter = defaults.adapter if (defaults.adapter and not a.url and not a.model) else None
    task = task_for(corpus, labels, a.lang, prompt_version=client.task_version(a.prompt_version, adapter), instruction=a.instruction)
    record = client.served_record()
    known = trained_types(record)
    for w in untrained_warning(task.label_names, known["labels"]) if not known["warnings"] else []:
        print(f"warning: {w}", file=sys.stderr)
    task = decode_wider(task, record)
    results = client.extract(items, task, progress=len(items) > 1)
    if a.format:
        write_tool_format(results, a.format, a.out)
        failed = sum(1 for r in results if r["status"] != "ok")
        if failed:
            print(
                f"error: {failed} of {len(results)} text(s) did not give a valid answer (see their status: truncated, invalid_json, ...)",
                file=sys.stderr,
            )
        return 1 if failed else 0
    out = open_private(a.out) if a.out else sys.stdout
    failed = 0
    for res in results:
        shown = {k: res[k] for k in ("id", "text", "entities", "dropped", "status", "error") if k in res}
        if a.raw:
            shown["raw"] = res.get("raw")
        if res["status"] != "ok":
            failed += 1
        out.write(json.dumps(shown, ensure_ascii=False, indent=None if len(results) > 1 else 2) + "\n")
    if out is not sys.stdout:
        out.close()
    if failed:
        print(
            f"error: {failed} of {len(results)} text(s) did not give a valid answer (see their status: truncated, invalid_json, ...)",
            file=sys.stderr,
        )
        return 1
    return 0


def _extract_ray(a: argparse.Namespace) -> int:
    """``medner extract --engine ray``: the command-line arguments of ``medner extract`` -> Ray Data shards."""

    if a.api_key:
        raise ValueError(KEY_ON_COMMAND_LINE)
    if not a.file or a.file == "-" or a.text is not None:
        raise ValueError("--engine ray reads --file IN.jsonl (a path or URI), not TEXT or stdin")
    if not a.out:
        raise ValueError("--engine ray writes part files into --out DIR")
    if a.format:
        raise ValueError("--format is not available with --engine ray; export the part files with `medner extract --format` per file")
    labels = None
    if a.labels:
        labels = json.loads(a.labels) if a.labels.strip().startswith(("{", "[")) else [x for x in a.labels.split(",") if x]
    task_args = {"labels": labels, "lang": a.lang} if labels else {"corpus": a.corpus}
    make_task(task_args, "v1")  # a bad corpus or label set fails here, before Ray starts
    summary = run(
        a.file,
        a.out,
        task_args,
        urls=a.url,
        model=a.model or "ner",
        base_model=a.base_model,
        adapter=a.adapter,
        address=a.address,
        shard_records=a.shard_records,
        workers=a.workers,
        api_key=read_key(a.api_key_file),
        concurrency=a.concurrency,
        window_tokens=a.window_tokens,
        grounded=grounded_mode(a.grounded),
        raw=a.raw,
    )
    print(
        f"{summary['records']} records in {summary['shards']} shard(s) -> {summary['out']}/part-*.jsonl "
        f"({summary['shards_run']} run, {summary['shards_skipped']} already done)",
        file=sys.stderr,
    )
    if summary["failed"]:
        print(f"error: {summary['failed']} text(s) did not give a valid answer (see their status)", file=sys.stderr)
        return 1
    return 0


def _api(a: argparse.Namespace) -> int:
    import uvicorn

    from medner.serve.api import Limits, create_app

    if a.api_key:
        raise ValueError(KEY_ON_COMMAND_LINE)
    defaults = _serve_defaults(a.serve_config)
    urls = a.url or [f"http://{defaults.host}:{defaults.port}/v1"]
    url = urls[0] if len(urls) == 1 else urls
    model = a.model or defaults.adapter_name
    auth = read_key(a.api_key_file)
    # the upstream vLLM server's key: its own file or variable only. Reusing the client key would let every API
    # client call vLLM directly, past every limit here; set MEDNER_UPSTREAM_API_KEY to the same value to do so anyway
    upstream = read_key(a.upstream_key_file, "MEDNER_UPSTREAM_API_KEY")
    if not auth and a.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: /v1/extract on {a.host} without an API key: anyone who reaches port {a.port} can use it", file=sys.stderr)
    limits = Limits(
        max_text_chars=a.max_text_chars,
        max_labels=a.max_labels,
        max_label_chars=a.max_label_chars,
        request_timeout_s=a.request_timeout,
        max_in_flight=a.max_in_flight,
        max_windows_per_request=a.max_windows,
    )
    tagger = None
    if a.tokcls:
        tagger = TokenTagger.load(a.tokcls, a.base, batch_size=a.tokcls_batch)
        print(f"medner api: POST /predict from token-classification run {a.tokcls} ({tagger.corpus})", file=sys.stderr, flush=True)
    elif a.base:
        raise ValueError("--base names the base model of a --tokcls run; give --tokcls RUN_ADAPTER_DIR too")
    app = create_app(url, model, api_key=upstream, auth_key=auth, limits=limits, tagger=tagger)
    print(
        f"medner api: /v1/extract at http://{a.host}:{a.port} -> {', '.join(urls)} ({'API key required' if auth else 'no API key'})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=a.host, port=a.port, access_log=False, log_level="warning")
    return 0


EXTRACT_ENGINES = {"server": _extract_server, "ray": _extract_ray}


# long: argparse declarations, one block per flag
def add_serve_commands(stages) -> None:
    s = stages.add_parser("serve", help="vLLM's OpenAI-compatible server with the adapter")
    s.add_argument("--config", required=True)
    s.add_argument("overrides", nargs="*", help="key=value overrides (model=PATH adapter=PATH port=N ...)")
    s.set_defaults(func=_serve)

    e = stages.add_parser("extract", help="extract entities with a running server")
    e.add_argument("text", nargs="?", help="the text, or - for stdin (one text or JSON object per line)")
    e.add_argument("--file", help="a file with one text per line, or JSONL with 'text' (and 'id'); - for stdin")
    e.add_argument(
        "--url",
        action="append",
        help="server base URL (default: from the serve config, http://127.0.0.1:8000/v1); "
        "with --engine ray, repeat it for a pool of servers",
    )
    e.add_argument("--model", help="served model name (default: the serve config's adapter name)")
    e.add_argument("--corpus", default="ncbi-disease", help="registered corpus: its labels, descriptions and language")
    e.add_argument("--labels", help="ad-hoc labels instead of a corpus: 'A,B' or JSON {label: description}")
    e.add_argument("--lang", default="en", choices=["en", "zh"], help="language with --labels")
    e.add_argument("--instruction", help="ask in your own words, e.g. 'Which diseases are mentioned?' ({text} marks where the text goes)")
    e.add_argument("--serve-config", help="serve config to take defaults from")
    e.add_argument("--api-key", help=argparse.SUPPRESS)  # refused: visible in process listings
    e.add_argument("--api-key-file", help="file whose first line is the API key (default: MEDNER_API_KEY)")
    e.add_argument("--concurrency", type=int, default=8, help="texts in flight at once")
    e.add_argument("--window-tokens", type=int, default=256, help="window cap for long texts (Qwen2.5 tokens)")
    e.add_argument("--max-tokens", type=int, help="cap on max_tokens per request (default: derived from the schema bound)")
    e.add_argument(
        "--grounded",
        nargs="?",
        const="ordered",
        default="ordered",
        choices=["ordered", "substring"],
        help="every mention a span of the input, by construction (the default: ordered, in order of appearance; substring: any span)",
    )
    e.add_argument(
        "--no-grounded",
        dest="grounded",
        action="store_const",
        const=None,
        help="the plain answer schema: mentions may be any string (counted as ungrounded when not in the text)",
    )
    e.add_argument(
        "--prompt-version", help="prompt templates to query with (default: the served model's trained version; another is refused)"
    )
    e.add_argument("--out", help="write JSONL here instead of stdout")
    e.add_argument("--raw", action="store_true", help="include the raw model output")
    e.add_argument(
        "--format",
        choices=["labelstudio", "doccano", "brat"],
        help="write the results for review in an annotation tool instead of medner's JSONL",
    )
    e.add_argument(
        "--engine",
        choices=["server", "ray"],
        default="server",
        help="ray: batch extraction of --file (JSONL) on Ray Data into --out DIR (part-*.jsonl; a rerun completes it)",
    )
    e.add_argument("--address", help="--engine ray: an existing Ray cluster (default: start a local one)")
    e.add_argument("--base-model", help="--engine ray: run vLLM inside the Ray actors on this base model (instead of --url)")
    e.add_argument("--adapter", help="--engine ray with --base-model: the adapter (merged on a CPU-only machine)")
    e.add_argument("--shard-records", type=int, default=256, help="--engine ray: records per shard (one part file each)")
    e.add_argument("--workers", type=int, help="--engine ray: actors (default: 2 per --url, or 1 vLLM engine)")
    e.set_defaults(func=_extract)

    p = stages.add_parser("api", help="serve POST /v1/extract on its own port, backed by the vLLM server (and POST /predict with --tokcls)")
    p.add_argument(
        "--url", action="append", help="vLLM server base URL; repeat it for several replicas (requests spread over the healthy ones)"
    )
    p.add_argument("--model", help="served model name")
    p.add_argument("--serve-config")
    p.add_argument("--api-key", help=argparse.SUPPRESS)  # refused: visible in process listings
    p.add_argument("--api-key-file", help="file whose first line is the key clients must send (default: MEDNER_API_KEY; none = open)")
    p.add_argument("--upstream-key-file", help="the vLLM server's key (default: MEDNER_UPSTREAM_API_KEY; never the client key)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback; for a network put a TLS proxy in front, see the README)")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--max-text-chars", type=int, default=1_000_000, help="longest text accepted (413 beyond)")
    p.add_argument("--max-labels", type=int, default=100, help="most ad-hoc labels per request (422 beyond)")
    p.add_argument("--max-label-chars", type=int, default=500, help="longest label or description (422 beyond)")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request before 504")
    p.add_argument("--max-in-flight", type=int, default=128, help="requests extracted at once (429 beyond)")
    p.add_argument(
        "--max-windows", type=int, default=128, help="upstream window requests one text may need (413 beyond, decided before planning)"
    )
    p.add_argument(
        "--tokcls", metavar="RUN_ADAPTER_DIR", help="also serve POST /predict from a `medner tokcls train` run (in process, no vLLM)"
    )
    p.add_argument("--base", help="base model of the --tokcls run (default: the one in its run record)")
    p.add_argument("--tokcls-batch", type=int, default=16, help="most texts per forward batch for /predict")
    p.set_defaults(func=_api)
