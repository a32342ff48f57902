"""Stage configs: YAML files mapped onto dataclasses, ``key=value`` overrides, unknown keys fail.

Each stage declares a dataclass whose fields are its knobs. ``load_config`` reads the YAML, applies
command-line overrides (``key=value``; values parsed as YAML scalars, so ``max_steps=8`` is an int,
``adapter=null`` is None), rejects any key the dataclass does not have, and coerces types.
``save_config`` writes the resolved config beside a run's output.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value != "" else ""
    return out


def _coerce(name: str, value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(name, value, a, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {name}={value!r} does not fit {typ}")
    if typ is Any:
        return value
    if origin in (list, tuple) or typ in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {name} must be a list, not {value!r}")
        return list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {name} must be a mapping, not {value!r}")
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {name} must be true or false, not {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {name} must be an integer, not {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {name} must be a number, not {value!r}")
        return float(value)
    if typ is str:
        if value is None or isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: {name} must be a string, not {value!r}")
        return str(value)
    return value


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    raw: dict[str, Any] = {}
    where = str(path) if path else "config"
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: expected a mapping of key: value")
    given = parse_overrides(overrides)
    secret = sorted(k for k, v in given.items() if k.endswith("api_key") and v not in (None, "null", ""))
    if secret:
        raise ConfigError(
            f"{secret[0]}= on the command line is visible to every user of this machine (process listings, shell history); "
            "set MEDNER_API_KEY (or put the key in the config file)"
        )
    raw.update(given)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        hint = "; ".join(
            f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, fields, 1)) else "") for k in unknown
        )
        raise ConfigError(f"{where}: unknown key(s) {hint}")
    values = {k: _coerce(k, v, hints[k], where) for k, v in raw.items()}
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def save_config(cfg: Any, path: str | Path) -> None:
    """The resolved config beside a run's output; API keys are written as "***" (a run folder is no place for them)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {k: ("***" if k.endswith("api_key") and v else v) for k, v in dataclasses.asdict(cfg).items()}
    path.write_text(yaml.safe_dump(values, sort_keys=False, allow_unicode=True), encoding="utf-8")
