import pytest
import torch

from tasklift.io import atomic_dir, atomic_path, load_tensors, save_tensors, write_text


def test_tensors_round_trip_with_metadata(tmp_path):
    save_tensors(tmp_path / "t.safetensors", {"w": torch.arange(6.0).reshape(2, 3)}, {"k": [1, 2]})
    tensors, meta = load_tensors(tmp_path / "t.safetensors")
    assert torch.equal(tensors["w"], torch.arange(6.0).reshape(2, 3)) and meta == {"k": [1, 2]}


def test_a_failed_write_leaves_neither_a_file_nor_a_temp(tmp_path):
    write_text(tmp_path / "keep.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "keep.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "a").write_text("half")
        raise RuntimeError("interrupted")
    assert (tmp_path / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"\x80\x04K\x01.", b"{not json"])
def test_unreadable_files_are_value_errors_naming_the_file(tmp_path, content):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_tensors(bad)


def test_outputs_honour_the_umask(tmp_path):
    import os

    from tasklift.io import atomic_dir, write_text

    old = os.umask(0o027)
    try:
        write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640  # mkstemp alone gives 0600
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750
