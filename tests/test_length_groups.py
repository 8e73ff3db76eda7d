"""train.length_groups: the padded lengths chosen, and length-grouped batch sources."""

import numpy as np

from jaxunlearn.data.batch import Encoded
from jaxunlearn.train.length_groups import choose_lengths, grouped_source


def test_choose_lengths_hand_worked():
    lengths = [10, 12, 30, 100]
    # Without a compilation cost {32, 112} pads to 32 + 32 + 32 + 112 = 208 tokens, fewer
    # than any other pair; {112} alone pads to 448.
    assert choose_lengths(lengths, compile_tokens=0, max_shapes=2) == (32, 112)
    assert choose_lengths(lengths, compile_tokens=0, max_shapes=1) == (112,)
    # 208 + 2 * 100 < 448 + 100, but 208 + 2 * 300 > 448 + 300.
    assert choose_lengths(lengths, compile_tokens=100) == (32, 112)
    assert choose_lengths(lengths, compile_tokens=300) == (112,)
    # Ten epochs of padding outweigh the compilation: 10 * 208 + 600 < 10 * 448 + 300.
    assert choose_lengths(lengths, compile_tokens=300, epochs=10, max_shapes=2) == (32, 112)
    # A third shape {16, 32, 112}: 10 * 176 + 900 = 2660 < 2680.
    assert choose_lengths(lengths, compile_tokens=300, epochs=10) == (16, 32, 112)
    assert choose_lengths([5, 5]) == (16,)


def test_grouped_source_is_deterministic_and_covers_every_sequence():
    lengths = [5, 9, 30, 31, 7, 40, 3, 33, 8, 6]
    enc = [Encoded(np.arange(n + 1, dtype=np.int32) + 100 * i, np.ones(n + 1, np.float32))
           for i, n in enumerate(lengths)]
    src = grouped_source(enc, 3, seed=1, pad_id=0, lengths=(16, 48))
    assert src.steps_per_epoch == 2 + 2  # 6 short -> 2 batches, 4 long -> 2 (wrapped)
    e0 = list(src.epoch_batches(0))
    assert len(e0) == src.steps_per_epoch
    seen = set()
    for b in e0:
        real = b.attention_mask.sum(1)
        assert b.input_ids.shape[1] in (16, 48)
        assert (real <= b.input_ids.shape[1]).all() and (b.input_ids.shape[1] == 16) == (real <= 16).all()
        seen |= {int(r[0]) // 100 for r in b.input_ids}
    assert seen == set(range(len(lengths)))
    again = list(src.epoch_batches(0))
    assert all(np.array_equal(a.input_ids, b.input_ids) for a, b in zip(e0, again))
    def rows(batches):
        return [int(r[0]) // 100 for b in batches for r in b.input_ids]

    assert rows(src.epoch_batches(1)) != rows(e0)  # reshuffled every epoch

    # A sequence inactive in an epoch keeps its row but has no loss there.
    gated = grouped_source(enc, 3, seed=1, pad_id=0, lengths=(16, 48),
                                active=lambda epoch: [i != 2 or epoch == 1 for i in range(10)])
    for epoch in (0, 1):
        batches = list(gated.epoch_batches(epoch))
        assert len(batches) == src.steps_per_epoch
        assert rows(batches) == rows(src.epoch_batches(epoch))
        for b, plain in zip(batches, src.epoch_batches(epoch)):
            np.testing.assert_array_equal(b.input_ids, plain.input_ids)
            is_2 = (b.input_ids[:, 0] // 100 == 2)
            np.testing.assert_array_equal(b.loss_mask[~is_2], plain.loss_mask[~is_2])
            assert (b.loss_mask[is_2].sum() > 0) == (epoch == 1 and plain.loss_mask[is_2].sum() > 0)
