import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_RUN = """
apiVersion: flowdpo.dev/v1alpha1
kind: FlowDPORun
metadata: {{name: {name}}}
spec:
  flow: {{chunkTokens: 20, maxChunks: 3, temperature: 1.0}}
  training: {{learningRate: 1.0e-3, beta: 0.5, batchSize: 4, microBatchSize: 4}}
  data: {{numExamples: {n}, shardSize: {shard}, seed: 3}}
  rollout: {{batchExamples: {shard}}}
  baselines: {{untrainedFlow: {baselines}, zeroShot: {baselines}}}
  storage: {{uri: "{uri}"}}
  seed: 1
"""


@pytest.fixture
def tiny_run_file(tmp_path):
    """Write a tiny real-model run file; returns a factory (name, n, shard, baselines) -> path."""

    def make(name="tiny", n=6, shard=3, baselines="false", uri=None):
        path = tmp_path / f"{name}.yaml"
        uri = uri or f"file://{tmp_path}/runs/{name}"
        path.write_text(TINY_RUN.format(name=name, n=n, shard=shard, baselines=baselines, uri=uri))
        return path

    return make
