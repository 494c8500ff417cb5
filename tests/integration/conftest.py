"""Fixtures of the integration tests: a real S3 API (moto's server mode, one per test module) and its
credentials in the environment."""

import pytest

from tests.support.s3util import MotoS3


@pytest.fixture(scope="module", name="moto_s3")
def moto_s3_fixture():
    s3 = MotoS3()
    yield s3
    s3.stop()


@pytest.fixture(name="s3_env")
def s3_env_fixture(moto_s3, monkeypatch):
    """The AWS_* variables of the module's moto server in this process's environment."""
    for k, v in moto_s3.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return moto_s3
