"""/v1/extract's guard: the API key, the limits, and keys kept off command lines. The upstream here is a
closed port (what the API sees when the vLLM server is down); the real-server side is in test_serve.py."""

import pytest
from conftest import free_port, run_medner
from fastapi.testclient import TestClient

KEY = "k-3f9a1c"
BODY = {"text": "Aspirin-induced asthma.", "corpus": "ncbi-disease"}


@pytest.fixture()
def api():
    from medner.serve.api import Limits, create_app

    app = create_app(
        f"http://127.0.0.1:{free_port()}/v1", "ner", auth_key=KEY, limits=Limits(max_text_chars=1000, max_labels=3, max_label_chars=20)
    )
    with TestClient(app) as c:
        yield c


def test_every_endpoint_but_health_wants_the_key(api):
    assert api.post("/v1/extract", json=BODY).status_code == 401
    r = api.post("/v1/extract", json=BODY, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "API key" in r.json()["detail"] and r.headers["www-authenticate"] == "Bearer"
    assert api.post("/v1/extract", json=BODY, headers={"Authorization": KEY}).status_code == 401  # not a Bearer header
    assert api.get("/docs").status_code == 401 and api.get("/openapi.json").status_code == 401
    assert api.get("/health").status_code == 503  # open, and honest: the upstream is down
    r = api.post("/v1/extract", json=BODY, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 503 and "cannot reach the server" in r.json()["detail"]  # past the guard


@pytest.mark.parametrize(
    "body,status,fragment",
    [
        ({"text": "a" * 1001, "corpus": "ncbi-disease"}, 413, "text is 1,001 characters; the limit is 1,000"),
        ({"text": "x", "labels": ["A", "B", "C", "D"]}, 422, "4 labels; the limit is 3"),
        ({"text": "x", "labels": {"A": "d" * 21}}, 422, "the limit is 20"),
        ({"text": "x", "labels": ["L" * 21]}, 422, "the limit is 20"),
        ({"text": 5, "corpus": "ncbi-disease"}, 422, "string"),
    ],
)
def test_limits_are_refused_with_the_limit_named(api, body, status, fragment):
    r = api.post("/v1/extract", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == status and fragment in str(r.json()["detail"]), r.json()


def test_an_oversized_body_is_refused_before_it_is_parsed(api):
    r = api.post("/v1/extract", content=b"{" + b" " * 70000, headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["detail"]


def test_without_a_key_the_api_is_open_on_loopback():
    from medner.serve.api import create_app

    with TestClient(create_app(f"http://127.0.0.1:{free_port()}/v1", "ner")) as c:
        assert c.post("/v1/extract", json=BODY).status_code == 503


@pytest.mark.parametrize("cmd", [("api",), ("extract", "some text")])
def test_a_key_on_the_command_line_is_refused(cmd):
    proc = run_medner(*cmd, "--api-key", "s3cret")
    assert proc.returncode == 1 and "visible to every user of this machine" in proc.stderr and "s3cret" not in proc.stderr


def test_key_file_and_environment(tmp_path, monkeypatch):
    from medner.serve.commands import read_key

    f = tmp_path / "key"
    f.write_text("  k-from-file \nsecond line\n")
    assert read_key(str(f)) == "k-from-file"
    monkeypatch.setenv("MEDNER_API_KEY", "k-env")
    assert read_key(None) == "k-env" and read_key(str(f)) == "k-from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="first line is empty"):
        read_key(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="cannot read an API key"):
        read_key(str(tmp_path / "missing"))


def test_config_keys_stay_off_command_lines_and_out_of_run_folders(tmp_path):
    from medner.config import ConfigError, load_config, save_config
    from medner.eval.run import EvalSettings

    with pytest.raises(ConfigError, match="api_key= on the command line is visible"):
        load_config(EvalSettings, None, ["api_key=s3cret"])
    (tmp_path / "eval.yaml").write_text("api_key: s3cret\n")
    cfg = load_config(EvalSettings, tmp_path / "eval.yaml", ["api_key=null"])
    assert cfg.api_key is None
    cfg = load_config(EvalSettings, tmp_path / "eval.yaml")
    save_config(cfg, tmp_path / "resolved.yaml")
    assert cfg.api_key == "s3cret" and "s3cret" not in (tmp_path / "resolved.yaml").read_text()
