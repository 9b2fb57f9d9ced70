"""Tree fingerprints notice any added, removed or changed entry, and nothing else."""

import os

from hcld_bids.testing import hash_tree, tree_snapshot


def _tree(root):
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f.txt").write_text("one")
    (root / "g.txt").write_text("two")
    return root


def test_snapshot_lists_dirs_files_and_links(tmp_path):
    root = _tree(tmp_path / "t")
    os.symlink("g.txt", root / "link")
    snap = tree_snapshot(root)
    assert sorted(snap) == ["a", "a/b", "a/b/f.txt", "g.txt", "link"]
    assert snap["a"] == "dir" and snap["link"] == "link:g.txt"
    assert len(snap["g.txt"]) == 64


def test_hash_changes_with_content_and_names_not_with_mtime(tmp_path):
    root = _tree(tmp_path / "t")
    before = hash_tree(root)
    os.utime(root / "g.txt", (0, 0))
    assert hash_tree(root) == before
    (root / "g.txt").write_text("changed")
    assert hash_tree(root) != before
    (root / "g.txt").write_text("two")
    assert hash_tree(root) == before
    (root / "a" / "new").mkdir()
    assert hash_tree(root) != before
