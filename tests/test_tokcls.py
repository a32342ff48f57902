"""Token classification: alignment to Qwen2.5 sub-tokens, BIO repair and Viterbi, spans and offsets (fast, the
real tokenizer); then the real path on the tiny model: `medner tokcls train`, eval backend=tokcls, /predict."""

import json
import math

import pytest
from conftest import ROOT, run_medner

from medner.inference.token_tagger import (
    IGNORE,
    TokClsError,
    bio_labels,
    decode_tags,
    encode_words,
    repair,
    tags_to_entities,
    training_features,
    viterbi,
    word_pieces,
)


@pytest.fixture(scope="module")
def tok():
    from medner.tokenizer import load_tokenizer

    return load_tokenizer()


def _words(text):
    from medner.data.ground import simple_token_offsets

    return [list(o) for o in simple_token_offsets(text, "zh" if any("\u4e00" <= c <= "\u9fff" for c in text) else "en")]


def test_bio_labels_follow_the_registry_order():
    assert bio_labels(["Chemical", "Disease"]) == ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]


def test_word_pieces_rebuild_the_text():
    text = "  Ataxia-telangiectasia (A-T) is rare.  "
    offs = _words(text)
    assert "".join(word_pieces(text, offs)) == text[: offs[-1][1]]
    assert word_pieces(text, offs)[:3] == ["  Ataxia", "-", "telangiectasia"]


@pytest.mark.parametrize("where", ["first", "last"])
def test_each_word_gets_its_own_sub_tokens(tok, where):
    text = "Germline mutations in BRCA1 cause breast-ovarian cancer."
    offs = _words(text)
    ids, pos = encode_words(text, offs, tok, where)
    assert len(pos) == len(offs) and pos == sorted(set(pos))
    assert tok.decode(ids) == text  # nothing lost or added
    # the carrying sub-token is the first / last of its own word's piece
    bounds, k = [], 0
    for piece in word_pieces(text, offs):
        n = len(tok(piece, add_special_tokens=False)["input_ids"])
        bounds.append((k, k + n))
        k += n
    for (a, b), p in zip(bounds, pos):
        assert p == (a if where == "first" else b - 1)


def test_chinese_characters_never_share_a_sub_token(tok):
    text = "患者出现高血压和糖尿病"  # Qwen2.5 merges several of these characters when the text is encoded whole
    offs = _words(text)
    whole = tok(text, add_special_tokens=False)["input_ids"]
    ids, pos = encode_words(text, offs, tok)
    assert len(whole) < len(offs)  # the natural encoding would put two characters (two corpus tokens) in one token
    assert len(pos) == len(offs) == len(set(pos))
    assert tok.decode(ids) == text


def test_training_labels_sit_on_the_carrying_sub_tokens(tok):
    text = "Ataxia-telangiectasia is a recessive disorder ."
    offs = _words(text)
    rec = {
        "id": "r",
        "text": text,
        "tokens": [text[s:e] for s, e in offs],
        "token_offsets": offs,
        "entities": [
            {"text": "Ataxia-telangiectasia", "type": "Disease", "start": 0, "end": 21},
            {"text": "recessive disorder", "type": "Disease", "start": 27, "end": 45},
        ],
    }
    labels = bio_labels(["Disease"])
    f = training_features(rec, tok, {t: i for i, t in enumerate(labels)}, "last", echo=False)
    tagged = [labels[y] for y in f["labels"] if y != IGNORE]
    assert tagged == ["B-Disease", "I-Disease", "I-Disease", "O", "O", "B-Disease", "I-Disease", "O"]
    assert sum(y != IGNORE for y in f["labels"]) == len(offs)
    echo = training_features(rec, tok, {t: i for i, t in enumerate(labels)}, "last", echo=True)
    n = len(f["input_ids"])
    assert echo["input_ids"] == f["input_ids"] * 2 and echo["labels"][:n] == [IGNORE] * n and echo["labels"][n:] == f["labels"]


def test_unknown_tag_is_refused_with_the_record(tok):
    rec = {
        "id": "c:train:7",
        "text": "x y",
        "tokens": ["x", "y"],
        "token_offsets": [[0, 1], [2, 3]],
        "entities": [{"text": "x", "type": "Gene", "start": 0, "end": 1}],
    }
    with pytest.raises(TokClsError, match="c:train:7.*B-Gene"):
        training_features(rec, tok, {"O": 0, "B-Disease": 1, "I-Disease": 2}, "last", False)


def test_repair_turns_a_stray_inside_tag_into_a_beginning():
    assert repair(["I-D", "I-D", "O", "I-D", "B-D", "I-X", "I-X"]) == ["B-D", "I-D", "O", "B-D", "B-D", "B-X", "I-X"]


def test_viterbi_never_starts_a_mention_with_inside():
    labels = ["O", "B-D", "I-D"]
    lp = [[math.log(p) for p in row] for row in ([0.5, 0.1, 0.4], [0.1, 0.1, 0.8])]
    assert decode_tags(lp, labels, "argmax") == ["O", "B-D"]  # O I-D repaired: the stray I- opens a mention
    assert viterbi(lp, labels) == ["B-D", "I-D"]  # 0.1 * 0.8 beats O O and O B-D (0.5 * 0.1); O -> I-D is not allowed
    # O then I-D by argmax; O->I-D is not allowed: O O (0.7 * 0.2) beats B-D I-D (0.1 * 0.7)
    lp2 = [[math.log(p) for p in row] for row in ([0.7, 0.1, 0.2], [0.2, 0.1, 0.7])]
    assert viterbi(lp2, labels) == ["O", "O"]
    assert decode_tags(lp2, labels, "argmax") == ["O", "B-D"]
    with pytest.raises(TokClsError):
        decode_tags(lp, labels, "beam")


def test_tags_become_entities_that_slice_the_text():
    text = "Ataxia-telangiectasia (A-T) is rare."
    offs = _words(text)
    tags = ["B-D", "I-D", "I-D", "O", "B-D", "I-D", "I-D", "O", "O", "O", "O"]
    ents = tags_to_entities(text, offs, tags)
    assert [(e["text"], e["start"], e["end"]) for e in ents] == [("Ataxia-telangiectasia", 0, 21), ("A-T", 23, 26)]
    assert all(text[e["start"] : e["end"]] == e["text"] for e in ents)


# -- the real path on the tiny model -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tokcls_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tokcls"
    run_medner(
        "tokcls",
        "train",
        "--config",
        str(ROOT / "sft/configs/tokcls-tiny.yaml"),
        f"model={tiny_model}",
        f"output_dir={out}",
        "max_steps=4",
        "save_steps=2",
        check=True,
    )
    return out


@pytest.mark.slow
def test_train_writes_adapter_record_curve_and_resumes(tokcls_run, tiny_model):
    ad = tokcls_run / "adapter"
    assert (ad / "adapter_config.json").is_file() and (tokcls_run / "loss_curve.png").is_file()
    rec = json.loads((ad / "medner_run.json").read_text())
    assert rec["family"] == "token-classification" and rec["labels"] == ["O", "B-Disease", "I-Disease"] and rec["corpus"] == "ncbi-disease"
    summary = json.loads((tokcls_run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["dev"] and summary["world_size"] == 1
    assert json.loads((ad / "adapter_config.json").read_text())["modules_to_save"]  # the head is saved in full
    # resumed: two more steps from checkpoint-4, not a fresh start
    proc = run_medner(
        "tokcls",
        "train",
        "--config",
        str(ROOT / "sft/configs/tokcls-tiny.yaml"),
        f"model={tiny_model}",
        f"output_dir={tokcls_run}",
        "max_steps=6",
        "save_steps=2",
        check=True,
    )
    assert "resuming from checkpoint-4" in proc.stderr
    # another setup in the same folder is refused in one line
    bad = run_medner(
        "tokcls",
        "train",
        "--config",
        str(ROOT / "sft/configs/tokcls-tiny.yaml"),
        f"model={tiny_model}",
        f"output_dir={tokcls_run}",
        "max_steps=8",
        "echo=true",
    )
    assert bad.returncode == 1 and "holds checkpoints of another setup" in bad.stderr and "echo" in bad.stderr


@pytest.mark.slow
def test_eval_backend_scores_like_the_generative_runs(tokcls_run, tiny_model, tmp_path):
    out = tmp_path / "ev"
    run_medner(
        "eval",
        "run",
        "--config",
        str(ROOT / "eval/configs/default.yaml"),
        "backend=tokcls",
        f"model={tiny_model}",
        f"adapter={tokcls_run / 'adapter'}",
        "corpus=ncbi-disease",
        "split=test",
        "limit=12",
        f"out={out}",
        "bootstrap=50",
        check=True,
    )
    rep = json.loads((out / "report.json").read_text())
    assert rep["records"] == 12 and rep["run"]["backend"] == "tokcls" and "f1" in rep["seqeval"]["micro"]
    preds = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 12 and all(p["text"][e["start"] : e["end"]] == e["text"] for p in preds for e in p["entities"])
    assert (out / "report.html").is_file()
    assert rep["run"]["tokcls_decode"] == "viterbi"  # as the run was trained (the default)
    # argmax decoding of the same run, chosen at evaluation time: the same offset contract
    arg = tmp_path / "argmax"
    run_medner(
        "eval",
        "run",
        "--config",
        str(ROOT / "eval/configs/default.yaml"),
        "backend=tokcls",
        f"model={tiny_model}",
        "tokcls_decode=argmax",
        f"adapter={tokcls_run / 'adapter'}",
        "corpus=ncbi-disease",
        "split=test",
        "limit=12",
        f"out={arg}",
        "bootstrap=50",
        check=True,
    )
    assert json.loads((arg / "report.json").read_text())["run"]["tokcls_decode"] == "argmax"
    apreds = [json.loads(l) for l in (arg / "predictions.jsonl").read_text().splitlines()]
    assert len(apreds) == 12 and all(p["text"][e["start"] : e["end"]] == e["text"] for p in apreds for e in p["entities"])
    # a tokcls run is not a generative adapter, and a generative adapter is not a tokcls run
    wrong = run_medner(
        "eval",
        "run",
        "--config",
        str(ROOT / "eval/configs/default.yaml"),
        "backend=hf",
        f"model={tiny_model}",
        f"adapter={tokcls_run / 'adapter'}",
        "limit=2",
        f"out={tmp_path / 'w'}",
    )
    assert wrong.returncode == 1 and "token-classification run" in wrong.stderr
    other = run_medner(
        "eval",
        "run",
        "--config",
        str(ROOT / "eval/configs/default.yaml"),
        "backend=tokcls",
        "corpus=bc5cdr",
        f"adapter={tokcls_run / 'adapter'}",
        "limit=2",
        f"out={tmp_path / 'o'}",
    )
    assert other.returncode == 1 and "trained on 'ncbi-disease'" in other.stderr


@pytest.mark.slow
def test_generative_adapter_is_refused_as_tokcls(tiny_adapter, tiny_model, tmp_path):
    proc = run_medner(
        "eval",
        "run",
        "--config",
        str(ROOT / "eval/configs/default.yaml"),
        "backend=tokcls",
        f"model={tiny_model}",
        f"adapter={tiny_adapter}",
        "limit=2",
        f"out={tmp_path}",
    )
    assert proc.returncode == 1 and "generative (SFT) adapter" in proc.stderr


@pytest.mark.slow
def test_tagger_windows_long_text_with_exact_offsets(tokcls_run, tiny_model):
    from medner.inference.token_tagger import TokenTagger

    tagger = TokenTagger.load(tokcls_run / "adapter", tiny_model)
    tagger.window_tokens = 24  # force several overlapping windows
    text = " ".join(["Familial adenomatous polyposis is inherited."] * 12)
    [res] = tagger.tag_texts([text])
    assert res["windows"] > 3
    assert all(text[e["start"] : e["end"]] == e["text"] for e in res["entities"])
    starts = [(e["start"], e["end"]) for e in res["entities"]]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)  # overlaps of windows merged
    assert tagger.tag_texts([""])[0]["entities"] == []


@pytest.mark.slow
def test_predict_endpoint_batches_concurrent_requests(tokcls_run, tiny_model):
    import asyncio

    import httpx

    from medner.inference.token_tagger import TokenTagger
    from medner.serve.api import create_app

    tagger = TokenTagger.load(tokcls_run / "adapter", tiny_model, batch_size=16)
    app = create_app("http://127.0.0.1:9/v1", "ner", tagger=tagger)
    texts = [f"Patient {i} has hereditary breast cancer and asthma." for i in range(24)]

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            health = await c.get("/health")
            outs = await asyncio.gather(*(c.post("/predict", json={"text": t, "corpus": "ncbi-disease"}) for t in texts))
            wrong = await c.post("/predict", json={"text": "x", "corpus": "cmedqaner"})
            return health, outs, wrong

    health, outs, wrong = asyncio.run(main())
    assert health.status_code == 200 and health.json()["tokcls"]["corpus"] == "ncbi-disease"
    assert all(o.status_code == 200 for o in outs)
    for t, o in zip(texts, outs):
        body = o.json()
        assert body["text"] == t and all(t[e["start"] : e["end"]] == e["text"] for e in body["entities"])
    # concurrent requests share forward batches: fewer model calls than requests
    assert 1 <= app.state.predict_batcher.batches < len(texts)
    assert wrong.status_code == 422 and "ncbi-disease" in wrong.json()["detail"]
