"""Retrieval metrics against a ranking worked out by hand.

Six points on a line (l2 distance, so every neighbour list is fixed, no ties):

    row    0  1  2  3  4   5
    x      0  1  3  7  12  16
    label  A  A  B  A  A   B

Leave-one-out, k=2 (relevant = same label; A has 3 other A rows, B has 1 other B row):

    query  neighbours  relevant  P@1  P@2  AP@2                 R@2  hit@2
    0 (A)  1 A, 2 B    1 0       1    1/2  (1/1)/min(2,3)=1/2   1/3  1
    1 (A)  0 A, 2 B    1 0       1    1/2  1/2                  1/3  1
    2 (B)  1 A, 0 A    0 0       0    0    0                    0    0
    3 (A)  2 B, 4 A    0 1       0    1/2  (1/2)/2=1/4          1/3  1
    4 (A)  5 B, 3 A    0 1       0    1/2  1/4                  1/3  1
    5 (B)  4 A, 3 A    0 0       0    0    0                    0    0
    mean                         1/3  1/3  1/4                  2/9  2/3
"""

import numpy as np
import pytest

from featx.retrieval.index import build_index
from tests.conftest import make_feature_store

X = np.array([[0, 0], [1, 0], [3, 0], [7, 0], [12, 0], [16, 0]], dtype=np.float32)
LABELS = ["A", "A", "B", "A", "A", "B"]


@pytest.fixture
def line_index(tmp_path):
    return build_index(make_feature_store(tmp_path / "store", X, LABELS), kind="flat", metric="l2")


def test_neighbour_lists_are_the_hand_computed_ones(line_index):
    expected = {0: [1, 2], 1: [0, 2], 2: [1, 0], 3: [2, 4], 4: [5, 3], 5: [4, 3]}
    results = line_index.search(None, 2, rows=list(expected), exclude_self=True)
    got = {q: results.loc[results["query"] == line_index.store.paths[q], "row_id"].tolist() for q in expected}
    assert got == expected


def test_metrics_match_the_hand_computed_values(line_index):
    metrics = line_index.evaluate(k=2)
    assert metrics["queries"] == 6 and metrics["k"] == 2
    assert metrics["precision@1"] == pytest.approx(1 / 3)
    assert metrics["precision@k"] == pytest.approx(1 / 3)
    assert metrics["map@k"] == pytest.approx(1 / 4)
    assert metrics["recall@k"] == pytest.approx(2 / 9)
    assert metrics["hit_rate@k"] == pytest.approx(2 / 3)
