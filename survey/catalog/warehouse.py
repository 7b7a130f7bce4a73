"""The warehouse: Parquet tables and content-addressed array files under one root (any pyarrow filesystem).

Writers never expose a half-written file: every part or array is written under a temporary name that the
readers' glob skips (a leading dot and a ``.tmp`` suffix) and then renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from survey.catalog.schemas import PARTITIONS, TABLES
from survey.errors import SurveyError, one_line
from survey.hashing import array_hash

_PART = re.compile(r"^part-(.+)\.parquet$")
_COPY_CHUNK = 1 << 22


class Warehouse:
    """Root of the catalogs: ``<root>/<table>/part-<key>.parquet`` and ``<root>/arrays/<hash>.<ext>``.

    `uri` reopens the same warehouse in another process (an object-store URI keeps its query options, such
    as ``?endpoint_override=…``); array and file URIs in the tables are ``<scheme>://<path>`` (a plain
    absolute path for local warehouses) and are read through the warehouse's filesystem.
    """

    def __init__(self, uri: str | os.PathLike) -> None:
        uri = str(uri)
        if "://" in uri:
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(uri)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
                raise SurveyError(
                    f"warehouse {uri!r} cannot be opened ({one_line(err)}); "
                    "pass --warehouse a local directory or a URI pyarrow.fs understands (s3://, gs://, file://)"
                ) from None
            self._prefix = uri.split("://", 1)[0] + "://"
        else:
            self.fs, self.root, self._prefix = pafs.LocalFileSystem(), str(Path(uri).expanduser().absolute()), ""
        self.root = self.root.rstrip("/")
        self.uri = uri if self._prefix else self.root
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.File:
            raise SurveyError(f"warehouse {uri!r} is a file, not a directory; pass --warehouse a directory path or URI")

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def exists(self) -> bool:
        return self.fs.get_file_info(self.root).type == pafs.FileType.Directory

    def ensure_writable(self) -> None:
        """Create the root if needed; turn permission and filesystem errors into one clear line."""
        try:
            self.fs.create_dir(self.root, recursive=True)
            probe = f"{self.root}/.write-probe-{uuid.uuid4().hex}.tmp"
            with self.fs.open_output_stream(probe) as stream:
                stream.write(b"ok")
            self.fs.delete_file(probe)
        except (OSError, pa.ArrowException) as err:
            raise SurveyError(
                f"warehouse {self.uri!r} is not writable ({one_line(err)}); pass --warehouse a writable directory"
            ) from None

    # ---- tables -------------------------------------------------------------------------------------

    def table_dir(self, table: str) -> str:
        return f"{self.root}/{table}"

    def done_keys(self, table: str) -> set[str]:
        """Keys of the part files of `table` (one listing of the table's folder)."""
        selector = pafs.FileSelector(self.table_dir(table), recursive=True, allow_not_found=True)
        keys = set()
        for info in self.fs.get_file_info(selector):
            match = _PART.match(info.base_name)
            if match and info.type == pafs.FileType.File:
                keys.add(match.group(1))
        return keys

    def write_part(self, table: str, key: str, rows: list[dict]) -> int:
        """Write `rows` as the part file of unit `key` in `table` (staged, then renamed into place).

        In a partitioned table all rows of a part share the partition values, which name its folder.
        """
        data = pa.Table.from_pylist(rows, schema=TABLES[table])
        folder = self.table_dir(table)
        for column in PARTITIONS.get(table, ()):
            values = set(data.column(column).to_pylist())
            if len(values) != 1:
                raise ValueError(f"part {key} of {table} spans {column} values {sorted(values)}; write one per value")
            folder += f"/{column}={values.pop()}"
            data = data.drop_columns(column)
        final = f"{folder}/part-{key}.parquet"
        self._stage_and_move(final, lambda stream: pq.write_table(data, stream))
        return data.num_rows

    def read_table(self, table: str, columns: list[str] | None = None) -> pa.Table:
        """All rows of `table` (an empty table with the declared schema when nothing is written yet)."""
        schema = TABLES[table]
        if not self.done_keys(table):
            return schema.empty_table().select(columns) if columns else schema.empty_table()
        partition_columns = PARTITIONS.get(table, ())
        partitioning = pads.partitioning(
            pa.schema([schema.field(column) for column in partition_columns]), flavor="hive",
        ) if partition_columns else None
        dataset = pads.dataset(
            self.table_dir(table), schema=schema, format="parquet", filesystem=self.fs,
            exclude_invalid_files=False, ignore_prefixes=[".", "_"], partitioning=partitioning,
        )
        return dataset.to_table(columns=columns)

    def rows(self, table: str, columns: list[str] | None = None) -> list[dict]:
        return self.read_table(table, columns).to_pylist()

    # ---- arrays and files -----------------------------------------------------------------------------

    def put_array(self, array: np.ndarray) -> tuple[str, str]:
        """Store `array` as ``arrays/<hash>.npy`` (skipped when present); returns (uri, content hash)."""
        digest = array_hash(array)
        path = f"{self.root}/arrays/{digest[:32]}.npy"
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
            self._stage_and_move(path, lambda stream: stream.write(buffer.getbuffer()))
        return self._prefix + path, digest

    def put_file(self, local_path: str | os.PathLike, digest: str, suffix: str) -> str:
        """Copy a local file to ``arrays/<digest>.<suffix>`` (skipped when present); returns its uri."""
        path = f"{self.root}/arrays/{digest[:32]}{suffix}"
        if self.fs.get_file_info(path).type != pafs.FileType.File:

            def copy(stream: pa.NativeFile) -> None:
                with open(local_path, "rb") as source:
                    while chunk := source.read(_COPY_CHUNK):
                        stream.write(chunk)

            self._stage_and_move(path, copy)
        return self._prefix + path

    def put_bytes(self, relative_path: str, data: bytes) -> str:
        """Write `data` at ``<root>/<relative_path>`` (staged, then renamed); returns its uri."""
        path = f"{self.root}/{relative_path}"
        self._stage_and_move(path, lambda stream: stream.write(data))
        return self._prefix + path

    def read_bytes(self, uri: str) -> bytes:
        with self.fs.open_input_stream(self._path(uri)) as stream:
            return stream.read()

    def load_array(self, uri: str) -> np.ndarray:
        if self.is_local:
            return np.load(self._path(uri), allow_pickle=False)
        with self.fs.open_input_file(self._path(uri)) as stream:
            return np.load(io.BytesIO(stream.read()), allow_pickle=False)

    def load_npz(self, uri: str) -> dict[str, np.ndarray]:
        with self.local_copy(uri) as path, np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}

    @contextlib.contextmanager
    def local_copy(self, uri: str) -> Iterator[str]:
        """A local path for `uri` (the file itself when local, else a temporary download)."""
        if self.is_local:
            yield self._path(uri)
            return
        with tempfile.TemporaryDirectory() as folder:
            target = os.path.join(folder, os.path.basename(self._path(uri)))
            with self.fs.open_input_stream(self._path(uri)) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, _COPY_CHUNK)
            yield target

    # ---- helpers --------------------------------------------------------------------------------------

    def _path(self, uri: str) -> str:
        return uri[len(self._prefix):] if self._prefix and uri.startswith(self._prefix) else uri

    def _stage_and_move(self, final: str, write: Callable[[pa.NativeFile], object]) -> None:
        folder, name = final.rsplit("/", 1)
        self.fs.create_dir(folder, recursive=True)
        staged = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
        try:
            with self.fs.open_output_stream(staged) as stream:
                write(stream)
            self.fs.move(staged, final)
        except BaseException:
            with contextlib.suppress(OSError):
                self.fs.delete_file(staged)
            raise
