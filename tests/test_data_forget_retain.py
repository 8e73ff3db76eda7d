"""The data of an unlearning run (``jaxunlearn.data.forget_retain``): encoded views, their
errors, and which forget and retain rows each update pairs."""

import numpy as np
import pytest

from jaxunlearn.data.batch import epoch_rows
from jaxunlearn.data.forget_retain import IDK_FALLBACK, PairedSchedule, prepare_data
from jaxunlearn.errors import DataError


def test_paired_schedule_is_deterministic_and_covers_every_forget_row():
    s = PairedSchedule(n_forget=10, n_retain=7, rows=4, seed=3)
    assert s.steps_per_epoch == 3
    f0, r0 = s.forget_rows(0), s.retain_rows(0)
    assert f0.shape == r0.shape == (3, 4)
    assert set(f0.ravel()) == set(range(10)) and set(r0.ravel()) <= set(range(7))
    np.testing.assert_array_equal(s.forget_rows(0), f0)  # resume sees the same batches
    np.testing.assert_array_equal(s.retain_rows(0), r0)
    assert not np.array_equal(s.forget_rows(1), f0)
    # The one row order of every loop (data.batch.epoch_rows).
    np.testing.assert_array_equal(f0, epoch_rows(10, 4, seed=3, epoch=0))
    # Retain rows are whole permutations back to back: no row repeats before all are used.
    assert len(set(r0.ravel()[:7])) == 7
    assert s.epochs(7) == 3 and s.epochs(6) == 2
    used = s.retain_used(4)  # epochs 0 and 1
    np.testing.assert_array_equal(used, np.unique(np.r_[r0.ravel(), s.retain_rows(1).ravel()]))


def test_prepare_data_views_and_errors(toy_target):
    _, tok, forget, retain, _, _ = toy_target
    no_idk = [{k: v for k, v in r.items() if k != "idk_answer"} for r in forget]
    data = prepare_data(tok, no_idk, retain, views=("answer", "idk"), max_len=64)
    assert set(data.forget) == {"answer", "idk"} and len(data.forget["idk"]) == len(forget)
    first_idk = tok.decode(data.forget["idk"][0].token_ids[data.forget["idk"][0].counted > 0])
    assert IDK_FALLBACK[0] in first_idk
    assert data.pad_id == tok.pad_token_id
    with pytest.raises(DataError, match=r"forget split.*max_len"):
        prepare_data(tok, forget, retain, max_len=4)
    with pytest.raises(DataError, match=r"retain split.*answer"):
        prepare_data(tok, forget, [{"question": "q?"}], max_len=64)
    with pytest.raises(DataError, match=r"forget split: no records"):
        prepare_data(tok, [], retain, max_len=64)
