"""YAML configuration: safe loading (duplicate keys rejected), ``--set`` overrides, saving.

Values are only ever *parsed* as YAML scalars, never evaluated. Every YAML medseg reads (configs,
``bundle.yaml``, ``--set`` values) goes through :func:`loads`, which also refuses hostile
structure before building anything: nesting deeper than :data:`MAX_DEPTH` levels (20,000 brackets
would exhaust Python's stack) and documents whose aliases expand to more than :data:`MAX_NODES`
values ("billion laughs": nine lines that expand to 10^9 items once a consumer walks them), or
that refer to themselves; both with code ``yaml_too_complex``.

>>> cfg = apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=[1, 2]", "name=x"])
>>> cfg
{'a': {'b': 2, 'c': [1, 2]}, 'name': 'x'}
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from medseg.errors import ConfigError, MedsegError

MAX_DEPTH = 64          # nesting levels of mappings / sequences in one YAML document
MAX_NODES = 200_000     # values of a document once every alias is expanded


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice, and too deep or too large documents."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f"YAML nested more than {MAX_DEPTH} levels deep (line {mark.line + 1})",
                                  path=getattr(self, "name", None), code="yaml_too_complex")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set(), source=getattr(self, "name", None))
        return self.construct_document(node)


def _expanded_size(node: yaml.Node, memo: dict[int, int], active: set[int], *, source: str | None) -> int:
    """Number of values ``node`` stands for with every alias expanded (shared nodes counted each time)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise ConfigError(f"YAML alias refers to itself (line {node.start_mark.line + 1}): a recursive structure",
                          path=source, code="yaml_too_complex")
    active.add(key)
    n = 1
    if isinstance(node, yaml.SequenceNode):
        n += sum(_expanded_size(c, memo, active, source=source) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        n += sum(_expanded_size(k, memo, active, source=source) + _expanded_size(v, memo, active, source=source)
                 for k, v in node.value)
    active.discard(key)
    if n > MAX_NODES:
        raise ConfigError(f"YAML document expands to more than {MAX_NODES:,} values once its aliases (*name) are "
                          f"expanded (line {node.start_mark.line + 1}): refused as an alias bomb", path=source,
                          code="yaml_too_complex")
    memo[key] = n
    return n


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"duplicate key '{key}' (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                path=getattr(loader, "name", None),
                code="duplicate_key",
            )
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# YAML 1.1 (PyYAML) reads ``5e-4`` as a string because its floats need a dot; YAML 1.2 and every
# user read it as a number (``lr: 5e-4``, ``--set training.lr=5e-4``).
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def loads(text: str, *, source: str | None = None) -> Any:
    """Parse YAML text safely; duplicate keys raise ConfigError."""
    loader = _UniqueKeyLoader(text)
    loader.name = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", path=source, code="bad_yaml") from None
    finally:
        loader.dispose()


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Load a YAML mapping from ``path``."""
    p = Path(path)
    from medseg.limits import require_regular_file

    try:
        require_regular_file(p, what="config file")  # a FIFO would block read_text forever
    except MedsegError as exc:
        raise ConfigError(exc.problem, path=p, code=exc.code) from None
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", path=p, code="unreadable") from None
    data = loads(text, source=str(p))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("top level must be a mapping of keys to values", path=p)
    return data


def parse_value(text: str) -> Any:
    """Parse one ``--set`` value as a YAML scalar/sequence/mapping (``'3'`` -> 3, ``'[1,2]'`` -> list)."""
    if text == "":
        return ""
    return loads(text, source="--set value")


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``cfg`` with ``key.sub=value`` overrides applied (list items by index)."""
    out = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'", code="bad_override")
        key, raw = item.split("=", 1)
        parts = [k for k in key.strip().split(".") if k]
        if not parts:
            raise ConfigError(f"--set has an empty key in '{item}'", code="bad_override")
        node: Any = out
        for part in parts[:-1]:
            node = _child(node, part, create=True, full=key)
        _assign(node, parts[-1], parse_value(raw.strip()), full=key)
    return out


def _child(node: Any, part: str, *, create: bool, full: str) -> Any:
    if isinstance(node, list):
        idx = _index(part, node, full)
        return node[idx]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {full}: '{part}' is below a value that is not a mapping", code="bad_override")
    if part not in node:
        if not create:
            raise ConfigError(f"--set {full}: no key '{part}'", code="bad_override")
        node[part] = {}
    return node[part]


def _assign(node: Any, part: str, value: Any, *, full: str) -> None:
    if isinstance(node, list):
        node[_index(part, node, full)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise ConfigError(f"--set {full}: cannot set '{part}' inside a scalar", code="bad_override")


def _index(part: str, node: list, full: str) -> int:
    try:
        idx = int(part)
    except ValueError:
        raise ConfigError(f"--set {full}: '{part}' must be a list index", code="bad_override") from None
    if not -len(node) <= idx < len(node):
        raise ConfigError(f"--set {full}: index {idx} out of range", code="bad_override")
    return idx


class _PlainDumper(yaml.SafeDumper):
    """SafeDumper that writes a value used twice out twice, never as an ``&id001`` / ``*id001`` alias
    (the files are for people to read and edit)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dumps(cfg: Any) -> str:
    return yaml.dump(cfg, Dumper=_PlainDumper, sort_keys=False, default_flow_style=None)


def save_yaml(cfg: Any, path: str | os.PathLike) -> Path:
    """Write ``cfg`` as YAML atomically (temporary file, then rename)."""
    from medseg.fsutil import atomic_write_text

    return atomic_write_text(Path(path), dumps(cfg))


def check_keys(section: dict[str, Any], allowed: Iterable[str], *, where: str) -> None:
    """Raise ConfigError naming any key of ``section`` not in ``allowed``."""
    allowed = set(allowed)
    unknown = sorted(set(section) - allowed, key=str)
    if unknown:
        import difflib

        names = sorted(str(a) for a in allowed)
        hints = [(f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(str(k), names, n=1, cutoff=0.7))
                  else str(k)) for k in unknown]
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(hints)} (allowed: {', '.join(names)})",
            code="unknown_key",
        )
