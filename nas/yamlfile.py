"""Reading the YAML files a user writes (search spaces, studies): ``yaml.safe_load`` semantics, made strict.

What an editor or a typo can produce is refused in one line naming the file and the fix, never a traceback:
a missing file or a folder, an empty file, a binary file, text that is not UTF-8 (e.g. UTF-16 saved by an
editor), a YAML syntax error (with its line), and a key written twice in one mapping (PyYAML silently keeps the
last one; we name the key and both lines). A UTF-8 byte-order mark is accepted.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import yaml

from nas.errors import ConfigError

_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
MAX_BYTES = 16 * 1024 * 1024  # a configuration file, not a dataset


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


class StrictLoader(_BASE):  # type: ignore[misc, valid-type]
    """``yaml.SafeLoader`` (the C one when PyYAML has it) that refuses a key repeated within one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges are meant to be overridden
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: the base constructor reports it
            if first != key_node.start_mark.line + 1:
                raise _DuplicateKey(key, key_node.start_mark.line + 1, first)
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, StrictLoader.construct_mapping)


def _text(path: Path) -> str:
    data = path.read_bytes()[: MAX_BYTES + 1]
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{path}: file is larger than {MAX_BYTES // 2**20} MiB; is it really a YAML configuration?")
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise ConfigError(f"{path}: the file is {name} text; save it as UTF-8 (the usual default of editors)")
    if b"\x00" in data:
        raise ConfigError(f"{path}: binary file (it contains NUL bytes), not YAML text; check the path")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bad = data[e.start : e.start + 1].hex()
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte 0x{bad}); save the file as UTF-8") from None


def read_yaml(path: str | Path, missing_hint: str) -> Any:
    """Parse one YAML document strictly (see the module docstring); every problem is a one-line ConfigError."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; {missing_hint}")
    if not path.is_file():
        raise ConfigError(f"{path}: {missing_hint}")
    text = _text(path)
    try:
        raw = yaml.load(text, Loader=StrictLoader)
    except _DuplicateKey as e:
        raise ConfigError(
            f"{path}: line {e.line}: key {e.key!r} is written twice in the same mapping (first at line {e.first}); "
            "keep one"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty (no YAML content); write the configuration or fix the path")
    return raw
