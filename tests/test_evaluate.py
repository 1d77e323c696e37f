import numpy as np

from tasklift.evaluate import accuracy, confusion, per_class


def test_accuracy_confusion_and_per_class_from_logits_or_labels():
    y = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 2, 2, 0])
    logits = np.eye(3)[pred]
    assert accuracy(logits, y) == accuracy(pred, y) == 4 / 6
    cm = confusion(pred, y, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]] and cm.sum() == 6
    rows = {r["class"]: r for r in per_class(pred, y, ["a", "b", "c"])}
    assert rows["a"]["precision"] == 0.5 and rows["a"]["recall"] == 0.5
    assert rows["b"]["precision"] == 0.5 and rows["b"]["recall"] == 1.0
    assert rows["c"]["precision"] == 1.0 and rows["c"]["f1"] == 2 * (2 / 3) / (1 + 2 / 3)
    empty = per_class(np.array([0]), np.array([0]), ["a", "b"])[1]
    assert empty["support"] == 0 and empty["precision"] is None and empty["recall"] is None
