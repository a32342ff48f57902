"""The real vLLM server with the tiny model and adapter: OpenAI endpoint, `medner extract`, /v1/extract."""

import json

import httpx
import jsonschema
import pytest
from conftest import ROOT, free_port, run_medner

pytestmark = pytest.mark.slow

TEXT = "Aspirin-induced asthma and hypertension were seen in a patient with asthma."


def test_cpu_server_with_adapter_serves_the_merged_model_alone(vllm_server):
    # one model per engine on the CPU build: no base beside the adapter that its requests could leak into
    data = httpx.get(f"{vllm_server}/models").json()["data"]
    assert [m["id"] for m in data] == ["ner"] and not data[0].get("parent")
    assert "/merged/" in data[0]["root"]


def test_openai_sdk_chat_with_schema_is_valid_and_stops(vllm_server, registry):
    from openai import OpenAI

    from medner.prompts.render import build_messages
    from medner.prompts.schema import answer_schema, max_reply_tokens

    c = registry["ncbi-disease"]
    schema = answer_schema(c.label_names, TEXT, n_tokens=14)
    client = OpenAI(base_url=vllm_server, api_key="unused")
    resp = client.chat.completions.create(
        model="ner",
        messages=build_messages(TEXT, c.labels, c.lang),
        temperature=0,
        max_tokens=max_reply_tokens(schema, c.label_names),
        response_format={"type": "json_schema", "json_schema": {"name": "entities", "schema": schema}},
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), schema)


def test_extract_cli_plain_schema_grounds_offsets(vllm_server, tmp_path):
    # --no-grounded: the plain answer schema, where a mention may be any string; grounding happens after the reply
    proc = run_medner(
        "extract", "--url", vllm_server, "--model", "ner", "--corpus", "ncbi-disease", "--no-grounded", TEXT, "--raw", check=True
    )
    out = json.loads(proc.stdout)
    assert out["text"] == TEXT and out["status"] == "ok"
    for e in out["entities"]:
        assert TEXT[e["start"] : e["end"]] == e["text"]
    # the raw reply was parsed: every mention is either grounded or reported as dropped
    raw = json.loads(out["raw"][0])
    assert len(raw["entities"]) == len(out["entities"]) + len(out["dropped"])


def test_extract_file_jsonl_ids_pass_through_and_chinese(vllm_server, tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text(
        json.dumps({"id": "a1", "text": "宝宝出水痘了，需要吃阿昔洛韦吗？"}, ensure_ascii=False)
        + "\n"
        + json.dumps({"id": "a2", "text": ""})
        + "\n"
    )
    # a zh label set from the registry; the adapter was trained on English, which is fine for a client call
    proc = run_medner("extract", "--url", vllm_server, "--model", "ner", "--corpus", "cmedqaner", "--file", str(f), check=True)
    rows = [json.loads(l) for l in proc.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["a1", "a2"]
    assert rows[1]["entities"] == [] and rows[1]["status"] == "ok"  # empty text: no entities, no request
    for e in rows[0]["entities"]:
        assert rows[0]["text"][e["start"] : e["end"]] == e["text"]


def test_long_text_is_windowed_and_stitched(vllm_server):
    from medner.data.registry import get_corpus
    from medner.inference.server_client import ExtractClient, task_for

    text = " ".join(["The patient had asthma."] * 40)
    client = ExtractClient(vllm_server, "ner", window_tokens=32)
    client.check_server()
    (res,) = client.extract([text], task_for(get_corpus("ncbi-disease")))
    assert res["windows"] > 1
    assert res["status"] in ("ok", "truncated"), (res.get("error"), res["raw"])
    for e in res["entities"]:
        assert text[e["start"] : e["end"]] == e["text"]


def test_truncated_reply_is_reported_not_parsed(vllm_server):
    proc = run_medner("extract", "--url", vllm_server, "--model", "ner", "--max-tokens", "3", TEXT)
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["status"] == "truncated" and out["entities"] == []
    assert "did not give a valid answer" in proc.stderr


def test_unreachable_server_is_one_clear_error():
    proc = run_medner("extract", "--url", f"http://127.0.0.1:{free_port()}/v1", TEXT)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot reach the server at")
    assert "Traceback" not in proc.stderr


def test_unknown_model_name_is_one_clear_error(vllm_server):
    proc = run_medner("extract", "--url", vllm_server, "--model", "nope", TEXT)
    assert proc.returncode == 1 and "does not serve model 'nope'" in proc.stderr


def test_extract_api_endpoint(vllm_server):
    from fastapi.testclient import TestClient

    from medner.serve.api import create_app

    app = create_app(vllm_server, "ner")
    with TestClient(app) as api:
        assert api.get("/health").json()["status"] == "ok"
        r = api.post("/v1/extract", json={"text": TEXT, "corpus": "ncbi-disease"})
        assert r.status_code == 200
        body = r.json()
        assert body["text"] == TEXT and body["status"] == "ok"
        for e in body["entities"]:
            assert TEXT[e["start"] : e["end"]] == e["text"]
        r2 = api.post("/v1/extract", json={"text": "发热三天", "labels": {"symptom": "症状"}, "lang": "zh", "model": "ner"})
        assert r2.status_code == 200 and r2.json()["text"] == "发热三天"
        assert api.post("/v1/extract", json={"text": "x", "corpus": "nope"}).status_code == 422
        assert api.post("/v1/extract", json={"text": "x"}).status_code == 422
        # grounded is the default: what was asked above with no "grounded" field equals an explicit true
        g = api.post("/v1/extract", json={"text": TEXT, "corpus": "ncbi-disease", "grounded": True}).json()
        assert g["status"] == "ok" and not g["dropped"] and all(TEXT[e["start"] : e["end"]] == e["text"] for e in g["entities"])
        assert (g["entities"], g["dropped"]) == (body["entities"], body["dropped"])
        plain = api.post("/v1/extract", json={"text": TEXT, "corpus": "ncbi-disease", "grounded": False}).json()
        assert plain["status"] == "ok" and all(TEXT[e["start"] : e["end"]] == e["text"] for e in plain["entities"])
        assert api.post("/v1/extract", json={"text": "x", "corpus": "ncbi-disease", "grounded": "fuzzy"}).status_code == 422


def test_the_served_folder_tells_clients_the_trained_prompt_version(vllm_server):
    from medner.inference.server_client import ExtractClient

    client = ExtractClient(vllm_server, "ner")
    client.check_server()
    assert client.served_record()["prompt_version"] == "compact-v1" and client.task_version(None) == "compact-v1"
    proc = run_medner("extract", "--url", vllm_server, "--model", "ner", "--prompt-version", "v1", TEXT)
    err = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert proc.returncode == 1 and len(err) == 1 and "trained with prompt version 'compact-v1', not 'v1'" in err[0], proc.stderr[-1000:]


def test_grounded_eval_and_extract_through_the_server(vllm_server, tmp_path):
    """The acceptance shape: every predicted entity is a span of the input at its offsets, none dropped or
    cut, on English and on Chinese (a token per character), through the real server."""
    from test_grounded import _check_grounded_run

    found = 0
    for corpus in ("ncbi-disease", "cmedqaner"):  # no grounded= given: ordered is the default of a constrained run
        out = tmp_path / corpus
        run_medner(
            "eval",
            "run",
            "--config",
            str(ROOT / "eval/configs/default.yaml"),
            f"url={vllm_server}",
            "served_model=ner",
            f"corpus={corpus}",
            "split=test",
            "limit=12",
            f"out={out}",
            "bootstrap=0",
            check=True,
        )
        found += _check_grounded_run(out)
    assert found > 0, "no entity predicted: nothing was checked"
    # resuming that run with the default written out is the same setup; the plain schema is another one
    again = run_medner(
        "eval",
        "run",
        "--config",
        str(ROOT / "eval/configs/default.yaml"),
        f"url={vllm_server}",
        "served_model=ner",
        "corpus=cmedqaner",
        "split=test",
        "limit=12",
        "grounded=ordered",
        f"out={tmp_path / 'cmedqaner'}",
        "bootstrap=0",
        check=True,
    )
    assert again.returncode == 0
    other = run_medner(
        "eval",
        "run",
        "--config",
        str(ROOT / "eval/configs/default.yaml"),
        f"url={vllm_server}",
        "served_model=ner",
        "corpus=cmedqaner",
        "split=test",
        "limit=12",
        "grounded=false",
        f"out={tmp_path / 'cmedqaner'}",
        "bootstrap=0",
    )
    assert other.returncode != 0 and "grounded: 'ordered' -> None" in other.stderr, other.stderr[-800:]
    for flags in ([], ["--grounded"]):  # the default and the explicit flag
        proc = run_medner("extract", "--url", vllm_server, "--model", "ner", *flags, "--raw", TEXT, check=True)
        res = json.loads(proc.stdout)
        assert res["status"] == "ok" and not res["dropped"] and all(TEXT[e["start"] : e["end"]] == e["text"] for e in res["entities"])


def test_api_health_when_upstream_down():
    from fastapi.testclient import TestClient

    from medner.serve.api import create_app

    with TestClient(create_app(f"http://127.0.0.1:{free_port()}/v1", "ner")) as api:
        assert api.get("/health").status_code == 503
        assert api.post("/v1/extract", json={"text": "x", "corpus": "ncbi-disease"}).status_code == 503


def test_serve_refuses_a_different_base_model(tiny_adapter, tmp_path):
    other = tmp_path / "other-tiny"
    run_medner("sft", "make-tiny", str(other), "--seed", "1", check=True)
    proc = run_medner(
        "serve", "--config", str(ROOT / "serve/configs/tiny.yaml"), f"model={other}", f"adapter={tiny_adapter}", f"port={free_port()}"
    )
    assert proc.returncode == 1 and "trained on base model" in proc.stderr


def test_serve_refuses_a_label_set_the_adapter_was_not_trained_on(tiny_model, tiny_adapter):
    proc = run_medner(
        "serve",
        "--config",
        str(ROOT / "serve/configs/tiny.yaml"),
        f"model={tiny_model}",
        f"adapter={tiny_adapter}",
        "corpus=cmedqaner",
        f"port={free_port()}",
    )
    assert proc.returncode == 1 and "not on 'cmedqaner'" in proc.stderr


def test_serve_refuses_lora_serving_on_the_cpu_build(tiny_model, tiny_adapter):
    proc = run_medner(
        "serve",
        "--config",
        str(ROOT / "serve/configs/tiny.yaml"),
        f"model={tiny_model}",
        f"adapter={tiny_adapter}",
        "merge=false",
        f"port={free_port()}",
    )
    assert proc.returncode == 1 and "merge=false with an adapter on vLLM's CPU build" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_vllm_argv_is_private_by_default():
    from pathlib import Path

    from medner.serve.launch import ServeSettings, vllm_argv

    argv = vllm_argv(ServeSettings(api_key="secret"), Path("/m"))
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "--enable-log-requests" not in argv and "secret" not in " ".join(argv)
    assert json.loads(argv[argv.index("--structured-outputs-config") + 1])["disable_any_whitespace"] is True


def _start_api(vllm_server, *flags, env=None):
    import os
    import subprocess
    import sys
    import time

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "medner.cli", "api", "--url", vllm_server, "--model", "ner", "--port", str(port), *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    for _ in range(120):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code in (200, 503):
                return proc, f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("medner api did not start: " + proc.stderr.read()[-1000:])


def test_api_caps_requests_in_flight_and_times_out_against_the_real_server(vllm_server):
    import asyncio

    proc, base = _start_api(vllm_server, "--max-in-flight", "2", env={"MEDNER_API_KEY": "k-test"})
    try:

        async def burst():
            async with httpx.AsyncClient(timeout=300, headers={"Authorization": "Bearer k-test"}) as h:
                return await asyncio.gather(
                    *(h.post(f"{base}/v1/extract", json={"text": TEXT, "corpus": "ncbi-disease"}) for _ in range(12))
                )

        rs = asyncio.run(burst())
        codes = sorted(r.status_code for r in rs)
        assert set(codes) <= {200, 429} and 200 in codes and 429 in codes, codes
        assert all(r.headers.get("retry-after") == "1" for r in rs if r.status_code == 429)
        assert all(TEXT[e["start"] : e["end"]] == e["text"] for r in rs if r.status_code == 200 for e in r.json()["entities"])
        assert httpx.post(f"{base}/v1/extract", json={"text": TEXT, "corpus": "ncbi-disease"}).status_code == 401
    finally:
        proc.terminate()
        proc.wait(30)
    proc, base = _start_api(vllm_server, "--request-timeout", "0.001")
    try:
        r = httpx.post(f"{base}/v1/extract", json={"text": TEXT, "corpus": "ncbi-disease"}, timeout=60)
        assert r.status_code == 504 and "request_timeout_s" in r.json()["detail"]
    finally:
        proc.terminate()
        proc.wait(30)


def test_extract_writes_annotation_tool_formats(vllm_server, tmp_path):
    from medner.data.formats import read_annotated

    f = tmp_path / "in.txt"
    f.write_text(TEXT + "\nBRCA1 mutations cause hereditary breast cancer.\n")
    run_medner(
        "extract",
        "--url",
        vllm_server,
        "--model",
        "ner",
        "--grounded",
        "--file",
        str(f),
        "--format",
        "doccano",
        "--out",
        str(tmp_path / "o.jsonl"),
        check=True,
    )
    rows = [json.loads(l) for l in (tmp_path / "o.jsonl").open()]
    assert [r["text"] for r in rows] == f.read_text().splitlines()
    back = read_annotated(tmp_path / "o.jsonl", "doccano", "en", ["Disease"], "x")  # straight back in: every span on a boundary
    assert [[(e["start"], e["end"]) for e in r["entities"]] for r in back] == [[(a, b) for a, b, _ in r["label"]] for r in rows]
    run_medner("extract", "--url", vllm_server, "--model", "ner", TEXT, "--format", "brat", "--out", str(tmp_path / "brat"), check=True)
    assert (tmp_path / "brat" / "doc00000.txt").read_text() == TEXT and (tmp_path / "brat" / "doc00000.ann").is_file()


def test_python_extractor_gives_what_the_cli_gives(vllm_server):
    from medner import Extractor

    ner = Extractor(url=vllm_server, corpus="ncbi-disease")
    one = ner.extract(TEXT)
    cli = json.loads(run_medner("extract", "--url", vllm_server, "--model", "ner", "--corpus", "ncbi-disease", TEXT, check=True).stdout)
    assert one["status"] == "ok" and one["entities"] == cli["entities"]
    many = ner.extract_many([{"id": "a", "text": TEXT}, {"id": "b", "text": ""}])
    assert [r["id"] for r in many] == ["a", "b"] and many[0]["entities"] == one["entities"] and many[1]["entities"] == []


@pytest.mark.slow
def test_chat_completions_with_a_plain_openai_client(vllm_server):
    from openai import AuthenticationError, OpenAI

    proc, base = _start_api(vllm_server, env={"MEDNER_API_KEY": "k-chat"})
    try:
        client = OpenAI(base_url=f"{base}/v1", api_key="k-chat", max_retries=0, timeout=300)
        assert [m.id for m in client.models.list().data] == ["ner"]
        q = [{"role": "user", "content": "Which diseases are mentioned in this sentence? " + TEXT}]
        # response_format json_object is answered in the trained compact format, not vLLM's generic JSON grammar
        c = client.chat.completions.create(model="ner", messages=q, temperature=0, max_tokens=256, response_format={"type": "json_object"})
        content = c.choices[0].message.content
        assert isinstance(json.loads(content)["entities"], list) and ", " not in content
        medner = c.model_extra["medner"]
        for e in medner["entities"]:
            assert q[e["message"]]["content"][e["start"] : e["end"]] == e["text"]
        streamed = "".join(
            ch.choices[0].delta.content or ""
            for ch in client.chat.completions.create(model="ner", messages=q, temperature=0, max_tokens=256, stream=True)
            if ch.choices
        )
        assert streamed == content
        warned = client.chat.completions.create(model="ner", messages=q, max_tokens=64, extra_body={"labels": ["Gene"]})
        assert any("never trained" in w for w in warned.model_extra["medner"]["warnings"])
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).chat.completions.create(model="ner", messages=q)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
