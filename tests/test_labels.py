import itertools

import numpy as np
import pytest

from maskcomp.core import labels


def test_all_18_combinations_round_trip():
    seen = set()
    for mask, gender, age in itertools.product(range(3), range(2), range(3)):
        label = labels.encode(mask, gender, age)
        assert label == mask * 6 + gender * 3 + age
        assert labels.decode(label) == (mask, gender, age)
        seen.add(label)
    assert seen == set(range(18))


def test_vectorised_encode_decode():
    y = np.arange(18)
    m, g, a = labels.decode(y)
    assert np.array_equal(labels.encode(m, g, a), y)


@pytest.mark.parametrize("age,group", [(18, 0), (29, 0), (30, 1), (59, 1), (60, 2), (61, 2), (90, 2)])
def test_age_boundaries(age, group):
    assert labels.age_group(age) == group


def test_training_threshold_moves_only_the_old_boundary():
    assert labels.age_group(58, old_threshold=58) == 2
    assert labels.age_group(57, old_threshold=58) == 1
    assert labels.age_group(29, old_threshold=58) == 0


def test_image_stems_map_to_mask_status():
    assert [labels.IMAGE_MASK_STATUS[f"mask{i}"] for i in range(1, 6)] == [0] * 5
    assert labels.IMAGE_MASK_STATUS["incorrect_mask"] == 1
    assert labels.IMAGE_MASK_STATUS["normal"] == 2


def test_head_marginals_of_18_probs():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(18), size=5)
    heads = labels.head_probs_from_18(p)
    for k, n in labels.HEADS.items():
        assert heads[k].shape == (5, n)
        assert np.allclose(heads[k].sum(1), 1)
    assert np.allclose(heads["mask"][:, 1], p[:, 6:12].sum(1))
    assert np.allclose(heads["gender"][:, 1], p[:, [3, 4, 5, 9, 10, 11, 15, 16, 17]].sum(1))


def test_short_class_names_for_plot_axes():
    assert [labels.short_name(c) for c in (0, 2, 9, 17)] == ["0 W/M/<30", "2 W/M/60+", "9 I/F/<30", "17 N/F/60+"]
