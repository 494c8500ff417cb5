"""Metric names are defined once and served over HTTP in the Prometheus text format."""

import socket
import urllib.request

from flowdpo.metrics import Metrics


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_are_served_with_run_and_adapter_labels():
    m = Metrics("r1")
    m.set_phase("Training")
    m.observe_example({"rollouts": 5, "endReason": "eos"})
    m.observe_example({"rollouts": 2, "endReason": "max_chunks"})
    m.observe_example({"rollouts": 0, "endReason": "max_chunks"})
    m.observe_tokens(100)
    m.observe_tokens(20)
    m.observe_shard([{"adapter": "answer"}, {"adapter": "stop", "chosenText": "no"}, {"adapter": "answer"},
                     {"adapter": "stop", "chosenText": "no"}])
    port = _free_port()
    m.serve(port)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'flowdpo_pairs_mined_total{adapter="answer",run="r1"} 2.0' in text
    assert 'flowdpo_rollouts_total{run="r1"} 7.0' in text
    assert 'flowdpo_examples_rolled_out_total{run="r1"} 3.0' in text
    # How main chains end and which side Stop pairs teach: both outcomes exported from 0, so a Stop LLM that
    # never says yes and pairs that only teach "no" show as series that stay at 0.
    assert 'flowdpo_flow_ends_total{reason="max_chunks",run="r1"} 2.0' in text
    assert 'flowdpo_flow_ends_total{reason="stop",run="r1"} 0.0' in text
    assert 'flowdpo_stop_pairs_total{chosen="no",run="r1"} 2.0' in text
    assert 'flowdpo_stop_pairs_total{chosen="yes",run="r1"} 0.0' in text
    assert 'flowdpo_tokens_generated_total{run="r1"} 120.0' in text
    assert 'flowdpo_run_phase{phase="Training",run="r1"} 1.0' in text
    assert 'flowdpo_run_phase{phase="Succeeded",run="r1"} 0.0' in text
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert all(n.startswith("flowdpo_") for n in names)
