"""The operator reads progress.json from a REAL S3 endpoint (moto's server) with credentials given as a
mapping (a run's Secret), never from or into its own environment; failures come back as observations."""

from __future__ import annotations

import os
import threading
import time

import pytest

from flowdpo.storage import RunLayout, open_store
from flowdpo_operator.progress import read_progress
from tests.support.s3util import BUCKET


@pytest.fixture
def clean_env(monkeypatch):
    """No AWS_* in the process: only the mapping can make the reads work."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)


def test_reads_progress_with_the_secrets_credentials_only(moto_s3, clean_env):
    uri = moto_s3.uri("progress-read")
    open_store(uri, env=moto_s3.env).put_json(RunLayout.progress, {"phase": "Training", "examples": 3})
    before = dict(os.environ)
    seen = read_progress(uri, moto_s3.env)
    assert seen.reachable and seen.progress == {"phase": "Training", "examples": 3} and not seen.error
    assert dict(os.environ) == before  # nothing leaked into the operator's environment


def test_not_written_yet_is_reachable_without_progress(moto_s3, clean_env):
    seen = read_progress(moto_s3.uri("nothing-yet"), moto_s3.env)
    assert seen.reachable and seen.progress is None


def test_concurrent_reads_with_different_credentials_do_not_mix(moto_s3, clean_env):
    """Two runs' Secrets in two threads: each read uses its own endpoint (one of them is wrong)."""
    uri = moto_s3.uri("two-secrets")
    open_store(uri, env=moto_s3.env).put_json(RunLayout.progress, {"phase": "Training"})
    wrong = {**moto_s3.env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    results: dict[str, object] = {}

    def read(key, env):
        results[key] = read_progress(uri, env, retry_seconds=1.0)

    threads = [threading.Thread(target=read, args=(k, e)) for k, e in (("good", moto_s3.env), ("bad", wrong))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["good"].reachable and results["good"].progress == {"phase": "Training"}
    assert not results["bad"].reachable and results["bad"].error


def test_an_unreachable_endpoint_is_reported_quickly(clean_env):
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    t0 = time.monotonic()
    seen = read_progress(f"s3://{BUCKET}/runs/x", env, retry_seconds=1.0)
    assert not seen.reachable and seen.progress is None and seen.error
    assert time.monotonic() - t0 < 10  # a handler thread is not held for the store's default 300 s


def test_a_corrupt_progress_json_is_an_error_not_an_exception(moto_s3, clean_env):
    uri = moto_s3.uri("corrupt")
    open_store(uri, env=moto_s3.env).put(RunLayout.progress, b"{not json")
    seen = read_progress(uri, moto_s3.env)
    assert seen.reachable and seen.progress is None and "not valid JSON" in seen.error


def test_gcs_and_azure_keys_of_the_secret_reach_the_store(clean_env):
    """Non-S3 Secrets are passed through by prefix: a malformed service-account key is obstore's error about
    that key (proof it was used), reported as unreachable storage."""
    seen = read_progress("gs://bucket/runs/x", {"GOOGLE_SERVICE_ACCOUNT_KEY": "{}", "AWS_ACCESS_KEY_ID": "ignored"})
    assert not seen.reachable and "private_key" in seen.error
