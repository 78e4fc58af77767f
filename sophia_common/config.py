"""Typed recipes: small dataclasses per component, loaded from YAML with ``key=value`` overrides.

A recipe (``configs/*.yaml``) has one top-level section per component (``model``,
``parallel``, ``train``, ``data``, ``rollout``, ``pack``, ...). Each command loads the
sections it needs into that component's dataclass; every key is validated at load time
against the dataclass fields (name and type), so a typo fails before any work starts,
with one error line per bad key that names the file and the dotted key.

Overrides use dotted paths and YAML values: ``train.lr=1e-5 parallel.tp=2
rollout.reasoner.easy.temperature=0.6``; a list is written in YAML's flow syntax,
``rollout.inputs=[a.jsonl,b.parquet]`` (quote the argument in a shell: ``'rollout.inputs=[a, b]'``),
and ``key=null`` unsets an optional key. ``OVERRIDES_HELP`` says this in every command's
``--help``. Field documentation lives in ``field(metadata={"help": ...})`` (``doc``), where the
recipe-docs test (tests/common/test_recipes.py) reads it beside each recipe's comments.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

# Top-level recipe sections that some command of the system understands. A section
# outside this set is an error everywhere (it is a typo or a stale key).
KNOWN_SECTIONS = ("name", "model", "parallel", "train", "data", "checkpoint", "logging",
                  "fp8", "rollout", "pack", "eval", "grpo")


OVERRIDES_HELP = """\
Recipe overrides: key=value arguments after the options replace recipe keys, by dotted path, e.g.
  {example}
Values are YAML: numbers, true/false, null (unsets an optional key), strings; a list is written
[a,b] (quote it in a shell when it holds spaces: 'rollout.inputs=[a.jsonl, b.jsonl]').
Relative paths are relative to the directory the command runs in."""
"""The overrides paragraph of every command's ``--help`` (``.format(example=...)``)."""


class ConfigError(ValueError):
    """A recipe or override that cannot be used; the message lists every problem."""


def doc(help_text: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field with its documentation attached (``metadata['help']``)."""
    if default is not dataclasses.MISSING and isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value),
                                 metadata={"help": help_text}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help_text}, **kwargs)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> nested dict with YAML-parsed values."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_recipe(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The recipe as a plain dict: the YAML file (optional) merged with the overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: recipe file not found")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        except UnicodeDecodeError as exc:
            line = path.read_bytes()[:exc.start].count(b"\n") + 1
            raise ConfigError(f"{path}, line {line}: not UTF-8 (byte {exc.object[exc.start]:#04x}); "
                              f"save the recipe as UTF-8") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of sections")
    merged = _merge(raw, parse_overrides(overrides or []))
    unknown = [k for k in merged if k not in KNOWN_SECTIONS]
    if unknown:
        where = path or "overrides"
        raise ConfigError("\n".join(f"{where}: unknown section '{k}'{_suggest(k, KNOWN_SECTIONS)}"
                                    for k in unknown))
    return merged


def _suggest(key: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def build(cls: type, data: dict[str, Any] | None, where: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``data``, validating names and types recursively."""
    errors: list[str] = []
    obj = _build(cls, data or {}, where, errors)
    if errors:
        raise ConfigError("\n".join(errors))
    return obj


def _build(cls: type, data: Any, where: str, errors: list[str]) -> Any:
    if not isinstance(data, dict):
        errors.append(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else key
        if key not in fields:
            errors.append(f"unknown key '{dotted}'{_suggest(key, fields)}")
            continue
        kwargs[key] = _coerce(hints[key], value, dotted, errors)
    missing = [name for name, f in fields.items() if name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    for name in missing:
        errors.append(f"missing required key '{where + '.' if where else ''}{name}'")
    if errors:
        return None
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        errors.append(f"{where or cls.__name__}: {exc}")
        return None


def _coerce(hint: Any, value: Any, where: str, errors: list[str]) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, errors)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        sub: list[str] = []
        for candidate in inner:
            sub.clear()
            out = _coerce(candidate, value, where, sub)
            if not sub:
                return out
        errors.extend(sub)
        return None
    if origin is typing.Literal:
        if value not in args:
            errors.append(f"'{where}': {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            errors.append(f"'{where}': expected a list, got {value!r}; write a list as {where}=[a,b] on the "
                          f"command line, or as a YAML list ([a, b], or one '- item' per line) in the recipe")
            return None
        item = args[0] if args else Any
        out = [_coerce(item, v, f"{where}[{i}]", errors) for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"'{where}': expected a mapping, got {value!r}")
            return None
        return {k: _coerce(args[1] if args else Any, v, f"{where}.{k}", errors) for k, v in value.items()}
    return _coerce_scalar(hint, value, where, errors)


def _coerce_scalar(hint: Any, value: Any, where: str, errors: list[str]) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    errors.append(f"'{where}': expected {hint.__name__}, got {value!r}")
    return None


def field_docs(cls: type, prefix: str = "") -> dict[str, str]:
    """Dotted field name -> help text, for every (nested) field of ``cls``."""
    out: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        out[name] = f.metadata.get("help", "")
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(field_docs(hints[f.name], prefix=name + "."))
    return out


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain data (for manifests, metadata and logs)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
