import numpy as np
import pytest

from jbert.ops.alibi import alibi_bias, alibi_slopes


@pytest.mark.parametrize("heads", [8, 16])
def test_power_of_two_slopes_are_geometric_from_2_pow_minus_8_over_n(heads):
    expected = [2.0 ** (-8.0 * (i + 1) / heads) for i in range(heads)]
    np.testing.assert_allclose(alibi_slopes(heads), expected, rtol=1e-6)


def test_eight_heads_hand_computed():
    np.testing.assert_allclose(alibi_slopes(8), [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64,
                                                 1 / 128, 1 / 256], rtol=1e-7)


def test_twelve_heads_interleave_the_sixteen_head_sequence():
    # 8 slopes of the 8-head sequence, then 16-head slopes 0, 2, 4, 6: 2^-0.5, 2^-1.5, ...
    expected = [2.0 ** -(i + 1) for i in range(8)] + [2.0 ** -(0.5 + i) for i in range(4)]
    np.testing.assert_allclose(alibi_slopes(12), expected, rtol=1e-6)


def test_six_heads_non_power_of_two():
    expected = [2.0 ** -(2 * (i + 1)) for i in range(4)] + [2.0 ** -1.0, 2.0 ** -3.0]
    np.testing.assert_allclose(alibi_slopes(6), expected, rtol=1e-6)


def test_bias_is_symmetric_with_zero_diagonal_and_linear_in_distance():
    slopes = alibi_slopes(12)
    positions = np.arange(37)
    bias = np.asarray(alibi_bias(slopes, positions, positions))
    assert bias.shape == (12, 37, 37)
    np.testing.assert_array_equal(bias, np.swapaxes(bias, 1, 2))
    np.testing.assert_array_equal(np.diagonal(bias, axis1=1, axis2=2), 0.0)
    np.testing.assert_allclose(bias[3, 5, 15], -slopes[3] * 10, rtol=1e-6)
    assert (bias[:, 0, 1:] < 0).all()


def test_rejects_non_positive_head_count():
    with pytest.raises(ValueError, match="num_heads"):
        alibi_slopes(0)
