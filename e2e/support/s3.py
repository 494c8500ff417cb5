"""S3 for the e2e tests: the unit tests' moto server (tests/support/s3util.py, reused as is) plus what a cluster
needs on top: the storage Secret a FlowDPORun names in spec.storage.secretName, and reading objects back."""

from __future__ import annotations

import json

import kubernetes

from tests.support.s3util import BUCKET, CREDENTIALS, MotoS3

__all__ = ["BUCKET", "CREDENTIALS", "MotoS3", "create_storage_secret", "read_json"]


def create_storage_secret(api: kubernetes.client.ApiClient, namespace: str, s3: MotoS3,
                          name: str = "flowdpo-storage") -> str:
    """A Secret whose keys are the AWS_* variables that reach the moto endpoint (pods get it via envFrom)."""
    kubernetes.client.CoreV1Api(api).create_namespaced_secret(namespace, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
        "stringData": dict(s3.env),
    })
    return name


def _split(uri: str, key: str) -> tuple[str, str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return bucket, f"{prefix.rstrip('/')}/{key}"


def read_json(s3: MotoS3, uri: str, key: str) -> dict | None:
    """Object `key` under the run prefix `uri` (s3://bucket/prefix), parsed; None if it does not exist."""
    bucket, full_key = _split(uri, key)
    client = s3.client()
    try:
        body = client.get_object(Bucket=bucket, Key=full_key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    return json.loads(body)
