"""Text about remote objects that is safe to log or raise: no credentials, ever.

URLs lose their userinfo (``user:password@``) and query string (presigned signatures, tokens);
values of ``storage_options`` whose key names a secret are blanked wherever they appear.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]*@")
_QUERY = re.compile(r"(://[^\s'\"?#]*)[?#][^\s'\"]*")
_SECRET_KEY = re.compile(r"key|secret|token|pass|credential|auth|signature|cookie", re.IGNORECASE)
_MAX_TEXT = 400


def safe_url(url: str) -> str:
    """``url`` without userinfo and query string."""
    return _QUERY.sub(r"\1", _USERINFO.sub(r"\1", url))


def secrets_of(options: Any) -> list[str]:
    """The string values of ``storage_options`` (nested dicts included) held under secret-looking keys."""
    found: list[str] = []

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, secret or bool(_SECRET_KEY.search(str(k))))
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v, secret)
        elif secret and isinstance(value, str) and len(value) >= 3:
            found.append(value)

    walk(options or {}, False)
    return sorted(found, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URLs made safe and every secret replaced by ``***``, cut to a readable length."""
    for secret in secrets:
        text = text.replace(secret, "***")
    text = safe_url(text)
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"
