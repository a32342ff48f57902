"""Chat-style instruction data: the ways users ask for entities, drawn per training window.

A canonical training pair (``prompts/pairs.py``: compact system line + the text) becomes, by a seeded draw,
one of these styles; the answer stays the contract's compact JSON, mentions in order, restricted to the
types the query asks for, with the corpus's own type names whatever words the query used:

* ``canonical``    the pair unchanged, so every figure recorded on the canonical prompt stays comparable;
* ``instruction``  a free-form request from the phrasing pool (English or Chinese, text before or after the
                   instruction, quoted or not), all of the corpus's types, named or in everyday words;
* ``subset``       a random non-empty subset of the types (free-form or the canonical system line), also
                   subsets whose types do not occur in the window (answer ``{"entities":[]}``);
* ``single_type``  one type alone, half the time one that occurs in the window: with many types a uniform
                   subset is rarely one type, and one present; a model trained so answered a one-type
                   query mostly empty (cMedQANER, BENCHMARKS.md);
* ``rare_type``    one type alone that occurs in the window, the corpus's rarer types drawn more often (weights
                   inverse to the type's mention count in the train split): under ``single_type`` a rare type is
                   mostly asked where it is absent, and a model trained so answered it empty where present;
* ``negative``     only types that do not occur in the window (answer ``{"entities":[]}``): a random subset
                   rarely misses every present type, and a model trained so tagged other types when asked
                   for absent ones;
* ``synonyms``     the types in words users write for them (data/corpora.yaml ``synonyms``);
* ``descriptions`` each type with its one-line description;
* ``multiturn``    the text and a first answer, then a follow-up turn restricting the types.

The phrasing pool lives in ``prompts/templates/<version>/instructions.yaml``; its ``heldout`` part is never
drawn for training and serves only for evaluation (:func:`render_instruction` with ``part="heldout"``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
from collections.abc import Sequence

import yaml

from medner.data.records import convert
from medner.data.registry import Corpus, Label
from medner.prompts.render import TEMPLATES, build_messages
from medner.prompts.schema import answer_json

INSTRUCTION_VERSION = "chat-v1"
STYLES = ("canonical", "instruction", "subset", "single_type", "rare_type", "negative", "synonyms", "descriptions", "multiturn")
# the default mix of styles (weights, normalised): a third canonical keeps the recorded prompt's quality
DEFAULT_MIX = {"canonical": 0.3, "instruction": 0.2, "subset": 0.2, "synonyms": 0.1, "descriptions": 0.05, "multiturn": 0.15}
# share of free-form requests whose instruction is in the other language than the text (cross-language use)
CROSS_LANGUAGE = 0.2
# share of free-form requests sent with no system message (what a plain chat client sends)
NO_SYSTEM = 0.5
# type forms in free-form requests: corpus name ("Disease"), everyday word ("diseases"), a random synonym
TYPE_FORMS = ("name", "word", "synonym")


@dataclasses.dataclass(frozen=True)
class Pool:
    version: str
    phrasings: dict[str, dict[str, tuple[str, ...]]]  # lang -> part (train | heldout) -> templates
    followups: dict[str, tuple[str, ...]]
    systems: dict[str, tuple[str, ...]]
    sha256: str


@functools.lru_cache(maxsize=4)
def load_pool(version: str = INSTRUCTION_VERSION) -> Pool:
    """The phrasing pool of one instruction version, checked: every phrasing names {types} and {text} once."""
    path = TEMPLATES / version / "instructions.yaml"
    if not path.is_file():
        raise ValueError(f"no instruction pool for version {version!r} ({path})")
    raw = path.read_bytes()
    data = yaml.safe_load(raw.decode("utf-8"))
    phrasings = {lang: {part: tuple(data[lang][part]) for part in ("train", "heldout")} for lang in ("en", "zh")}
    for lang, parts in phrasings.items():
        for part, items in parts.items():
            for i, p in enumerate(items):
                if p.count("{text}") != 1 or p.count("{types}") != 1:
                    raise ValueError(f"{path}: {lang}.{part}[{i}] must name {{text}} and {{types}} once each: {p!r}")
        if set(parts["train"]) & set(parts["heldout"]):
            raise ValueError(f"{path}: {lang}: a phrasing is both trained and held out")
    followups = {lang: tuple(data["followups"][lang]) for lang in ("en", "zh")}
    systems = {lang: tuple(data["systems"][lang]) for lang in ("en", "zh")}
    return Pool(version, phrasings, followups, systems, hashlib.sha256(raw).hexdigest())


def _plural(word: str) -> str:
    if word.endswith(("s", "x", "sh", "ch")):
        return word + "es"
    if word.endswith("y") and not word.endswith(("ay", "ey", "oy")):
        return word[:-1] + "ies"
    return word + "s"


def type_words(labels: Sequence[Label], lang: str, form: str, rng: random.Random | None = None, describe: bool = False) -> str:
    """The requested types as a user writes them in ``lang``: names, everyday words or synonyms, optionally described."""
    out = []
    for lab in labels:
        if form == "name":
            w = lab.name
        elif form == "word":
            w = lab.words(lang)[0]
        elif form == "synonym":
            w = (rng or random.Random(0)).choice(lab.words(lang))
        else:
            raise ValueError(f"unknown type form {form!r} (one of {', '.join(TYPE_FORMS)})")
        if lang == "en" and form != "name" and not describe:
            w = _plural(w)
        if describe and lab.description:
            w = f"{w} ({lab.description})" if lang == "en" else f"{w}（{lab.description}）"
        out.append(w)
    if len(out) == 1:
        return out[0]
    if lang == "zh":
        return "、".join(out[:-1]) + "和" + out[-1]
    return ", ".join(out[:-1]) + " and " + out[-1]


def render_instruction(
    text: str,
    labels: Sequence[Label],
    lang: str,
    index: int,
    part: str = "train",
    form: str = "word",
    system: str | None = None,
    describe: bool = False,
    rng: random.Random | None = None,
    version: str = INSTRUCTION_VERSION,
) -> list[dict]:
    """Messages of one free-form request: phrasing ``index`` of the pool's ``part`` in ``lang`` around ``text``."""
    phrasing = load_pool(version).phrasings[lang][part][index]
    user = phrasing.replace("{types}", type_words(labels, lang, form, rng, describe)).replace("{text}", text)
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": user}]


def _restrict(entities: Sequence[dict], names: set[str]) -> list[dict]:
    return [e for e in entities if e["type"] in names]


def _subset(labels: Sequence[Label], rng: random.Random) -> list[Label]:
    k = rng.randint(1, len(labels))
    picked = set(rng.sample(range(len(labels)), k))
    return [lab for i, lab in enumerate(labels) if i in picked]  # the corpus's order, as the canonical line


def _single_type(labels: Sequence[Label], entities: Sequence[dict], rng: random.Random) -> list[Label]:
    present = [lab for lab in labels if any(e["type"] == lab.name for e in entities)]
    return [rng.choice(present if present and rng.random() < 0.5 else labels)]


_TYPE_COUNTS: dict[str, dict[str, int]] = {}


def type_counts(corpus: Corpus) -> dict[str, int]:
    """Mentions per type in the corpus's train split (each type at least 1), read once per corpus."""
    if corpus.name not in _TYPE_COUNTS:
        counts = dict.fromkeys(corpus.label_names, 1)
        for rec in convert(corpus, "train"):
            for e in rec["entities"]:
                counts[e["type"]] = counts.get(e["type"], 0) + 1
        _TYPE_COUNTS[corpus.name] = counts
    return _TYPE_COUNTS[corpus.name]


def _rare_type(labels: Sequence[Label], entities: Sequence[dict], counts: dict[str, int], rng: random.Random) -> list[Label]:
    present = [lab for lab in labels if any(e["type"] == lab.name for e in entities)]
    if not present:
        return [rng.choice(labels)]
    return rng.choices(present, weights=[1.0 / counts[lab.name] for lab in present])


def _negative(labels: Sequence[Label], entities: Sequence[dict], rng: random.Random) -> list[Label]:
    absent = [lab for lab in labels if not any(e["type"] == lab.name for e in entities)]
    return _subset(absent, rng) if absent else [rng.choice(labels)]


def chat_pair(
    pair: dict,
    text: str,
    entities: Sequence[dict],
    corpus: Corpus,
    rng: random.Random,
    mix: dict[str, float] | None = None,
    version: str = INSTRUCTION_VERSION,
    prompt_version: str = "compact-v1",
) -> dict:
    """One training pair in a drawn style. ``pair`` is the canonical pair of the window ``text`` whose
    ``entities`` (window offsets, in order) it answers; the result adds ``style``."""
    mix = mix or DEFAULT_MIX
    style = rng.choices(list(mix), weights=list(mix.values()))[0]
    if style == "canonical":
        return {**pair, "style": style}
    pool = load_pool(version)
    labels = list(corpus.labels)
    lang = corpus.lang if rng.random() >= CROSS_LANGUAGE else ("zh" if corpus.lang == "en" else "en")
    system = None if rng.random() < NO_SYSTEM else rng.choice(pool.systems[lang])
    index = rng.randrange(len(pool.phrasings[lang]["train"]))
    form = rng.choice(TYPE_FORMS)
    describe = False
    if style in ("subset", "single_type", "rare_type", "negative"):
        if style == "subset":
            labels = _subset(labels, rng)
        elif style == "single_type":
            labels = _single_type(labels, entities, rng)
        elif style == "rare_type":
            labels = _rare_type(labels, entities, type_counts(corpus), rng)
        else:
            labels = _negative(labels, entities, rng)
        if rng.random() < 0.5:  # the canonical system line with fewer types: what /v1/extract's `labels` sends
            msgs = build_messages(text, labels, corpus.lang, prompt_version)
            return _pair(pair, style, msgs, _restrict(entities, {lab.name for lab in labels}))
    elif style == "synonyms":
        labels, form = (_subset(labels, rng) if rng.random() < 0.5 else labels), "synonym"
    elif style == "descriptions":
        describe = True
    msgs = render_instruction(text, labels, lang, index, "train", form, system, describe, rng, version)
    answer = _restrict(entities, {lab.name for lab in labels})
    if style != "multiturn":
        return _pair(pair, style, msgs, answer)
    follow = _subset(list(corpus.labels), rng)
    words = type_words(follow, lang, rng.choice(TYPE_FORMS), rng)
    msgs = msgs + [
        {"role": "assistant", "content": answer_json(answer)},
        {"role": "user", "content": rng.choice(pool.followups[lang]).replace("{types}", words)},
    ]
    return _pair(pair, style, msgs, _restrict(entities, {lab.name for lab in follow}))


def _pair(pair: dict, style: str, messages: list[dict], answer: Sequence[dict]) -> dict:
    return {**pair, "style": style, "prompt": messages, "completion": [{"role": "assistant", "content": answer_json(answer)}]}
