"""Which failures are retried, and how messages are kept free of credentials (no servers needed)."""

import errno

import aiohttp
import botocore.exceptions
import pytest
import yarl
from fsspec.exceptions import FSTimeoutError

from shardkit.storage.redact import safe_url, scrub, secrets_of
from shardkit.storage.retry import RetryPolicy, Verdict, call, classify
from shardkit.errors import StorageError


def _http(status):
    url = yarl.URL("http://h/x")
    return aiohttp.ClientResponseError(aiohttp.RequestInfo(url, "GET", {}, url), (), status=status, message="x")


def _s3(code, status):
    return botocore.exceptions.ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                                           "GetObject")


def _wrapped_not_found(cause):
    err = FileNotFoundError("http://h/x")
    err.__cause__ = cause
    return err


CASES = [
    (_http(503), Verdict.RETRY), (_http(500), Verdict.RETRY), (_http(429), Verdict.RETRY),
    (_http(404), Verdict.NOT_FOUND), (_http(403), Verdict.DENIED), (_http(401), Verdict.DENIED),
    (_http(400), Verdict.FATAL), (_http(416), Verdict.FATAL),
    (aiohttp.ClientPayloadError("cut"), Verdict.RETRY), (aiohttp.ServerDisconnectedError(), Verdict.RETRY),
    (FSTimeoutError(), Verdict.RETRY), (TimeoutError(), Verdict.RETRY), (ConnectionResetError(), Verdict.RETRY),
    (OSError(errno.EBUSY, "SlowDown"), Verdict.RETRY), (OSError(errno.EIO, "InvalidRange"), Verdict.FATAL),
    (_s3("SlowDown", 503), Verdict.RETRY), (_s3("AccessDenied", 403), Verdict.DENIED),
    (_s3("NoSuchKey", 404), Verdict.NOT_FOUND),
    (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), Verdict.RETRY),
    (botocore.exceptions.NoCredentialsError(), Verdict.DENIED),
    (PermissionError("denied"), Verdict.DENIED), (FileNotFoundError("x"), Verdict.MAYBE_NOT_FOUND),
    (_wrapped_not_found(_http(503)), Verdict.RETRY), (_wrapped_not_found(_http(404)), Verdict.NOT_FOUND),
    (ValueError("bug"), Verdict.FATAL),
]


@pytest.mark.parametrize("exc, verdict", CASES, ids=[f"{type(e).__name__}-{v.name}" for e, v in CASES])
def test_classify(exc, verdict):
    assert classify(exc) is verdict


def _failing(errors):
    calls = []

    def attempt(timeout):
        calls.append(timeout)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "ok"

    return attempt, calls


FAST = RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.002, deadline=5, timeout=2)


@pytest.mark.parametrize("errors, busy, result, tries", [
    ([_http(503)] * 3, False, "ok", 4),
    ([_http(503)] * 4, False, StorageError, 4),
    ([FileNotFoundError("x")], True, "ok", 2),  # a busy HTTP HEAD: retried once
    ([FileNotFoundError("x")] * 2, True, StorageError, 2),  # then believed
    ([FileNotFoundError("x")], False, StorageError, 1),
    ([_http(403)], False, StorageError, 1),
    ([ValueError("x")], False, StorageError, 1),
])
def test_call_retries_only_what_may_pass(errors, busy, result, tries):
    attempt, calls = _failing(errors)
    if result is StorageError:
        with pytest.raises(StorageError, match="http://h/x"):
            call(attempt, url="http://h/x", what="reading", policy=FAST, busy_not_found=busy)
    else:
        assert call(attempt, url="http://h/x", what="reading", policy=FAST, busy_not_found=busy) == result
    assert len(calls) == tries
    assert all(t <= FAST.timeout for t in calls)


def test_backoff_grows_with_jitter_and_is_capped():
    policy = RetryPolicy(base_delay=1.0, max_delay=5.0)
    delays = [[policy.delay(n) for _ in range(50)] for n in (1, 2, 3, 10)]
    assert all(0.5 <= d <= 1.0 for d in delays[0]) and all(1.0 <= d <= 2.0 for d in delays[1])
    assert all(2.5 <= d <= 5.0 for d in delays[3]) and len(set(delays[0])) > 1


@pytest.mark.parametrize("url, safe", [
    ("https://user:pw@host/a/b.tar", "https://host/a/b.tar"),
    ("s3://bucket/key.tar", "s3://bucket/key.tar"),
    ("https://host/x.tar?X-Amz-Signature=abc&X-Amz-Credential=def", "https://host/x.tar"),
    ("http://tok@127.0.0.1:8000/p", "http://127.0.0.1:8000/p"),
])
def test_safe_url(url, safe):
    assert safe_url(url) == safe


def test_secrets_are_scrubbed_from_text():
    options = {"key": "AKIAEXAMPLE", "secret": "wJalrXUtnFEMI", "token": "sess-tok",
               "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"},
               "headers": {"Authorization": "Bearer abc123"}}
    secrets = secrets_of(options)
    assert set(secrets) == {"AKIAEXAMPLE", "wJalrXUtnFEMI", "sess-tok", "Bearer abc123"}
    text = scrub("failed for AKIAEXAMPLE/wJalrXUtnFEMI at https://u:p@h/x?sig=1 with Bearer abc123", secrets)
    assert text == "failed for ***/*** at https://h/x with ***"
