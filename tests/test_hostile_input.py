"""Hostile but valid input, without a model: what is refused before any planning or upstream call, and how."""

import json

import pytest
from fastapi.testclient import TestClient

from medner.data.registry import get_corpus
from medner.inference.ray_backend import MANIFEST, RayExtractError, run
from medner.prompts.contract import BudgetError, check_budget, task_for
from medner.serve.api import Limits, create_app
from medner.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def api():
    # the upstream is down: everything asserted here is decided before it would be called
    return TestClient(create_app("http://127.0.0.1:9/v1", "ner"), raise_server_exceptions=False)


def test_lone_surrogate_is_422_naming_the_field(api):
    r = api.post(
        "/v1/extract",
        content=b'{"text": "fever \\ud800 and cough", "corpus": "ncbi-disease"}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422
    assert "text is not valid Unicode" in r.text


def test_validation_errors_never_echo_the_text(api):
    r = api.post("/v1/extract", json={"txt": "Patient Zq7Xw9 reports chest pain", "corpus": "ncbi-disease"})
    assert r.status_code == 422
    assert "Zq7Xw9" not in r.text
    assert {tuple(d["loc"]) for d in r.json()["detail"]} >= {("body", "text"), ("body", "txt")}


def test_chunked_body_over_the_limit_is_413():
    app = create_app("http://127.0.0.1:9/v1", "ner", limits=Limits(max_text_chars=1000))

    def body():
        yield b'{"corpus": "ncbi-disease", "text": "'
        for _ in range(10):
            yield b"a" * 1000
        yield b'"}'

    r = TestClient(app).post("/v1/extract", content=body(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_health_without_the_key_says_only_up_or_down():
    app = create_app("http://127.0.0.1:9/v1", "ner", auth_key="k")
    r = TestClient(app).get("/health")
    assert r.status_code == 503 and "127.0.0.1" not in r.text


def test_label_prompt_that_cannot_fit_is_refused_before_planning():
    tok = load_tokenizer()
    labels = {f"L{i:03d}" + "x" * 496: "d" * 500 for i in range(100)}
    with pytest.raises(BudgetError) as e:
        check_budget("Aspirin-induced asthma. " * 160, task_for(None, labels, "en", prompt_version="compact-v1"), 256, tok, 8192, 512)
    assert e.value.kind == "labels" and "100 labels" in str(e.value)
    # an ordinary corpus over a short context is fine
    assert check_budget("Aspirin-induced asthma.", task_for(get_corpus("cmedqaner"), prompt_version="compact-v1"), 256, tok, 2048, 512) == 1


def test_text_needing_too_many_windows_is_refused():
    tok = load_tokenizer()
    with pytest.raises(BudgetError) as e:
        check_budget("患者腹痛伴恶心呕吐" * 20000, task_for(get_corpus("cmedqaner"), prompt_version="compact-v1"), 256, tok, 8192, 64)
    assert e.value.kind == "windows" and "max_windows_per_request" in str(e.value)


def test_ray_rerun_with_another_setup_is_refused(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "text": f"asthma {i}"}) + "\n" for i in range(4)))
    out = tmp_path / "out"
    out.mkdir()
    # a finished first run's manifest, as run() writes it
    from medner.inference.ray_backend import plan_shards

    plan = plan_shards(str(inp), 256)
    plan["setup"] = {
        "task": {"corpus": "ncbi-disease"},
        "model": "ner",
        "base_model": None,
        "adapter": None,
        "adapter_sha256": None,
        "window_tokens": 256,
        "grounded": "ordered",
        "raw": False,
    }
    (out / MANIFEST).write_text(json.dumps(plan))
    with pytest.raises(RayExtractError, match="another setup.*cmedqaner"):
        run(str(inp), str(out), {"corpus": "cmedqaner"}, urls=["http://127.0.0.1:9/v1"], model="ner")
