"""An eval row's block checkpoint (eval/partial/<row>.json): what it gives back, and that a damaged or foreign
one is not used (the row is answered again from its start, nothing is lost)."""

from __future__ import annotations

import random

import pytest
import torch

from flowdpo.compile.eval_answers import RowCheckpoint
from flowdpo.storage import open_store

KEY = "eval/partial/row.json"


def _store(tmp_path):
    return open_store(f"file://{tmp_path / 'run'}")


def test_a_one_pass_row_saves_no_python_random_state(tmp_path):
    store = _store(tmp_path)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    RowCheckpoint(store, KEY, "fp").save([{"answer": "a"}], 1, state)
    answers, nxt, torch_state, python_state = RowCheckpoint(store, KEY, "fp").load()
    assert (answers, nxt, python_state) == ([{"answer": "a"}], 1, None)
    assert torch.equal(torch_state, state)


def test_a_flow_row_gets_both_random_states_back(tmp_path):
    store = _store(tmp_path)
    rng = random.Random(5)
    rng.random()
    RowCheckpoint(store, KEY, "fp").save([], 2, torch.get_rng_state(), rng.getstate())
    *_, python_state = RowCheckpoint(store, KEY, "fp").load()
    again = random.Random()
    again.setstate(python_state)
    assert again.random() == rng.random()


@pytest.mark.parametrize(
    "blob",
    [
        b"not json",
        b"[]",
        b'{"fingerprint": "fp", "next": 1, "answers": []}',  # no random state
        b'{"fingerprint": "fp", "next": "x", "answers": [], "torchRng": "", "pythonRng": null}',
        b'{"fingerprint": "fp", "next": 1, "answers": [], "torchRng": "%%%", "pythonRng": null}',
        b'{"fingerprint": "fp", "next": 1, "answers": [], "torchRng": "", "pythonRng": [1, 2]}',
    ],
)
def test_a_damaged_checkpoint_is_not_used(tmp_path, blob):
    store = _store(tmp_path)
    store.put(KEY, blob)
    assert RowCheckpoint(store, KEY, "fp").load() is None


def test_another_rows_checkpoint_is_not_used(tmp_path):
    store = _store(tmp_path)
    RowCheckpoint(store, KEY, "fp").save([], 1, torch.get_rng_state())
    assert RowCheckpoint(store, KEY, "other settings").load() is None
