"""Retrying one remote request: which failures are worth another try, and how long to keep trying.

Dropped connections, timeouts, 5xx and throttling answers (429, 503, S3's SlowDown) are retried
with exponential backoff and jitter; 401/403 and 404 are not. A refused connection to a host that
has not answered this process yet (a wrong port, a server that is not running) is tried only
``refused_attempts`` times: waiting a minute and a half for it helps nobody. Every error raised
names the URL (made safe by :mod:`.redact`) and what happened, with the HTTP status when known.
"""

from __future__ import annotations

import enum
import errno
import http
import http.client
import logging
import random
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from fsspec.exceptions import FSTimeoutError

from ..errors import StorageError
from .redact import safe_url, scrub

log = logging.getLogger(__name__)
T = TypeVar("T")
_RAISE = object()


@dataclass(frozen=True)
class RetryPolicy:
    """How one remote request (a byte range, a listing, an upload) is retried.

    ``attempts`` counts tries, the first included. ``base_delay`` is the first backoff, doubled at
    each retry up to ``max_delay``, each wait drawn between half and all of it (jitter). A request
    gives up when its attempts are spent or ``deadline`` seconds after it started; ``timeout``
    bounds one try, so a stalled connection counts as a failure. With the defaults, a server that
    never recovers is given up on within two minutes (:meth:`give_up_within`). A connection
    refused by a host that never answered is tried ``refused_attempts`` times.
    """

    attempts: int = 10
    base_delay: float = 0.5
    max_delay: float = 20.0
    deadline: float = 100.0
    timeout: float = 30.0
    refused_attempts: int = 3

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure."""
        top = min(self.max_delay, self.base_delay * 2 ** (failures - 1))
        return random.uniform(top / 2, top)

    def try_timeout(self, remaining: float) -> float:
        """The time one try may take when ``remaining`` seconds are left before the deadline: at
        most ``timeout``, and at least a second (or ``timeout``, if shorter) even at the deadline."""
        return max(min(self.timeout, 1.0), min(self.timeout, remaining))

    def give_up_within(self) -> float:
        """The longest a request can take before :func:`call` gives up: no try starts after the
        deadline, and the last one may take :meth:`try_timeout` of nothing left."""
        return self.deadline + self.try_timeout(0.0)


DEFAULT_POLICY = RetryPolicy()


class Verdict(enum.Enum):
    RETRY = "retry"
    NOT_FOUND = "not found"
    MAYBE_NOT_FOUND = "not found, or a busy server"
    DENIED = "access denied"
    FATAL = "failed"


_RETRY_ERRNOS = {errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
                 errno.ECONNABORTED, errno.EPIPE, errno.EHOSTUNREACH, errno.ENETUNREACH,
                 getattr(errno, "EREMOTEIO", errno.EIO)} - {errno.EIO}


def status(exc: BaseException | None) -> int | None:
    """The HTTP status of a failed answer: aiohttp's ``ClientResponseError`` or botocore's ``ClientError``."""
    code = getattr(exc, "status", None)
    if isinstance(code, int):
        return code
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code if isinstance(code, int) else None
    return None


def _network_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [TimeoutError, ConnectionError, FSTimeoutError]
    try:
        import aiohttp

        types.append(aiohttp.ClientError)  # payload cut short, server disconnected, connector errors
    except ImportError:
        pass
    try:
        from botocore import exceptions as boto

        types += [boto.HTTPClientError, boto.ConnectionError, boto.IncompleteReadError, boto.ResponseStreamingError]
    except (ImportError, AttributeError):
        pass
    types.append(http.client.HTTPException)
    return tuple(types)


_NETWORK_ERRORS: tuple[type[BaseException], ...] | None = None


def _network_error(exc: BaseException) -> bool:
    global _NETWORK_ERRORS
    if _NETWORK_ERRORS is None:
        _NETWORK_ERRORS = _network_error_types()
    return isinstance(exc, _NETWORK_ERRORS) or (isinstance(exc, OSError) and exc.errno in _RETRY_ERRNOS)


def underlying(exc: BaseException) -> BaseException:
    """What really failed: fsspec's HTTP ``info()`` raises ``FileNotFoundError(url)`` from its HEAD's
    and GET's error, whether that was a 404, a 503 or a refused connection."""
    cause = exc.__cause__
    if (isinstance(exc, FileNotFoundError) and cause is not None and not isinstance(cause, FileNotFoundError)
            and (status(cause) is not None or _network_error(cause))):
        return cause
    return exc


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` is a refused connection (nothing listens at the address)."""
    exc = underlying(exc)
    for err in (exc, exc.__cause__, getattr(exc, "os_error", None)):
        if isinstance(err, ConnectionRefusedError) or (isinstance(err, OSError) and err.errno == errno.ECONNREFUSED):
            return True
    return type(exc).__name__ == "EndpointConnectionError"  # botocore's, for a refused endpoint


def classify(exc: BaseException) -> Verdict:
    """Whether ``exc``, raised by an fsspec call, is worth retrying."""
    if underlying(exc) is not exc:
        return classify(underlying(exc))
    if isinstance(exc, FileNotFoundError):
        return Verdict.MAYBE_NOT_FOUND
    if isinstance(exc, PermissionError):
        return Verdict.DENIED
    code = status(exc)
    if code is not None:
        if code in (401, 403):
            return Verdict.DENIED
        if code in (404, 410):
            return Verdict.NOT_FOUND
        return Verdict.RETRY if code in (408, 425, 429) or code >= 500 else Verdict.FATAL
    if _network_error(exc):  # s3fs maps SlowDown/ServiceUnavailable to EBUSY, InternalError to EREMOTEIO
        return Verdict.RETRY
    if type(exc).__name__ == "NoCredentialsError":
        return Verdict.DENIED
    return Verdict.FATAL


def cut_short(exc: BaseException) -> bool:
    """Whether ``exc`` ended an answer in the middle of its body (dropped or stalled connection)."""
    names = {"ClientPayloadError", "IncompleteReadError", "ResponseStreamingError", "IncompleteRead",
             "ServerDisconnectedError", "FSTimeoutError", "TimeoutError", "ReadTimeoutError"}
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def _http_status(code: int) -> str:
    try:
        return f"HTTP {code} {http.HTTPStatus(code).phrase}"
    except ValueError:
        return f"HTTP {code}"


def _answer(exc: BaseException) -> str:
    """``HTTP 404`` and the like when the server's status is known, else the exception's type."""
    for err in (exc, exc.__cause__):
        if err is not None and status(err) is not None:
            return f"HTTP {status(err)}"
    return type(exc).__name__


def describe(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """What failed, for a message: the HTTP status first when known (``HTTP 503 Service
    Unavailable: ...``), then the error's type and text, without credentials."""
    exc = underlying(exc)
    try:
        text = str(exc) or repr(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the real failure
        text = "(no description)"
    code = status(exc)
    return scrub(f"{_http_status(code) + ': ' if code is not None else ''}{type(exc).__name__}: {text}", secrets)


#: Hosts that answered this process at least once: a refused connection to one of them is a
#: restart or an overload, worth the usual retries; to any other, most likely nothing listens.
_answered: set[str] = set()


def _host(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.hostname else url


def call(attempt: Callable[[float], T], *, url: str, what: str, policy: RetryPolicy = DEFAULT_POLICY,
         busy_not_found: bool = False, secrets: Iterable[str] = (),
         on_retry: Callable[[BaseException], None] | None = None, missing: Any = _RAISE) -> T:
    """Run ``attempt(timeout)`` until it succeeds, retrying what :func:`classify` calls transient.

    ``busy_not_found``: a ``FileNotFoundError`` may mean a busy server (fsspec's HTTP ``info`` turns
    a 503 on its HEAD into one), so it is retried once before it is believed. ``on_retry`` sees each
    failure that will be retried. ``missing``, when given, is returned for an object not found.

    Raises:
        StorageError: not found, access denied, a failure that is not transient, or the attempts or
            the deadline spent; the message names ``url`` (without credentials) and the last error.
    """
    start = time.monotonic()
    failures = refusals = 0
    not_found_retries = 1 if busy_not_found else 0
    where, host = safe_url(url), _host(url)
    while True:
        remaining = policy.deadline - (time.monotonic() - start)
        try:
            result = attempt(policy.try_timeout(remaining))
            _answered.add(host)
            return result
        except Exception as exc:  # noqa: BLE001 - every failure is classified below
            verdict, detail = classify(exc), describe(exc, secrets)
            if refused(exc):
                refusals += 1
                if host not in _answered and refusals >= policy.refused_attempts:
                    raise StorageError(f"{where}: {what} failed: the connection was refused {refusals} times and "
                                       f"the host has not answered yet (is the address right, and the server "
                                       f"running?); last error: {detail}") from None
            elif verdict is not Verdict.FATAL:
                _answered.add(host)  # it answered, even if with an error
            if verdict is Verdict.MAYBE_NOT_FOUND and not_found_retries:
                not_found_retries -= 1
                verdict = Verdict.RETRY
            elif verdict in (Verdict.NOT_FOUND, Verdict.MAYBE_NOT_FOUND):
                if missing is not _RAISE:
                    return missing
                hint = " (also when asked again, in case the server was busy)" \
                    if busy_not_found and verdict is Verdict.MAYBE_NOT_FOUND else ""
                raise StorageError(f"{where}: not found{hint} ({_answer(exc)})") from None
            if verdict is Verdict.DENIED:
                raise StorageError(f"{where}: access denied ({_answer(exc)}); check the credentials in "
                                   f"storage_options or the environment: {detail}") from None
            if verdict is Verdict.FATAL:
                raise StorageError(f"{where}: {what} failed: {detail}") from None
            failures += 1
            elapsed = time.monotonic() - start
            wait = policy.delay(failures)
            if failures >= policy.attempts or elapsed + wait > policy.deadline:
                raise StorageError(
                    f"{where}: {what} failed {failures} times in {elapsed:.1f}s, giving up "
                    f"(RetryPolicy attempts={policy.attempts}, deadline={policy.deadline:g}s); "
                    f"last error: {detail}") from None
            log.warning("%s: %s failed (%s); retry %d in %.2fs", where, what, detail, failures, wait)
            if on_retry is not None:
                on_retry(exc)
            time.sleep(wait)
