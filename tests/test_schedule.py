"""Scheduled sampling: the seed's 100 printed values, and the other schedules."""

import re

import numpy as np
import pytest

from conftest import ROOT, needs_shared
from pipeline.schedule import constant, inverse_sigmoid, linear, per_epoch


def seed_printed_schedule() -> np.ndarray:
    """The `probs = [...]` block of the seed's README, as it printed it."""
    text = (ROOT.parent / "shared" / "seed" / "README.md").read_text()
    block = re.search(r"probs = \s*\[(.*?)\]", text, re.S).group(1)
    return np.array([float(x) for x in block.split()])


@needs_shared
def test_inverse_sigmoid_equals_the_seed_for_all_100_epochs():
    seed = seed_printed_schedule()
    assert seed.shape == (100,)
    np.testing.assert_allclose(inverse_sigmoid(100), seed, rtol=0, atol=1e-8)
    assert inverse_sigmoid(100)[50] == 0.5


def test_other_schedules():
    assert constant(5).tolist() == [1.0] * 5
    assert linear(3).tolist() == [1.0, 0.75, 0.5]
    assert per_epoch("constant", 2).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="inverse_sigmoid"):
        per_epoch("cosine", 10)
