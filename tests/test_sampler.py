"""sample_indices: a pure function, checked exhaustively on the sizes that matter."""

import numpy as np
import pytest

from pipeline.video import sample_indices

SIZES = [1, 2, 7, 80]


def _cases():
    for n in SIZES:
        for n_total in sorted({1, max(n - 1, 1), n, n + 1, 10 * n}):
            yield n_total, n


@pytest.mark.parametrize("n_total,n", list(_cases()))
def test_sampler_properties(n_total, n):
    idx = sample_indices(n_total, n)
    assert idx.shape == (n,) and idx.dtype == np.int64
    assert idx.min() >= 0 and idx.max() < n_total
    assert np.all(np.diff(idx) >= 0), "indices must be in order"
    if n_total >= n:
        assert len(set(idx.tolist())) == n, "no frame repeats when the clip is long enough"
    else:
        assert set(idx.tolist()) == set(range(n_total)), "a short clip repeats every frame"
    # uniform: each index is the middle of its segment, to within one frame
    centres = (np.arange(n) + 0.5) * n_total / n
    assert np.all(np.abs(idx - centres) <= 1.0)


def test_sampler_worked_examples():
    assert sample_indices(1, 80).tolist() == [0] * 80
    assert sample_indices(10, 5).tolist() == [1, 3, 5, 7, 9]
    assert sample_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]
    assert sample_indices(800, 80).tolist() == list(range(5, 800, 10))


@pytest.mark.parametrize("n_total,n", [(0, 80), (10, 0), (-1, 5)])
def test_sampler_rejects_empty(n_total, n):
    with pytest.raises(ValueError):
        sample_indices(n_total, n)
