"""The oracle's mask reproduces SPEC.md's worked examples (L = 10, one axis)."""
import pytest

from na_reference import axis_keys, neighborhood_mask

SPEC_EXAMPLES = [  # (k, s, d, causal, {query: keys})
    (3, 1, 1, False, {0: [0, 1, 2], 5: [4, 5, 6], 9: [7, 8, 9]}),
    (4, 1, 1, False, {5: [3, 4, 5, 6], 0: [0, 1, 2, 3], 9: [6, 7, 8, 9]}),
    (4, 2, 1, False, {4: [3, 4, 5, 6], 5: [3, 4, 5, 6], 8: [6, 7, 8, 9], 9: [6, 7, 8, 9]}),
    (3, 1, 2, False, {0: [0, 2, 4], 1: [1, 3, 5], 8: [4, 6, 8], 9: [5, 7, 9]}),
    (3, 1, 1, True, {0: [0], 1: [0, 1], 5: [3, 4, 5]}),
    (4, 2, 1, True, {4: [2, 3, 4], 5: [2, 3, 4, 5]}),
    (5, 5, 1, False, {**{i: [0, 1, 2, 3, 4] for i in range(5)},
                      **{i: [5, 6, 7, 8, 9] for i in range(5, 10)}}),
]


@pytest.mark.parametrize("k,s,d,causal,expected", SPEC_EXAMPLES)
def test_spec_worked_examples(k, s, d, causal, expected):
    for i, keys in expected.items():
        assert axis_keys(i, 10, k, s, d, causal) == keys


def test_product_mask_is_per_axis_and():
    m = neighborhood_mask((4, 5), (2, 3), is_causal=(True, False))
    for qi in range(20):
        for kj in range(20):
            (a0, a1), (b0, b1) = divmod(qi, 5), divmod(kj, 5)
            want = b0 in axis_keys(a0, 4, 2, causal=True) and b1 in axis_keys(a1, 5, 3)
            assert bool(m[qi, kj]) == want
