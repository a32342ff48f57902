"""Golden prompts and the answer schema (prompts/)."""

import json
from pathlib import Path

import jinja2
import jsonschema
import pytest

from medner.prompts.render import PROMPT_VERSION, build_messages, prompt_versions, template_hash
from medner.prompts.schema import answer_json, answer_schema, max_reply_tokens

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("version", ["v1", "compact-v1"])
@pytest.mark.parametrize(
    "corpus,text",
    [
        ("ncbi-disease", "Clustering of missense mutations in the ataxia-telangiectasia gene."),
        ("bc5cdr", "Lidocaine-induced cardiac asystole."),
        ("cmedqaner", "宝宝出水痘了，需要吃阿昔洛韦吗？"),
    ],
)
def test_golden_prompt(registry, corpus, text, version):
    c = registry[corpus]
    msgs = build_messages(text, c.labels, c.lang, version)
    path = GOLDEN / f"{version}-{corpus}.json"
    want = json.loads(path.read_text(encoding="utf-8"))
    assert msgs == want, f"rendered prompt changed; if intended, add a new prompt version and regenerate {path}"


def test_shipped_prompt_versions_and_default():
    assert prompt_versions() == ["compact-v1", "v1"] and PROMPT_VERSION == "v1"
    assert template_hash("v1") != template_hash("compact-v1")
    with pytest.raises(ValueError, match="unknown prompt version 'v7'; this medner has compact-v1, v1"):
        template_hash("v7")


def test_compact_prompt_is_a_fraction_of_the_descriptive_one(registry):
    """The point of compact-v1: the fixed part of every training example shrinks (NCBI 121 -> 25 tokens
    with the chat template; cMedQANER 296 -> 73), while the label names stay in the prompt."""
    from medner.tokenizer import load_tokenizer

    tok = load_tokenizer()
    for corpus, most in (("ncbi-disease", 30), ("cmedqaner", 80)):
        c = registry[corpus]
        n = {
            v: len(
                tok(tok.apply_chat_template(build_messages("x", c.labels, c.lang, v), tokenize=False, add_generation_prompt=True))[
                    "input_ids"
                ]
            )
            for v in ("v1", "compact-v1")
        }
        assert n["compact-v1"] <= most and n["compact-v1"] * 3 < n["v1"], n
        assert all(lab.name in build_messages("x", c.labels, c.lang, "compact-v1")[0]["content"] for lab in c.labels)


def test_strict_undefined_fails_loudly(tmp_path, monkeypatch):
    import medner.prompts.render as render

    (tmp_path / "v9").mkdir()
    (tmp_path / "v9" / "en.system.jinja").write_text("{{ nonexistent }}")
    (tmp_path / "v9" / "en.user.jinja").write_text("{{ text }}")
    monkeypatch.setattr(render, "TEMPLATES", tmp_path)
    with pytest.raises(jinja2.UndefinedError):
        render.build_messages("x", [], "en", "v9")


def test_missing_template_version():
    with pytest.raises(ValueError, match="no prompt template"):
        build_messages("x", [], "en", "v999")


def test_schema_shape_enum_and_no_extras():
    s = answer_schema(["Chemical", "Disease"])
    v = jsonschema.Draft202012Validator(s)
    assert v.is_valid({"entities": [{"text": "aspirin", "type": "Chemical"}]})
    assert not v.is_valid({"entities": [{"text": "aspirin", "type": "Drug"}]})
    assert not v.is_valid({"entities": [{"text": "", "type": "Chemical"}]})
    assert not v.is_valid({"entities": [{"text": "a", "type": "Chemical", "start": 0}]})
    assert not v.is_valid({"entities": [], "extra": 1})
    assert not v.is_valid({})


def test_schema_bounded_by_input():
    s = answer_schema(["D"], text="flu and cold", n_tokens=3)
    ent = s["properties"]["entities"]
    assert ent["maxItems"] == 2 and ent["items"]["properties"]["text"]["maxLength"] == 12  # stepped down
    long = answer_schema(["D"], text="x" * 500, n_tokens=100)["properties"]["entities"]
    assert long["maxItems"] == 64 and long["items"]["properties"]["text"]["maxLength"] == 96
    mid = answer_schema(["D"], text="x" * 40, n_tokens=9)["properties"]["entities"]
    assert mid["maxItems"] == 8 and mid["items"]["properties"]["text"]["maxLength"] == 32
    assert answer_schema(["D"], text="ab", n_tokens=1)["properties"]["entities"]["items"]["properties"]["text"]["maxLength"] == 2
    assert not jsonschema.Draft202012Validator(s).is_valid({"entities": [{"text": "x" * 13, "type": "D"}]})
    assert not jsonschema.Draft202012Validator(s).is_valid({"entities": [{"text": "x", "type": "D"}] * 3})
    from medner.tokenizer import token_counter

    worst = answer_json([{"text": "flu and cold", "type": "D"}] * 2)  # the longest reply the schema allows
    assert max_reply_tokens(s, ["D"]) >= token_counter()(worst)
    assert answer_schema(["D"], text="")["properties"]["entities"]["maxItems"] == 0


def test_answer_json_is_compact_ordered_and_keeps_repeats():
    ents = [{"text": "flu", "type": "D", "start": 0, "end": 3}, {"text": "flu", "type": "D", "start": 8, "end": 11}]
    assert answer_json(ents) == '{"entities":[{"text":"flu","type":"D"},{"text":"flu","type":"D"}]}'
    assert answer_json([]) == '{"entities":[]}'


def test_empty_label_set_rejected():
    with pytest.raises(ValueError):
        answer_schema([])
