"""Chat-style extraction without a model: the instruction data and the chat endpoint's pure parts."""

import json
import random

import pytest

from bench.chat import UNTRAINED
from medner.data.records import convert
from medner.data.registry import get_corpus, load_registry
from medner.inference.generation import predict, resolve_task
from medner.inference.runrecord import SHIPPED, decode_types, decode_wider, read_record
from medner.inference.settings import InferenceSettings
from medner.prompts.contract import task_for
from medner.prompts.instructions import DEFAULT_MIX, load_pool, type_counts
from medner.prompts.pairs import record_to_pairs
from medner.serve.chat import ChatError, answer_content, ground, normalise, plan_chat, stream_events, text_message
from medner.serve.chat import completion as chat_completion
from medner.tokenizer import load_tokenizer, token_counter


def test_pool_has_30_phrasings_per_language_and_a_disjoint_heldout_part():
    pool = load_pool()
    for lang in ("en", "zh"):
        assert len(pool.phrasings[lang]["train"]) >= 30
        assert pool.phrasings[lang]["heldout"]
        assert not set(pool.phrasings[lang]["train"]) & set(pool.phrasings[lang]["heldout"])


@pytest.mark.parametrize("name", ["bc5cdr", "cmedqaner"])
def test_chat_pairs_answer_only_the_asked_types_and_never_use_heldout_phrasings(name):
    corpus = get_corpus(name)
    pool = load_pool()
    heldout = [p.split("{")[0] for lang in ("en", "zh") for p in pool.phrasings[lang]["heldout"] if p.split("{")[0]]
    rng = random.Random(0)
    count = token_counter()
    styles = set()
    for rec in convert(corpus, "train")[:120]:
        canonical = {p["id"]: p for p in record_to_pairs(rec, corpus, count, 256, "compact-v1")}
        for p in record_to_pairs(rec, corpus, count, 256, "compact-v1", rng=rng, mix=DEFAULT_MIX):
            styles.add(p["style"])
            full = json.loads(canonical[p["id"]]["completion"][0]["content"])["entities"]
            got = json.loads(p["completion"][0]["content"])["entities"]
            # the answer is the full answer restricted to some types, in the same order
            kinds = {e["type"] for e in got}
            assert got == [e for e in full if e["type"] in kinds] or not got
            assert all(e["type"] in corpus.label_names for e in got)
            user = "\n".join(m["content"] for m in p["prompt"] if m["role"] == "user")
            assert not any(user.startswith(h) for h in heldout if len(h) > 12)
    assert styles == set(DEFAULT_MIX)


def test_single_type_pairs_ask_one_type_and_half_the_time_one_the_window_holds():
    corpus = get_corpus("cmedqaner")
    rng = random.Random(0)
    count = token_counter()
    asked_present = answered = total = 0
    for rec in convert(corpus, "train")[:150]:
        canonical = {p["id"]: p for p in record_to_pairs(rec, corpus, count, 256, "compact-v1")}
        for p in record_to_pairs(rec, corpus, count, 256, "compact-v1", rng=rng, mix={"single_type": 1.0}):
            full = json.loads(canonical[p["id"]]["completion"][0]["content"])["entities"]
            got = json.loads(p["completion"][0]["content"])["entities"]
            assert p["style"] == "single_type" and len({e["type"] for e in got}) <= 1
            kind = got[0]["type"] if got else None
            assert got == [e for e in full if e["type"] == kind] or not got
            total += 1
            present = {e["type"] for e in full}
            asked_present += bool(got)
            answered += bool(present)
    # a uniform draw over 11 types would rarely ask for a present one; here about half the windows with
    # entities get a non-empty answer
    assert 0.35 * answered <= asked_present <= 0.9 * answered, (asked_present, answered, total)


def test_rare_type_pairs_ask_one_present_type_rare_ones_more_often_and_negative_pairs_only_absent_ones():
    corpus = get_corpus("cmedqaner")
    counts = type_counts(corpus)
    rare = set(sorted(counts, key=counts.get)[:5])  # department, time, feature, physiology, test
    rng = random.Random(0)
    count = token_counter()
    asked: list[str] = []
    negatives = with_entities = checked = 0
    for rec in convert(corpus, "train")[:200]:
        canonical = {p["id"]: p for p in record_to_pairs(rec, corpus, count, 256, "compact-v1")}
        for p in record_to_pairs(rec, corpus, count, 256, "compact-v1", rng=rng, mix={"rare_type": 1.0, "negative": 1.0}):
            full = json.loads(canonical[p["id"]]["completion"][0]["content"])["entities"]
            got = json.loads(p["completion"][0]["content"])["entities"]
            if p["style"] == "negative":
                negatives += 1
                with_entities += bool(full)
                assert got == []
                first = p["prompt"][0]
                if first["role"] == "system" and first["content"].startswith("实体类型："):  # the canonical line, fewer types
                    checked += 1
                    assert not any(f"{e['type']}（" in first["content"] for e in full), first["content"]
            else:
                assert p["style"] == "rare_type" and full and got
                kinds = {e["type"] for e in got}
                assert len(kinds) == 1 and got == [e for e in full if e["type"] in kinds]
                asked.append(got[0]["type"])
    assert negatives > 50 and with_entities > 0.8 * negatives and checked > 10
    # the five rarest types hold 12% of the mentions; asked alone they are about a third of the queries
    share_of_mentions = sum(counts[t] for t in rare) / sum(counts.values())
    assert sum(t in rare for t in asked) / len(asked) > 2 * share_of_mentions, (asked, share_of_mentions)


def test_messages_are_checked_and_the_text_message_is_the_longest_user_turn():
    with pytest.raises(ChatError):
        normalise([])
    with pytest.raises(ChatError):
        normalise([{"role": "assistant", "content": "hi"}])
    msgs = normalise(
        [
            {"role": "user", "content": [{"type": "text", "text": "Which diseases? Familial adenomatous polyposis in a patient."}]},
            {"role": "assistant", "content": '{"entities":[]}'},
            {"role": "user", "content": "Only colon ones."},
        ]
    )
    assert text_message(msgs) == 0


def test_grounded_chat_answer_offsets_slice_the_message_and_stream_replays_it():
    msgs = normalise([{"role": "user", "content": "Which diseases are mentioned? Familial adenomatous polyposis was seen."}])
    plan = plan_chat(msgs, ["Disease"], 256, 4000)
    assert plan["message"] == 0 and "Familial" in plan["grammar"]
    raw = '{"entities":[{"text":"Familial adenomatous polyposis","type":"Disease"}]}'
    medner = ground(plan, raw, "stop", ["Disease"])
    (e,) = medner["entities"]
    assert msgs[e["message"]]["content"][e["start"] : e["end"]] == e["text"] and medner["status"] == "ok"
    done = chat_completion("ner", raw, "stop", {}, medner)
    events = list(stream_events(done, piece_chars=7))
    assert events[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(ev[len("data: ") :]) for ev in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == raw
    assert chunks[-1]["medner"] == medner and chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_free_form_instruction_wraps_each_window_and_labels_narrow_a_corpus():
    from medner.prompts.contract import task_for

    corpus = get_corpus("bc5cdr")
    task = task_for(corpus, ["Chemical"], instruction="Which drugs are mentioned in: {text}")
    assert task.label_names == ["Chemical"]
    assert task.messages("Aspirin helps.") == [{"role": "user", "content": "Which drugs are mentioned in: Aspirin helps."}]
    assert task_for(corpus, instruction="List the chemicals.").messages("x")[0]["content"] == "List the chemicals.\nx"
    with pytest.raises(ValueError):
        task_for(corpus, instruction="  ")


def test_a_subset_is_decoded_with_every_trained_type_and_answered_with_the_asked_ones():
    # a grammar holding only the asked type would force "aspirin" into Disease; with the trained types it is
    # written as a Chemical and left out of the answer
    msgs = normalise([{"role": "user", "content": "Only the diseases, please: aspirin caused asthma."}])
    plan = plan_chat(msgs, ["Disease"], None, 4000, known=["Chemical", "Disease"])
    assert plan["types"] == ["Chemical", "Disease"] and "Chemical" in plan["grammar"].split("type ::=")[1].splitlines()[0]
    raw = '{"entities":[{"text":"aspirin","type":"Chemical"},{"text":"asthma","type":"Disease"}]}'
    medner = ground(plan, raw, "stop", ["Disease"])
    assert [e["text"] for e in medner["entities"]] == ["asthma"] and medner["other_types"] == 1
    assert answer_content(raw, medner) == '{"entities":[{"text":"asthma","type":"Disease"}]}'
    assert answer_content(raw, ground(plan, raw, "stop", ["Chemical", "Disease"])) == raw  # nothing left out: as written
    # a type never trained: the asked ones alone, so the model writes the asked name (zero-shot)
    assert decode_types(["Gene"], ["Chemical", "Disease"]) == ["Gene"]
    assert decode_types(["Disease", "Gene"], ["Chemical", "Disease"]) == ["Disease", "Gene"]


def test_an_extract_subset_keeps_the_asked_types_of_a_wider_decoding():
    import dataclasses

    from medner.prompts.contract import keep_asked, task_for

    task = dataclasses.replace(task_for(get_corpus("bc5cdr"), ["Chemical"]), decode_labels=("Chemical", "Disease"))
    assert task.label_names == ["Chemical"] and task.decode_names == ["Chemical", "Disease"]
    assert "Disease" not in task.messages("Aspirin caused asthma.")[0]["content"]  # the prompt asks for the subset only
    res = keep_asked({"entities": [{"text": "aspirin", "type": "Chemical"}, {"text": "asthma", "type": "Disease"}]}, task)
    assert res["entities"] == [{"text": "aspirin", "type": "Chemical"}] and res["other_types"] == 1


def test_eval_of_a_model_of_several_corpora_decodes_every_trained_type_and_scores_the_corpus_ones():
    # the shipped chat adapter knows 13 types: asked for NCBI-disease's one, a grammar of Disease alone would force
    # its "cycloheximide" (a Chemical) into a Disease (measured: 7 such false positives on 256 test records)
    shipped = str(SHIPPED / "chat-qwen2.5-0.5b")
    ncbi, bc5cdr = get_corpus("ncbi-disease"), get_corpus("bc5cdr")
    task = resolve_task(InferenceSettings(backend="vllm", adapter=shipped), ncbi, None)
    assert task.label_names == ["Disease"] and len(task.decode_names) == 13 and "Chemical" in task.decode_names
    single = {"corpora": {"bc5cdr": {"labels": ["Chemical", "Disease"]}}}
    assert decode_wider(task_for(bc5cdr), single).decode_labels is None  # a single-corpus model: as asked
    assert decode_wider(task_for(bc5cdr), None).decode_labels is None  # no record: as asked
    assert decode_wider(task_for(bc5cdr), read_record(shipped)).decode_names[:2] == ["Disease", "Chemical"]

    class Replies:  # the replies a model of several corpora writes; planning and parsing are the contract's
        name, tokenizer, max_model_len, chunk_records = "fixed", load_tokenizer(), 4096, 8

        def generate(self, plans, constrained):
            assert all("Chemical" in p["grammar"] for p in plans)  # the grammar admits the trained types
            raw = '{"entities":[{"text":"cycloheximide","type":"Chemical"},{"text":"ataxia","type":"Disease"}]}'
            return [{"raw": raw, "finish_reason": "stop"} for _ in plans]

    rec = next(r for r in convert(ncbi, "test") if "ataxia" in r["text"] and "cycloheximide" not in r["text"])
    rec = {**rec, "text": rec["text"] + " cycloheximide"}
    rec["token_offsets"] = rec["token_offsets"] + [(len(rec["text"]) - 13, len(rec["text"]))]
    out: list[dict] = []
    predict(Replies(), [rec], task, out.append, warm_up=False, grounded="ordered")
    assert out[0]["status"] == "ok" and out[0]["other_types"] == 1
    assert [(e["text"], e["type"]) for e in out[0]["entities"]] == [("ataxia", "Disease")]


def test_a_chat_text_longer_than_one_grammar_allows_is_refused_with_413():
    msgs = normalise([{"role": "user", "content": "fever " * 1100}])
    with pytest.raises(ChatError) as e:
        plan_chat(msgs, ["Disease"], None, 100_000)
    assert e.value.status == 413 and "/v1/extract" in str(e.value)


def test_the_zero_shot_type_names_of_the_chat_bench_are_trained_nowhere():
    # bench.chat's `untrained` variant measures types the model never saw: no corpus may name them, as a label,
    # a display name or a synonym in any language
    trained = set()
    for c in load_registry().values():
        for lab in c.labels:
            trained |= {lab.name.lower(), lab.display.lower()} | {w.lower() for _, ws in lab.synonyms for w in ws}
    assert set(UNTRAINED) == {lab.name for c in load_registry().values() for lab in c.labels}
    assert not {n.lower() for n in UNTRAINED.values()} & trained
