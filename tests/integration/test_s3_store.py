"""The object store against a REAL S3 endpoint (moto's server on 127.0.0.1): the URI's path is the key
prefix inside the bucket, atomic create has exactly one winner, and calls ride out an endpoint that
refuses connections or hangs for several seconds."""

from __future__ import annotations

import re
import threading
import time

import pytest

from flowdpo.storage import ObjectStore, RunLayout, StoreError, open_store
from tests.support.s3util import BUCKET, MotoS3, MotoSubprocess


def test_s3_uri_prefix_and_round_trip(s3_env):
    store = open_store(f"s3://{BUCKET}/runs/prefixed")
    store.put_json("a/x.json", {"k": 1})
    assert store.create("a/y.json", b"y") and not store.create("a/y.json", b"other")
    assert sorted(s3_env.keys("runs/prefixed/")) == ["runs/prefixed/a/x.json", "runs/prefixed/a/y.json"]
    assert store.list("a/") == ["a/x.json", "a/y.json"] and store.get_json("a/x.json") == {"k": 1}
    assert store.exists("a/y.json") and not store.exists("a/z.json")
    with pytest.raises(KeyError):
        store.get("a/z.json")
    store.delete("a/x.json")
    assert store.list("a/") == ["a/y.json"]
    # A second store on another prefix of the same bucket sees nothing of the first.
    assert open_store(f"s3://{BUCKET}/runs/other").list("a/") == []


def test_s3_create_has_exactly_one_winner(s3_env):
    store = open_store(s3_env.uri())
    for rnd in range(10):
        wins: list[bool] = []
        barrier = threading.Barrier(12)

        def attempt(i, rnd=rnd, wins=wins, barrier=barrier):
            barrier.wait()
            wins.append(store.create(f"claims/k{rnd}.json", f"{rnd}:{i}".encode()))

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert wins.count(True) == 1, f"round {rnd}: {wins.count(True)} winners"


def test_missing_bucket_is_a_clear_error(s3_env):
    store = open_store(f"s3://no-such-bucket-{int(time.time())}/runs/x")
    with pytest.raises(StoreError, match="bucket .*does not exist"):
        store.put("k", b"v")


def test_calls_ride_out_an_endpoint_that_refuses_connections(monkeypatch):
    s3 = MotoS3()
    try:
        for k, v in s3.env.items():
            monkeypatch.setenv(k, v)
        store = open_store(s3.uri())
        store.put("before.json", b"1")
        s3.stop()
        out: dict = {}

        def during_outage():
            t0 = time.monotonic()
            out["created"] = store.create("during.json", b"2")
            out["get"] = store.get("before.json")
            out["seconds"] = time.monotonic() - t0

        t = threading.Thread(target=during_outage)
        t.start()
        time.sleep(5)
        assert t.is_alive(), "the call returned while the endpoint was down"
        s3.restart()
        t.join(60)
        assert out == {"created": True, "get": b"1", "seconds": pytest.approx(5, abs=4)}
        assert store.get("during.json") == b"2"
    finally:
        s3.stop()


def test_calls_ride_out_a_hung_endpoint(tmp_path, monkeypatch):
    """SIGSTOP: connections are accepted but never answered; requests time out (1 s here) and are retried;
    a create whose timed-out request landed later is recognised as this call's own write."""
    s3 = MotoSubprocess(tmp_path / "moto.log")
    try:
        for k, v in s3.env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("FLOWDPO_STORE_TIMEOUT", "1s")
        store = open_store(f"s3://{BUCKET}/runs/hung")
        store.put("before.json", b"1")
        s3.freeze()
        out: dict = {}

        def during_outage():
            out["created"] = store.create("during.json", b"mine")
            out["lost"] = store.create("during.json", b"theirs")
            out["get"] = store.get("before.json")

        t = threading.Thread(target=during_outage)
        t.start()
        time.sleep(5)
        assert t.is_alive()
        s3.thaw()
        t.join(60)
        assert out == {"created": True, "lost": False, "get": b"1"}
        assert store.get("during.json") == b"mine"
    finally:
        s3.close()


class _Listener:
    """An HTTP endpoint a run file could name: records the headers of every request and answers each with
    `status` and an S3 error document (404 NoSuchKey by default)."""

    def __init__(self, status: int = 404, code: str = "NoSuchKey"):
        import http.server
        import threading

        seen = self.headers = []
        body = f"<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>no</Message></Error>".encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                seen.append(dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_HEAD = _answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.mark.parametrize("secret_keys", [False, True], ids=["secret-without-keys", "secret-with-keys"])
def test_a_store_built_from_a_secret_never_lends_the_process_identity(monkeypatch, secret_keys):
    """The operator reads a run's storage with the run's Secret. Its own identity (here AWS_* variables of
    the process; in a cluster also IRSA and instance metadata) must never sign a request to an endpoint
    the run names."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "OPERATORKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "OPERATORTOKEN")
    listener = _Listener()
    try:
        env = {"AWS_ENDPOINT_URL": listener.url}
        if secret_keys:
            env.update({"AWS_ACCESS_KEY_ID": "RUNKEY", "AWS_SECRET_ACCESS_KEY": "run-secret"})
        store = ObjectStore("s3://bucket/run", retry_seconds=1, create=False, env=env)
        assert store.get_json_or(RunLayout.progress) is None
    finally:
        listener.close()
    assert listener.headers, "the request reached the run's endpoint"
    for headers in listener.headers:
        text = repr(headers)
        assert "OPERATORKEY" not in text and "OPERATORTOKEN" not in text
        auth = {k.lower(): v for k, v in headers.items()}.get("authorization")
        assert (auth is not None and "Credential=RUNKEY/" in auth) if secret_keys else auth is None


def test_access_denied_fails_fast_with_a_message():
    """A 403 is not an outage: no retries for the store's whole budget, a StoreError saying what to check."""
    listener = _Listener(403, "AccessDenied")
    try:
        env = {"AWS_ENDPOINT_URL": listener.url, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
        store = ObjectStore("s3://bucket/run", retry_seconds=300, create=False, env=env)
        with pytest.raises(StoreError, match="access denied or no valid credentials"):
            store.get(RunLayout.progress)
    finally:
        listener.close()
    assert len(listener.headers) == 1


def test_a_missing_bucket_is_not_a_missing_object(s3_env):
    """`flowdpo status` and the operator must say the bucket is missing, not "no progress.json yet"."""
    bucketless = s3_env.uri().replace(f"s3://{BUCKET}/", "s3://no-such-bucket-here/")
    store = open_store(bucketless, create=False)
    with pytest.raises(StoreError, match="bucket .*does not exist"):
        store.get_json_or(RunLayout.progress)


def test_credential_errors_are_classified_by_their_message_not_the_debug_dump():
    from obstore.exceptions import GenericError

    from flowdpo.storage.store import _classify

    dump = "\n\nDebug source:\nRetryError { retry_timeout: 30s, timeout: Some(30s), connection: ... }"
    assert _classify(GenericError("Generic S3 error: Error getting credentials from instance metadata" + dump)) == "auth"
    assert _classify(GenericError("Generic S3 error: bad configuration value" + dump)) == "other"
    assert _classify(GenericError("Generic S3 error: error sending request for url" + dump)) == "transient"


@pytest.mark.parametrize(
    ("key", "blob", "where"),
    [
        (RunLayout.progress, b"{truncated", RunLayout.progress),
        (RunLayout.results(3), b'{"exampleId": "a"}\n\xff\xfe\n', RunLayout.results(3)),
        (RunLayout.results(4), b'{"exampleId": "a"}\n[1, 2]\n', f"{RunLayout.results(4)} line 2"),
    ],
)
def test_corrupt_objects_on_s3_are_named(s3_env, key, blob, where):
    """A damaged object on the S3 API reads as CorruptObjectError naming its key (and line), never a raw
    JSONDecodeError; the object itself is left as it is."""
    from flowdpo.storage import CorruptObjectError

    store = open_store(s3_env.uri())
    store.put(key, blob)
    read = store.get_json if key.endswith(".json") else store.get_jsonl
    with pytest.raises(CorruptObjectError, match=re.escape(where)):
        read(key)
    assert store.get(key) == blob
