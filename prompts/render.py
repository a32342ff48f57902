"""Prompt templates: versioned Jinja files in ``prompts/templates/<version>/<lang>.{system,user}.jinja``.

Rendering uses strict undefined variables, so a template that names a variable the code does not pass
fails loudly instead of rendering an empty string. The label list is in the system message and the
text alone in the user message, so every request of one corpus shares the same prompt prefix (vLLM's
prefix cache computes it once).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).with_name("templates")
# the default: descriptive labels and the answer format spelled out, what a zero-shot model needs
PROMPT_VERSION = "v1"


def prompt_versions() -> list[str]:
    """The prompt versions this medner ships (folders under prompts/templates)."""
    return sorted(p.name for p in TEMPLATES.iterdir() if p.is_dir() and any(p.glob("*.jinja")))


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        autoescape=False,
    )


def build_messages(text: str, labels: Sequence, lang: str, version: str = PROMPT_VERSION) -> list[dict]:
    """System + user chat messages for one text. ``labels`` are objects with name, display, description."""
    env = _env()
    try:
        system = env.get_template(f"{version}/{lang}.system.jinja").render(labels=labels).strip()
        user = env.get_template(f"{version}/{lang}.user.jinja").render(text=text)
    except jinja2.TemplateNotFound as e:
        raise ValueError(f"no prompt template {e.name!r} (prompt version {version!r}, language {lang!r})") from None
    return [{"role": "system", "content": system}, {"role": "user", "content": user.rstrip("\n")}]


def template_hash(version: str = PROMPT_VERSION) -> str:
    """sha256 over the template files of one version: part of every run record."""
    if version not in prompt_versions():
        raise ValueError(f"unknown prompt version {version!r}; this medner has {', '.join(prompt_versions())}")
    h = hashlib.sha256()
    for p in sorted((TEMPLATES / version).glob("*.jinja")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()
