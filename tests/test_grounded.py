"""Grounded decoding (prompts/grounded.py): the grammar admits exactly the answers whose mentions are spans
of the input on its token boundaries (in order, in ordered mode), and every reply it admits fits the budget."""

import json
import re

import pytest

from medner.data.ground import simple_token_offsets
from medner.prompts.grounded import grounded_grammar, grounded_reply_bound

TEXT = "Clustering of missense mutations in the ataxia-telangiectasia gene (ATM) in ataxia-telangiectasia."


@pytest.fixture(scope="module")
def compiler():
    import xgrammar as xgr

    from medner.tokenizer import load_tokenizer

    tok = load_tokenizer()
    return xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tok, vocab_size=151936))


def admits(compiler, grammar: str, reply: str) -> bool:
    import xgrammar as xgr

    m = xgr.GrammarMatcher(compiler.compile_grammar(grammar))
    return m.accept_string(reply) and m.accept_token(151645)  # the reply, then <|im_end|>: a complete answer


def answer(*mentions: str, type_: str = "Disease") -> str:
    return json.dumps({"entities": [{"text": t, "type": type_} for t in mentions]}, ensure_ascii=False, separators=(",", ":"))


def offsets(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]", text)]


@pytest.mark.parametrize("mode", ["ordered", "substring"])
def test_spans_on_token_boundaries_only(compiler, mode):
    g = grounded_grammar(TEXT, offsets(TEXT), ["Disease"], mode, max_items=8)
    assert admits(compiler, g, answer())
    assert admits(compiler, g, answer("ataxia-telangiectasia"))
    assert admits(compiler, g, answer("missense mutations in the ataxia"))  # spaces and hyphens copied from the text
    assert admits(compiler, g, answer("(ATM)"))
    assert not admits(compiler, g, answer("ATAXIA"))  # re-cased
    assert not admits(compiler, g, answer("telangiectasia-ataxia"))  # not in the text
    assert not admits(compiler, g, answer("tion"))  # inside a token
    assert not admits(compiler, g, answer("ataxia telangiectasia"))  # a space where the text has a hyphen
    assert not admits(compiler, g, answer("ataxia-telangiectasia", type_="Chemical"))  # the label enum stays


def test_ordered_mode_is_order_of_appearance_without_overlap_or_loops(compiler):
    g = grounded_grammar(TEXT, offsets(TEXT), ["Disease"], "ordered")
    assert admits(compiler, g, answer("ataxia-telangiectasia", "ATM", "ataxia-telangiectasia"))  # the text has it twice
    assert not admits(compiler, g, answer("ataxia-telangiectasia", "ataxia-telangiectasia", "ataxia-telangiectasia"))  # a loop
    assert not admits(compiler, g, answer("ATM", "missense"))  # out of order
    assert not admits(compiler, g, answer("ataxia-telangiectasia gene", "gene"))  # overlapping
    s = grounded_grammar(TEXT, offsets(TEXT), ["Disease"], "substring", max_items=4)
    assert admits(compiler, s, answer("ATM", "missense"))  # substring mode: any order...
    assert not admits(compiler, s, answer("ATM", "ATM", "ATM", "ATM", "ATM"))  # ...within max_items


def test_mention_length_cap_is_exact(compiler):
    g = grounded_grammar(TEXT, offsets(TEXT), ["Disease"], "ordered", max_mention_tokens=3)
    assert admits(compiler, g, answer("ataxia-telangiectasia"))  # 3 tokens: ataxia - telangiectasia
    assert not admits(compiler, g, answer("ataxia-telangiectasia gene"))  # 4


def test_json_escapes_and_chinese(compiler):
    text = 'He said "fever" \\ then 头痛'
    offs = simple_token_offsets(text, "en")
    g = grounded_grammar(text, offs, ["symptom"], "ordered")
    assert admits(compiler, g, answer('"fever"', type_="symptom"))  # written as \"fever\" in the JSON
    zh = "宝宝出水痘了，需要吃阿昔洛韦吗？"
    gz = grounded_grammar(zh, simple_token_offsets(zh, "zh"), ["disease", "drug"], "ordered")
    assert admits(compiler, gz, '{"entities":[{"text":"水痘","type":"disease"},{"text":"阿昔洛韦","type":"drug"}]}')
    assert not admits(compiler, gz, '{"entities":[{"text":"水痘病","type":"disease"}]}')


def test_no_tokens_admits_only_the_empty_answer(compiler):
    g = grounded_grammar("", [], ["Disease"], "ordered")
    assert admits(compiler, g, answer()) and not admits(compiler, g, answer("x"))


def test_bad_mode_and_labels():
    with pytest.raises(ValueError, match="grounded mode must be one of ordered, substring"):
        grounded_grammar(TEXT, offsets(TEXT), ["Disease"], "fuzzy")
    with pytest.raises(ValueError, match="at least one label"):
        grounded_grammar(TEXT, offsets(TEXT), [], "ordered")


@pytest.mark.parametrize("mode", ["ordered", "substring"])
def test_reply_bound_covers_the_longest_admitted_reply(compiler, mode):
    """The budget is never what ends a grounded reply: the longest reply the grammar admits fits it."""
    from medner.tokenizer import load_tokenizer

    tok = load_tokenizer()
    text = 'Pain "in" the chest\\back, and 头痛.'
    offs = simple_token_offsets(text, "en")
    labels = ["Disease", "symptom"]
    if mode == "ordered":  # the most mentions: one per token, each with the longest label
        longest = answer(*[text[a:b] for a, b in offs], type_="symptom")
        items = None
    else:  # the most characters: max_items copies of the whole text
        items = 4
        longest = answer(*[text[offs[0][0] : offs[-1][1]]] * items, type_="symptom")
    g = grounded_grammar(text, offs, labels, mode, max_items=items)
    assert admits(compiler, g, longest)
    bound = grounded_reply_bound(text, offs, labels, mode, max_items=items)
    assert len(longest) <= bound and len(tok(longest)["input_ids"]) <= bound


def test_plans_carry_the_grammar_and_a_schema_that_admits_its_replies():
    import jsonschema

    from medner.data.registry import get_corpus
    from medner.prompts.contract import grounded_mode, plan_requests, task_for
    from medner.tokenizer import load_tokenizer

    tok = load_tokenizer()
    task = task_for(get_corpus("ncbi-disease"))
    offs = offsets(TEXT)
    (plan,) = plan_requests(TEXT, offs, task, 256, tok, 8192, grounded="ordered")
    assert plan["grammar"].startswith("root ::=")
    every_token = json.loads(answer(*[TEXT[a:b] for a, b in offs]))  # the grammar's most mentions
    whole = json.loads(answer(TEXT[offs[0][0] : offs[-1][1]]))  # and its longest mention
    for reply in (every_token, whole):
        jsonschema.validate(reply, plan["schema"])
    (plain,) = plan_requests(TEXT, offs, task, 256, tok, 8192)
    assert plain["grammar"] is None
    assert grounded_mode(True) == "ordered" and grounded_mode("false") is None and grounded_mode("substring") == "substring"
    with pytest.raises(ValueError, match="grounded must be"):
        grounded_mode("maybe")
    with pytest.raises(ValueError, match="needs constrained=true"):
        plan_requests(TEXT, offs, task, 256, tok, 8192, constrained=False, grounded="ordered")


def test_grounded_ordered_is_the_default_wherever_it_applies():
    """One default across the entry points (it measured at least as accurate as the plain schema at the same speed,
    BENCHMARKS.md): eval runs, SFT dev evaluation, `medner extract`, `/v1/extract`, the Python Extractor, the page."""
    import inspect

    import yaml
    from conftest import ROOT

    from medner.cli import build_parser
    from medner.eval.run import EvalSettings
    from medner.prompts.contract import resolve_grounded
    from medner.serve.api import ExtractRequest
    from medner.serve.extractor import Extractor
    from medner.sft.train import SFTSettings

    assert resolve_grounded(None, True, "server") == resolve_grounded(None, True, "vllm") == resolve_grounded(None, True, "hf") == "ordered"
    assert resolve_grounded(None, False, "server") is None  # free decoding is never grounded by the default
    assert resolve_grounded(None, True, "tokcls") is None  # token classification writes spans anyway
    assert resolve_grounded(False, True) is None and resolve_grounded("substring", True) == "substring"
    with pytest.raises(ValueError, match="needs constrained=true"):
        resolve_grounded(True, False)  # asked for explicitly with free decoding: refused, not ignored
    assert EvalSettings.grounded is None and SFTSettings.dev_grounded is None
    assert yaml.safe_load((ROOT / "eval/configs/default.yaml").read_text())["grounded"] is None
    for cfg in (ROOT / "sft/configs").glob("*.yaml"):
        if cfg.name.startswith("tokcls-"):  # token classification has no decoding constraint
            continue
        assert yaml.safe_load(cfg.read_text())["dev_grounded"] is None, cfg
    parse = lambda *a: build_parser().parse_args(["extract", "text", *a])  # noqa: E731
    assert parse().grounded == "ordered" and parse("--grounded").grounded == "ordered"
    assert parse("--grounded", "substring").grounded == "substring" and parse("--no-grounded").grounded is None
    assert ExtractRequest(text="x").grounded is True
    assert inspect.signature(Extractor).parameters["grounded"].default is True
    assert re.search(r'<input type="checkbox" id="grounded" checked>', (ROOT / "serve/static/index.html").read_text())


def test_sft_refuses_grounded_dev_generation_without_the_constraint(tmp_path):
    from conftest import ROOT, run_medner

    proc = run_medner(
        "sft",
        "train",
        "--config",
        str(ROOT / "sft/configs/tiny.yaml"),
        f"model={tmp_path / 'absent'}",
        f"output_dir={tmp_path / 'run'}",
        "dev_grounded=true",
        "dev_constrained=false",
    )
    err = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert proc.returncode == 1 and len(err) == 1 and "dev_grounded" in err[0] and "needs constrained=true" in err[0], proc.stderr[-1000:]


def _check_grounded_run(out) -> int:
    report = json.loads((out / "report.json").read_text())
    assert report["failures"]["ungrounded"]["count"] == 0 and report["failures"]["truncated"]["count"] == 0
    assert report["run"]["grounded"] == "ordered"
    preds = [json.loads(l) for l in (out / "predictions.jsonl").open()]
    ents = [(p, e) for p in preds for e in p["entities"]]
    assert all(p["text"][e["start"] : e["end"]] == e["text"] for p, e in ents)
    assert all(p["status"] == "ok" and not p["dropped"] for p in preds)
    return len(ents)


@pytest.mark.slow
def test_transformers_backend_writes_only_spans(tiny_model, tiny_adapter, tmp_path):
    """A random tiny model (it writes "DDDD..." under the plain schema) writes spans of the input only."""
    from conftest import ROOT, run_medner

    found = 0
    for corpus, adapter in (("ncbi-disease", [f"adapter={tiny_adapter}"]), ("cmedqaner", [])):
        out = tmp_path / corpus
        run_medner(
            "eval",
            "run",
            "--config",
            str(ROOT / "eval/configs/default.yaml"),
            "backend=hf",
            f"model={tiny_model}",
            *adapter,
            f"corpus={corpus}",
            "limit=8",
            "grounded=true",
            f"out={out}",
            "bootstrap=0",
            check=True,
        )
        found += _check_grounded_run(out)
    assert found > 0, "no entity predicted: nothing was checked"


def test_grounded_needs_constrained_in_one_line(tmp_path):
    from conftest import ROOT, run_medner

    proc = run_medner(
        "eval", "run", "--config", str(ROOT / "eval/configs/default.yaml"), "grounded=true", "constrained=false", f"out={tmp_path}"
    )
    err = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert proc.returncode == 1 and len(err) == 1 and "needs constrained=true" in err[0], proc.stderr[-1000:]


def test_a_raw_control_character_that_the_schema_constraint_admits_is_parsed():
    """xgrammar's JSON-schema grammar lets a raw TAB into a string (seen from a random adapter); the parser
    accepts what the constraint admits, so such a reply is not lost as invalid JSON."""
    from medner.prompts.contract import parse_reply
    from medner.prompts.schema import answer_schema

    text = "fever\tand cough"
    out = parse_reply(
        '{"entities":[{"text":"fever\tand","type":"Disease"}]}',
        "stop",
        text,
        [(0, 5), (6, 9), (10, 15)],
        answer_schema(["Disease"], text, 3),
    )
    assert out["status"] == "ok" and out["entities"][0]["text"] == "fever\tand"
