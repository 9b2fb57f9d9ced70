"""Helpers for tests and demos: small real-data BIDS datasets and directory-tree fingerprints."""

from .dataset import SCANNERS, find_scans_dir, make_bids_dataset
from .tree import hash_tree, tree_snapshot

__all__ = ["SCANNERS", "find_scans_dir", "make_bids_dataset", "hash_tree", "tree_snapshot"]
