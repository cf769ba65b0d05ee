"""Top-k classes of score rows and their labels."""

from __future__ import annotations

import numpy as np

from triserve.vision.topk import label, top_indices


def test_top_indices_are_largest_first_per_row():
    rows = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.9]], dtype=np.float32)
    assert top_indices(rows, 2).tolist() == [[1, 2], [2, 0]]


def test_equal_values_keep_their_index_order():
    rows = np.array([[0.2, 0.5, 0.2, 0.5]])
    assert top_indices(rows, 4).tolist() == [[1, 3, 0, 2]]


def test_k_beyond_the_row_gives_the_whole_row():
    assert top_indices(np.array([[1, 3, 2]]), 10).tolist() == [[1, 2, 0]]


def test_unsigned_and_extreme_integers_sort_by_value():
    assert top_indices(np.array([[0, 255, 1]], dtype=np.uint8), 3).tolist() == [[1, 2, 0]]
    ints = np.array([[np.iinfo(np.int32).min, 0, np.iinfo(np.int32).max]], dtype=np.int32)
    assert top_indices(ints, 3).tolist() == [[2, 1, 0]]


def test_labels_from_a_list_are_by_position():
    assert label(["tench", "goldfish"], 1) == "goldfish"
    assert label(["tench", "goldfish"], 2) is None


def test_labels_from_a_mapping_are_by_the_index_as_text():
    mapping = {"0": "tench", "1": "goldfish"}
    assert label(mapping, 0) == "tench"
    assert label(mapping, 5) is None


def test_no_labels_give_no_label():
    assert label(None, 0) is None
    assert label([], 0) is None
