"""The corpus registry: ``data/corpora.yaml`` (or a user's own file with the same shape)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import yaml

from medner.data.bio import SCHEMES

DEFAULT_REGISTRY = Path(__file__).with_name("corpora.yaml")
SPLITS = ("train", "dev", "test")
_KEYS = {"lang", "scheme", "format", "files", "labels", "notice"}
FORMATS = ("bio", "labelstudio", "doccano", "brat")  # see medner.data.formats


@dataclasses.dataclass(frozen=True)
class Label:
    name: str  # the corpus's own label, used verbatim in answers, schemas and reports
    display: str  # shown in prompts
    description: str
    # words users write for the type, per language ({"en": (...), "zh": (...)}); answers keep ``name``
    synonyms: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def words(self, lang: str) -> tuple[str, ...]:
        """The type's everyday words in ``lang`` (first: the usual one); the display name when none are given."""
        return dict(self.synonyms).get(lang) or (self.display,)


@dataclasses.dataclass(frozen=True)
class Corpus:
    name: str
    lang: str
    scheme: str
    files: dict[str, Path]
    labels: tuple[Label, ...]
    notice: Path | None = None
    format: str = "bio"  # bio | labelstudio | doccano | brat

    @property
    def label_names(self) -> list[str]:
        return [lab.name for lab in self.labels]

    def file(self, split: str) -> Path:
        if split not in self.files:
            raise KeyError(f"corpus {self.name!r} has no split {split!r} (it has: {', '.join(self.files)})")
        return self.files[split]


class RegistryError(ValueError):
    pass


def registry_path() -> Path:
    """The registry in use: ``$MEDNER_CORPORA`` if set, else the one shipped in ``data/``."""
    return Path(os.environ.get("MEDNER_CORPORA", DEFAULT_REGISTRY))


def load_registry(path: str | Path | None = None) -> dict[str, Corpus]:
    path = Path(path) if path else registry_path()
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    base = path.parent
    out = {}
    for name, entry in raw.items():
        where = f"{path}: corpus {name!r}"
        if not isinstance(entry, dict):
            raise RegistryError(f"{where}: expected a mapping")
        unknown = set(entry) - _KEYS
        if unknown:
            raise RegistryError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
        for key in ("lang", "files", "labels"):
            if key not in entry:
                raise RegistryError(f"{where}: missing key {key!r}")
        if entry["lang"] not in ("en", "zh"):
            raise RegistryError(f"{where}: lang must be en or zh, not {entry['lang']!r}")
        scheme = entry.get("scheme", "iob2")
        if scheme not in SCHEMES:
            raise RegistryError(f"{where}: scheme must be one of {SCHEMES}, not {scheme!r}")
        fmt = entry.get("format", "bio")
        if fmt not in FORMATS:
            raise RegistryError(f"{where}: format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        files = {}
        for split, rel in entry["files"].items():
            if split not in SPLITS:
                raise RegistryError(f"{where}: split {split!r} is not one of {SPLITS}")
            files[split] = (base / rel).resolve()
        labels = []
        for lab, spec in entry["labels"].items():
            spec = spec or {}
            syn = spec.get("synonyms") or {}
            if not isinstance(syn, dict) or any(k not in ("en", "zh") or not isinstance(v, list) for k, v in syn.items()):
                raise RegistryError(f"{where}: label {lab!r}: synonyms must map en/zh to lists of words")
            synonyms = tuple((k, tuple(str(w) for w in v)) for k, v in sorted(syn.items()))
            labels.append(Label(str(lab), str(spec.get("display", lab)), str(spec.get("description", "")), synonyms))
        notice = (base / entry["notice"]).resolve() if entry.get("notice") else None
        out[name] = Corpus(name, entry["lang"], scheme, files, tuple(labels), notice, fmt)
    return out


def get_corpus(name: str, path: str | Path | None = None) -> Corpus:
    reg = load_registry(path)
    if name not in reg:
        raise RegistryError(f"unknown corpus {name!r}; registered: {', '.join(sorted(reg))}")
    return reg[name]
