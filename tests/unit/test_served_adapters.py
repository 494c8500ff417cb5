"""Which served name a request uses and when an old name may be unloaded (flowdpo/flow/served_adapters.py):
the vLLM backend's version rules without a server."""

import threading

import pytest

from flowdpo.flow.served_adapters import BASE_ZERO, ServedAdapters, lora_name


def test_version_zero_and_the_base_model_use_the_zero_adapter():
    names = ServedAdapters(BASE_ZERO)
    assert names.versions() == {"answer": 0, "stop": 0}
    assert names.acquire(None) == names.acquire("answer") == names.acquire("stop") == BASE_ZERO
    assert names.inflight() == {BASE_ZERO: 3}
    with pytest.raises(ValueError, match="unknown adapter"):
        names.acquire("critic")


def test_a_request_keeps_its_version_and_the_old_name_unloads_after_its_last_request():
    names = ServedAdapters(BASE_ZERO)
    assert names.switch("answer", 1, lora_name("answer", 1)) == []
    first = names.acquire("answer")
    second = names.acquire("answer")
    assert first == second == "answer-v1"
    # v2 arrives while two v1 requests run: new requests get v2, v1 is not handed out for unloading yet.
    assert names.switch("answer", 2, "answer-v2") == []
    assert names.acquire("answer") == "answer-v2" and names.versions()["answer"] == 2
    assert names.current() == {"answer": "answer-v2", "stop": BASE_ZERO}
    assert names.release(first) == []
    assert names.release(second) == ["answer-v1"]  # its last request ended
    assert names.take_retired("answer-v1") is True
    assert names.take_retired("answer-v1") is False  # handed out once
    assert names.take_retired("answer-v2") is False  # current names are never unloaded


def test_a_switch_hands_out_idle_retired_names_and_reloading_a_version_does_not_retire_it():
    names = ServedAdapters(BASE_ZERO)
    names.switch("stop", 1, "stop-v1")
    assert names.switch("stop", 2, "stop-v2") == ["stop-v1"]  # nothing was using v1
    assert names.switch("stop", 2, "stop-v2") == ["stop-v1"]  # same version again: v2 stays current
    assert names.take_retired("stop-v1") and not names.take_retired("stop-v2")


def test_concurrent_requests_and_switches_never_unload_a_name_in_use():
    names = ServedAdapters(BASE_ZERO)
    unloaded: list[str] = []
    lock = threading.Lock()
    in_use: dict[str, int] = {}
    errors: list[str] = []

    def unload(candidates):
        for n in candidates:
            if names.take_retired(n):
                with lock:
                    if in_use.get(n):
                        errors.append(n)
                    unloaded.append(n)

    def requests():
        for _ in range(300):
            n = names.acquire("answer")
            with lock:
                in_use[n] = in_use.get(n, 0) + 1
            with lock:
                in_use[n] -= 1
            unload(names.release(n))

    def trainer():
        for v in range(1, 60):
            unload(names.switch("answer", v, lora_name("answer", v)))

    threads = [threading.Thread(target=requests) for _ in range(4)] + [threading.Thread(target=trainer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(unloaded) == len(set(unloaded))  # each name unloaded at most once
    assert "answer-v59" not in unloaded and names.inflight() == {}


def test_a_pinned_chain_keeps_its_names_until_unpinned_and_only_then_the_old_name_unloads():
    names = ServedAdapters(BASE_ZERO)
    names.switch("answer", 1, "answer-v1")
    pin = names.pin()  # an example's chains start on answer v1 / stop v0
    assert pin == {"answer": "answer-v1", "stop": BASE_ZERO, None: BASE_ZERO}
    assert names.pinned_versions(pin) == {"answer": 1, "stop": 0}
    assert names.switch("answer", 2, "answer-v2") == []  # v1 still pinned between two of its requests
    assert names.acquire("answer") == "answer-v2"  # a chain started now gets v2
    later = names.pin()
    assert names.pinned_versions(later) == {"answer": 2, "stop": 0}
    assert not names.take_retired("answer-v1")
    assert names.unpin(pin) == ["answer-v1"]  # the last holder of v1 ended: safe to unload, once
    assert names.take_retired("answer-v1") and not names.take_retired("answer-v1")
    assert names.unpin(later) == []
    assert names.inflight() == {"answer-v2": 1}  # the plain request acquired above
