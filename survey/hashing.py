"""Content keys: every unit of work and every stored array is named by a hash of what it depends on."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

_CHUNK = 1 << 22
KEY_HEX = 16  # hex digits kept in ids and part names (64 bits: collisions are not a concern at survey scale)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal configs hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def stable_hash(*parts: Any) -> str:
    """Full sha256 hex of the canonical JSON of `parts`."""
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()


def content_key(prefix: str, *parts: Any) -> str:
    """A readable id such as ``net-3f2a…``: `prefix` plus the leading hex digits of `stable_hash(parts)`."""
    return f"{prefix}-{stable_hash(*parts)[:KEY_HEX]}"


def array_hash(*arrays: np.ndarray) -> str:
    """sha256 hex over the dtype, shape and bytes of each array in turn."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.data)
    return digest.hexdigest()


def file_hash(path: str | os.PathLike) -> str:
    """sha256 hex of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
