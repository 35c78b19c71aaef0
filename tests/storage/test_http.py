"""Reading over HTTP from a real server on 127.0.0.1 that drops connections, answers 503 and stalls."""

import dataclasses
import logging
import time

import pytest

from shardkit import storage
from shardkit.errors import StorageError

FAULTS = {
    "healthy": {},
    "dropped mid-body": {"drop_after": 10_000, "drops": 3},
    "every body dropped": {"drop_after": 100_000, "drops": None},
    "503 first": {"fail_first": 3},
    "429 first": {"fail_first": 2, "fail_status": 429},
    "slow first byte": {"latency": 0.03},
    "503 then drops": {"fail_first": 2, "drop_after": 5_000, "drops": 2},
}


@pytest.mark.parametrize("faults", FAULTS.values(), ids=FAULTS.keys())
@pytest.mark.parametrize("size_known", [True, False], ids=["size-known", "size-unknown"])
@pytest.mark.parametrize("read_size", [512, 70_000])
def test_every_byte_arrives_exactly_once(http, objects, fast_retry, faults, size_known, read_size):
    server, url = http(**faults)
    for name, data in objects.items():
        with storage.open_shard(f"{url}/{name}", size=len(data) if size_known else None, retry=fast_retry) as f:
            parts = []
            while chunk := f.read(read_size):
                parts.append(chunk)
            assert b"".join(parts) == data, name
            assert f.tell() == len(data)


def test_a_dropped_range_is_asked_for_again_from_where_it_failed(http, objects, fast_retry):
    server, url = http(drop_after=10_000, drops=1)
    data = objects["big.bin"]
    with storage.open_shard(f"{url}/big.bin", size=len(data), retry=fast_retry) as f:
        assert f.read() == data
    ranges = [r for m, p, r in server.requests if m == "GET"]
    starts = sorted(int(r.split("=")[1].split("-")[0]) for r in ranges)
    # Each range start once, the one cut short twice: nothing skipped, nothing fetched past the end.
    assert len(starts) == len(set(starts)) + 1
    assert max(int(r.split("-")[1]) for r in ranges) == len(data) - 1


def test_503_on_the_head_request_is_retried_not_taken_for_a_missing_file(http, objects, fast_retry):
    # Request 0 is the first range; 1 and 2 are fsspec's HEAD and its GET fallback for the size.
    server, url = http(fail_from=1, fail_first=2)
    with storage.open_shard(f"{url}/big.bin", retry=fast_retry) as f:
        assert f.read() == objects["big.bin"]
    assert ("HEAD", "/big.bin") in server.counts()
    assert storage.size(f"{url}/big.bin", retry=fast_retry) == len(objects["big.bin"])


def test_manifest_reads_are_retried(http, objects, fast_retry):
    server, url = http(fail_first=3, drop_after=100, drops=1)
    assert storage.read_bytes(f"{url}/small.bin", retry=fast_retry) == objects["small.bin"]
    assert server.count() == 5


@pytest.mark.parametrize("call", [
    lambda url, retry: storage.open_shard(f"{url}/nope.tar", retry=retry).read(),
    lambda url, retry: storage.open_shard(f"{url}/nope.tar", size=100, retry=retry).read(),
    lambda url, retry: storage.read_bytes(f"{url}/nope.json", retry=retry),
], ids=["shard", "shard-with-size", "manifest"])
def test_404_fails_at_once_with_a_clear_error(http, objects, fast_retry, call):
    server, url = http()
    with pytest.raises(StorageError, match=r"/nope\.\w+: not found"):
        call(url, fast_retry)
    assert server.count("GET") == 1


def test_missing_object_has_no_size(http, objects, fast_retry):
    server, url = http()
    assert storage.size(f"{url}/nope.bin", retry=fast_retry) is None
    assert not storage.exists(f"{url}/nope.bin", retry=fast_retry)
    assert server.count() == 4  # per call, one HEAD and fsspec's GET fallback; no retry: the 404 is believed


def test_403_fails_at_once(http, objects, fast_retry):
    server, url = http(status_for={"/big.bin": 403})
    with pytest.raises(StorageError, match=r"big\.bin: access denied \(HTTP 403\)"):
        storage.open_shard(f"{url}/big.bin", size=len(objects["big.bin"]), retry=fast_retry).read()
    ranges = [r for m, _, r in server.requests]
    assert len(ranges) == len(set(ranges))  # the ranges already in flight, none asked twice


@pytest.mark.parametrize("faults, cause", [
    ({"fail_always": True}, "503"),
    ({"latency": 3.0}, "FSTimeoutError"),
], ids=["503-forever", "stalled"])
def test_a_server_that_never_recovers_gives_a_clear_error_not_a_hang(http, objects, faults, cause):
    fast_retry = storage.RetryPolicy(base_delay=0.01, max_delay=0.05, deadline=1.5, timeout=0.5)
    server, url = http(**faults)
    started = time.monotonic()
    with pytest.raises(StorageError, match=rf"big\.bin: reading bytes 0-\d+ failed \d+ times.*giving up.*{cause}"):
        storage.open_shard(f"{url}/big.bin", size=len(objects["big.bin"]), retry=fast_retry).read()
    # The policy's deadline plus one timed-out try bounds it; a hang would run into pytest's timeout.
    assert time.monotonic() - started < fast_retry.deadline + 2 * fast_retry.timeout + 2


@pytest.mark.parametrize("faults", [{"latency": 60.0}, {"fail_always": True}], ids=["stalled", "503-forever"])
def test_default_policy_gives_up_within_two_minutes(http, objects, faults):
    """The default policy, every duration scaled down 50 times, against a real server that never
    recovers: the time it takes to give up stays within the bound ``give_up_within`` computes
    from the same schedule the retry loop uses, and that bound, unscaled, is under two minutes."""
    default = storage.RetryPolicy()
    assert default.give_up_within() < 120
    scale = 50
    policy = dataclasses.replace(default, base_delay=default.base_delay / scale, max_delay=default.max_delay / scale,
                                 deadline=default.deadline / scale, timeout=default.timeout / scale)
    server, url = http(**faults)
    started = time.monotonic()
    with pytest.raises(StorageError, match="giving up"):
        storage.read_bytes(f"{url}/big.bin", retry=policy)
    took = time.monotonic() - started
    # the bound plus what is not scaled: a second at most of the machine's own delays
    assert took <= policy.give_up_within() + 1.0, (took, policy.give_up_within())
    if "latency" in faults:  # a stalled server uses the time up: the bound is not loose either
        assert took >= policy.deadline - policy.timeout


def test_credentials_never_appear_in_errors_or_logs(http, objects, fast_retry, caplog):
    server, url = http(fail_always=True)
    secret_url = url.replace("http://", "http://alice:hunter2-password@") + "/big.bin?X-Amz-Signature=s1gn4ture"
    options = {"headers": {"Authorization": "Bearer t0ken-value"}}
    with caplog.at_level(logging.DEBUG, logger="shardkit"), pytest.raises(StorageError) as info:
        storage.read_bytes(secret_url, options, retry=fast_retry)
    text = str(info.value) + caplog.text
    assert "127.0.0.1" in str(info.value)
    for secret in ("alice", "hunter2", "s1gn4ture", "t0ken-value"):
        assert secret not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_the_first_range_is_short_and_the_rest_full_size(http, objects, fast_retry):
    server, url = http()
    data = objects["big.bin"]
    with storage.open_shard(f"{url}/big.bin", size=len(data), retry=fast_retry) as f:
        assert f.read() == data
    spans = sorted(tuple(int(x) for x in r.split("=")[1].split("-")) for m, p, r in server.requests if m == "GET")
    lengths = [stop - start + 1 for start, stop in spans]
    assert lengths[0] == 16 << 10 and set(lengths[1:-1]) == {64 << 10} and sum(lengths) == len(data)


def test_readahead_keeps_several_ranges_in_flight(http, objects, fast_retry):
    server, url = http(latency=0.1)
    data = objects["big.bin"]  # 5 ranges of 64 KB
    with storage.open_shard(f"{url}/big.bin", size=len(data), retry=fast_retry) as f:
        assert f.read(1) == data[:1]
        assert f.read() == data[1:]
    assert server.max_in_flight >= 2
