"""One line of a sequence file parsed into token ids and a label: what is a valid record, and why
another is not (the reason goes into the manifest's ``skipped``)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

_INT64_MAX = 2**63 - 1
_INT64 = (-(2**63), 2**63 - 1)


class RecordError(ValueError):
    """A sequence line that is not a valid record; ``reason`` says why (it goes into ``skipped``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_blank(line: bytes) -> bool:
    return not line.strip()


def parse_line(line: bytes, fmt: str, tokens_field: str = "tokens",
               label_field: str = "label") -> tuple[np.ndarray, int | None]:
    """Parse one non-blank line of a sequence file into ``(tokens as uint64, label or None)``.

    ``fmt`` is ``"jsonl"`` (an object with a list of non-negative ints under ``tokens_field`` and an
    optional int under ``label_field``; ``null`` means no label) or ``"txt"`` (whitespace-separated
    non-negative ints, no label).

    Raises:
        RecordError: (a ``ValueError``) not JSON, not an object, tokens missing, empty, of the wrong
            type, not integers, negative or beyond 2**63-1, or a label that is not a 64-bit int.
    """
    if fmt == "txt":
        return parse_txt(line), None
    if fmt != "jsonl":
        raise ValueError(f"unknown sequence format {fmt!r}")
    try:
        record = json.loads(line)
    except RecursionError:
        raise RecordError("not valid JSON (nested too deeply)") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, int digit limits
        raise RecordError(f"not valid JSON ({err})") from None
    if not isinstance(record, dict):
        raise RecordError(f"not a JSON object (found {type(record).__name__})")
    if tokens_field not in record:
        raise RecordError(f"missing field {tokens_field!r}")
    tokens = record[tokens_field]
    if not isinstance(tokens, list):
        raise RecordError(f"field {tokens_field!r} is a {_json_type(tokens)}, not a list of ints")
    if not tokens:
        raise RecordError(f"field {tokens_field!r} is empty")
    for t in tokens:
        if type(t) is not int:  # bools and floats are not token ids
            raise RecordError(f"field {tokens_field!r} holds a non-integer ({_json_type(t)} {t!r:.40})")
    array = _token_array(tokens)
    label = record.get(label_field)
    if label is not None:
        if type(label) is not int:
            raise RecordError(f"field {label_field!r} is a {_json_type(label)}, not an int")
        if not _INT64[0] <= label <= _INT64[1]:
            raise RecordError(f"field {label_field!r} value {label} does not fit in 64 bits")
    return array, label


def parse_txt(line: bytes) -> np.ndarray:
    """The token ids of a ``.txt`` line (whitespace-separated non-negative ints below 2**63).

    Raises:
        RecordError: an empty line, or a part that is not such an id.
    """
    parts = line.split()
    if not parts:
        raise RecordError("empty line")
    ids = []
    for p in parts:
        if not p.isdigit():
            if p[:1] == b"-" and p[1:].isdigit():
                raise RecordError(f"negative token id {p[:40].decode()}")
            raise RecordError(f"not a non-negative integer: {p[:40].decode('utf-8', 'backslashreplace')!r}")
        digits = p.lstrip(b"0") or b"0"  # zero-padded ids are ids; int() refuses very long strings
        if len(digits) > 19:
            raise RecordError(f"token id {digits[:40].decode()}{'...' if len(digits) > 40 else ''} exceeds "
                              f"2**63-1, the largest id an int64 tensor holds")
        ids.append(int(digits))
    return _token_array(ids)


def _token_array(tokens: list[int]) -> np.ndarray:
    """The ids as uint64, each checked to be in ``[0, 2**63)``: a stream hands them out as int64."""
    low, high = min(tokens), max(tokens)
    if low < 0:
        raise RecordError(f"negative token id {low}")
    if high > _INT64_MAX:
        raise RecordError(f"token id {high} exceeds 2**63-1, the largest id an int64 tensor holds")
    return np.array(tokens, dtype=np.uint64)


def _json_type(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)
