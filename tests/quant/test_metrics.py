import math

import pytest
import torch

from blockfp8.quant import metrics


def test_known_values():
    ref = torch.tensor([3.0, 4.0])  # norm 5
    test = ref + torch.tensor([0.3, 0.4])  # error norm 0.5
    assert metrics.rel_fro_error(ref, test) == pytest.approx(0.1)
    assert metrics.sqnr_db(ref, test) == pytest.approx(20.0)
    assert metrics.snr_bits(ref, test) == pytest.approx(math.log2(10.0))
    assert metrics.max_abs_error(ref, test) == pytest.approx(0.4)


def test_calc_diff_matches_definition_and_is_zero_for_equal():
    x, y = torch.randn(100), torch.randn(100)
    expected = 1 - 2 * float((x.double() * y.double()).sum()) / float((x.double() ** 2 + y.double() ** 2).sum())
    assert metrics.calc_diff(x, y) == pytest.approx(expected)
    assert metrics.calc_diff(x, x) == pytest.approx(0.0, abs=1e-15)
    assert metrics.calc_diff(x, -x) == pytest.approx(2.0)


def test_identical_tensors_have_infinite_snr_and_zero_error():
    x = torch.randn(10)
    assert metrics.sqnr_db(x, x) == math.inf and metrics.rel_fro_error(x, x) == 0.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.sqnr_db(torch.zeros(3), torch.zeros(4))
