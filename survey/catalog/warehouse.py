"""The warehouse: Delta Lake tables and content-addressed array files under one root (any pyarrow filesystem).

Each catalog table is a Delta table (`deltalake`, delta-rs) at ``<root>/<table>/``: Parquet data files plus a
transaction log. A unit of work's rows land in one append commit that carries the unit's key twice: in every row's
`unit_key` column, and as the commit's application transaction (Delta's idempotent-write `txn` action, app id = the
key). Two writers of the same unit conflict at commit time and the loser finds the key committed, so concurrent
runs and retried actors never duplicate a unit; readers only ever see whole commits. Array files are written under
a temporary name (a leading dot and a ``.tmp`` suffix) and renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from survey.catalog.schemas import PARTITIONS, PATH_COLUMNS, TABLES
from survey.errors import SurveyError, one_line
from survey.hashing import array_hash

if TYPE_CHECKING:  # imported where used: `survey sql` over a local warehouse needs it not
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

_COPY_CHUNK = 1 << 22
_OLD_PART = re.compile(r"^part-([^.]+)\.parquet$")  # pre-Delta layout: part-<unit key>.parquet
DERIVED = ("shape_distances", "spaces", "embeddings")  # pre-Delta units were keyed otherwise: recomputed
COMMIT_ATTEMPTS = 30  # a unit's append is retried this often when other writers keep committing first
_OPEN = threading.local()  # each thread's open Delta tables (see Warehouse.delta)


# Set when a table is created: log statistics for every column (Delta's default stops at the first 32, and
# `done_keys` reads `unit_key`'s, which comes last).
TABLE_PROPERTIES = {"delta.dataSkippingNumIndexedCols": "-1"}


class Warehouse:
    """Root of the catalogs: one Delta table per catalog table under ``<root>/<table>/``, arrays under
    ``<root>/arrays/<hash>.<ext>``.

    `uri` reopens the same warehouse in another process (an object-store URI keeps its query options, such
    as ``?endpoint_override=…``). Every file the warehouse stores is recorded in its tables by a path relative to
    the root (``arrays/<hash>.npy``) and resolved here, so a copy, a move or an upload of the folder keeps working
    and never reads or writes the original (DESIGN §3).
    """

    def __init__(self, uri: str | os.PathLike) -> None:
        uri = str(uri)
        self._query = ""
        if "://" in uri:
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(uri)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
                raise SurveyError(
                    f"warehouse {uri!r} cannot be opened ({one_line(err)}); "
                    "pass --warehouse a local directory or a URI pyarrow.fs understands (s3://, gs://, file://)"
                ) from None
            self._prefix = uri.split("://", 1)[0] + "://"
            self._query = uri.split("?", 1)[1] if "?" in uri else ""
        else:
            self.fs, self.root, self._prefix = pafs.LocalFileSystem(), str(Path(uri).expanduser().absolute()), ""
        self.root = self.root.rstrip("/")
        self.uri = uri if self._prefix else self.root
        self._file_keys: dict[str, dict[str, list[str]]] = {}  # by table and file name: a compacted file's units
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.File:
            raise SurveyError(f"warehouse {uri!r} is a file, not a directory; pass --warehouse a directory path or URI")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Warehouse) and other.uri == self.uri

    def __hash__(self) -> int:  # one warehouse, one key: the catalog layer caches what it reads per warehouse
        return hash(self.uri)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def exists(self) -> bool:
        return self.fs.get_file_info(self.root).type == pafs.FileType.Directory

    def check_catalog(self) -> Warehouse:
        """This warehouse, when its root holds catalog tables; otherwise one SurveyError saying what the root is
        (for the commands that read a survey: a folder without tables is a mistyped --warehouse, not an empty
        catalog)."""
        if not self.exists():
            raise SurveyError(f"warehouse {self.uri} does not exist; run `survey demo` or `survey run` first, or pass "
                              "--warehouse the folder a survey wrote")
        entries = self.fs.get_file_info(pafs.FileSelector(self.root))
        if not any(entry.type == pafs.FileType.Directory and entry.base_name in TABLES for entry in entries):
            raise SurveyError(f"{self.uri} holds no catalog tables, so it is not a warehouse; pass --warehouse the "
                              "folder a survey wrote (default catalogs/warehouse), or run `survey run` into it")
        return self

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

    def table_uri(self, table: str) -> str:
        """Where delta-rs finds `table`: a local path, or ``s3://bucket/…/<table>`` (options in `storage_options`)."""
        local = isinstance(self.fs, pafs.LocalFileSystem)
        return f"{self.root}/{table}" if local else f"{self._prefix}{self.root}/{table}"

    @property
    def storage_options(self) -> dict[str, str] | None:
        """delta-rs options for an object-store warehouse, from the URI's pyarrow-style query.

        S3 commits are made safe against concurrent writers by conditional put (``If-None-Match``, which AWS S3,
        MinIO and most S3 servers honour): ``AWS_CONDITIONAL_PUT=etag``, unless the environment chooses a DynamoDB
        lock (``AWS_S3_LOCKING_PROVIDER=dynamodb``). Credentials come from the usual AWS_* environment variables.
        """
        if not self._prefix.startswith("s3"):
            return None
        query = {key: values[-1] for key, values in parse_qs(self._query).items()}
        options = {"AWS_REGION": query.get("region") or os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
        if "endpoint_override" in query:
            scheme = query.get("scheme", "https")
            options["AWS_ENDPOINT_URL"] = f"{scheme}://{query['endpoint_override']}"
            options["AWS_ALLOW_HTTP"] = str(scheme == "http").lower()
        if os.environ.get("AWS_S3_LOCKING_PROVIDER") != "dynamodb":
            options["AWS_CONDITIONAL_PUT"] = "etag"
        return options

    def delta(self, table: str) -> DeltaTable | None:
        """The current snapshot of `table`; None before its first commit.

        Each thread keeps its tables open and brings them up to date by reading only the commits made since
        (loading a table replays its last checkpoint, which grows with its files: a unit of work must not pay that).
        """
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        uri = self.table_uri(table)
        opened = _OPEN.__dict__.setdefault("tables", {})
        snapshot = opened.get((uri, self._query))
        if snapshot is not None:
            try:
                snapshot.update_incremental()
                return snapshot
            except DeltaError:  # deleted or rewritten under us: open it afresh
                del opened[(uri, self._query)]
        try:
            snapshot = DeltaTable(uri, storage_options=self.storage_options)
        except TableNotFoundError:
            self._refuse_old_layout(table)
            return None
        opened[(uri, self._query)] = snapshot
        return snapshot

    def snapshot_files(self, table: str) -> list[str] | None:
        """The local paths of the Parquet files of `table`'s current snapshot (a partition column's value is in the
        path, ``<column>=<value>/``); None before its first commit. Local warehouses only."""
        snapshot = self.delta(table)
        return None if snapshot is None else snapshot.file_uris()

    def dataset(self, table: str) -> pads.Dataset:
        """`table`'s current snapshot as an Arrow dataset with the declared schema (empty before any commit)."""
        import pyarrow.dataset as pads

        snapshot = self.delta(table)
        if snapshot is None:
            return pads.dataset(TABLES[table].empty_table())
        return self._snapshot_dataset(table, snapshot)

    def _snapshot_dataset(self, table: str, snapshot: DeltaTable) -> pads.Dataset:
        """`snapshot` as an Arrow dataset read through the warehouse's own (native) filesystem. deltalake's default
        reads through a Python filesystem handler, whose calls from Arrow's I/O threads cannot run once the
        interpreter exits: a scan cut short (LIMIT) then aborts, segfaults or hangs the process at exit."""
        filesystem = pafs.SubTreeFileSystem(f"{self.root}/{table}", self.fs)
        return snapshot.to_pyarrow_dataset(schema=TABLES[table], filesystem=filesystem)

    def committed(self, table: str, key: str) -> bool:
        """Whether unit `key` has committed its rows to `table`."""
        snapshot = self.delta(table)
        return snapshot is not None and snapshot.transaction_version(key) is not None

    def done_keys(self, table: str) -> set[str]:
        """Keys of the units committed to `table`. Files holding one unit name it in their log statistics; only
        compacted files (many units) are read, and then only their `unit_key` column, once per file (data files never
        change), so a stage asking after every round reads only what was compacted since."""
        import pyarrow.compute as pc

        snapshot = self.delta(table)
        if snapshot is None:
            return set()
        files = pa.table(snapshot.get_add_actions(flatten=True))
        if files.num_rows == 0:
            return set()
        if "min.unit_key" not in files.column_names:  # a table made without TABLE_PROPERTIES: no stats to read
            files = files.append_column("min.unit_key", pa.nulls(files.num_rows, pa.string())).append_column(
                "max.unit_key", pa.nulls(files.num_rows, pa.string()))
        single = pc.fill_null(pc.equal(files["min.unit_key"], files["max.unit_key"]), False)
        keys = set(pc.filter(files["min.unit_key"], single).to_pylist())
        mixed = {_file_name(path) for path in pc.filter(files["path"], pc.invert(single)).to_pylist()}
        known = self._file_keys.get(table, {})
        known = self._file_keys[table] = {name: known[name] for name in mixed if name in known}
        if len(known) < len(mixed):  # file names are unique (a UUID each), so the base name finds the fragment
            for fragment in self._snapshot_dataset(table, snapshot).get_fragments():
                if (name := _file_name(fragment.path)) in mixed and name not in known:
                    known[name] = pc.unique(fragment.to_table(columns=["unit_key"])["unit_key"]).to_pylist()
        for unit_keys in known.values():
            keys.update(unit_keys)
        return keys

    def read_new_files(self, table: str, seen: set[str], columns: list[str],
                       filter: pc.Expression | None = None) -> pa.Table:
        """The rows (`columns`, matching `filter`) of `table`'s current data files whose names are not in `seen`,
        which gains them: a reader folding a growing table reads each file once (compaction moves rows into new
        files, which it then reads again)."""
        import pyarrow.dataset as pads

        snapshot = self.delta(table)
        if snapshot is None:
            return TABLES[table].empty_table().select(columns)
        dataset = self._snapshot_dataset(table, snapshot)
        fresh = [fragment for fragment in dataset.get_fragments() if _file_name(fragment.path) not in seen]
        seen.update(_file_name(fragment.path) for fragment in fresh)
        return pads.FileSystemDataset(fresh, dataset.schema, dataset.format, dataset.filesystem).to_table(
            columns=columns, filter=filter)

    def append_unit(self, table: str, key: str, rows: list[dict], replacing: Sequence[str] = ()) -> int:
        """Append the rows of unit `key` to `table` in one atomic commit, which also deletes the rows of the committed
        units `replacing` names (the same unit at older stage versions); returns the rows written (0 when the unit
        was already committed, by this or another writer: the same unit never lands twice)."""
        schema = TABLES[table]
        data = pa.Table.from_pylist([{**row, "unit_key": key} for row in rows], schema=schema)
        commit = CommitProperties(app_transactions=[Transaction(key, 1)])
        for attempt in range(COMMIT_ATTEMPTS):
            snapshot = self.delta(table) or self._create(table)
            if snapshot.transaction_version(key) is not None:
                return 0
            replaced = [old for old in replacing if snapshot.transaction_version(old) is not None]
            mode, predicate = ("overwrite", _key_in([*replaced, key])) if replaced else ("append", None)
            try:  # from a loaded snapshot, so that a concurrent commit of the same key conflicts
                write_deltalake(snapshot, data, mode=mode, predicate=predicate, partition_by=_partitions(table),
                                storage_options=self.storage_options, commit_properties=commit)
                return data.num_rows
            except CommitFailedError:  # a concurrent commit won: look again
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0.01, 0.05 * (attempt + 1)))
        raise AssertionError("unreachable")

    def _create(self, table: str) -> DeltaTable:
        """`table` created empty (its first commit: schema, partitions, properties, no rows), or opened when another
        writer created it first. Units append only to a loaded snapshot: one appended to a table's location while
        another writer creates it would not see that writer's commit of the same unit, and would land twice."""
        try:
            DeltaTable.create(self.table_uri(table), TABLES[table], mode="error", partition_by=_partitions(table),
                              configuration=TABLE_PROPERTIES, storage_options=self.storage_options)
        except DeltaError:  # "already exists", or a lost race for version 0: fine once the table is there
            if self.delta(table) is None:
                raise
        return self.delta(table)

    def mergeable_files(self, table: str, small_bytes: int) -> int:
        """How many of `table`'s data files smaller than `small_bytes` compaction would fold away: in each
        partition, all its small files but one."""
        import pyarrow.compute as pc

        snapshot = self.delta(table)
        if snapshot is None:
            return 0
        files = pa.table(snapshot.get_add_actions(flatten=True))
        small = files.filter(pc.less(files["size_bytes"], small_bytes))
        partitions = [name for name in small.column_names if name.startswith("partition.")]
        groups = small.group_by(partitions).aggregate([]).num_rows if partitions else min(small.num_rows, 1)
        return small.num_rows - groups

    def compact(self, table: str, vacuum_hours: int, target_bytes: int | None = None) -> dict[str, int]:
        """Rewrite `table`'s files under `target_bytes` (None: delta-rs's default) into files of about that size (one
        commit that changes no row: a reader of either snapshot gets the same answer); a file that reached the size
        is not rewritten again, so a growing table's compactions stay small. Then vacuum the files superseded more
        than `vacuum_hours` ago and those no commit references that are as old (a killed writer's). A query or
        writer that started less than `vacuum_hours` ago keeps its files, so leave it above the longest query and
        the longest unit of work."""
        snapshot = self.delta(table)
        if snapshot is None:
            return {"files_removed": 0, "files_added": 0, "files_vacuumed": 0}
        try:
            metrics = snapshot.optimize.compact(target_size=target_bytes)
        except CommitFailedError:  # a concurrent compaction of the same files committed first: its result stands
            metrics = {"numFilesRemoved": 0, "numFilesAdded": 0}
        vacuumed = snapshot.vacuum(retention_hours=vacuum_hours, dry_run=False, enforce_retention_duration=False,
                                   full=True)
        return {"files_removed": metrics["numFilesRemoved"], "files_added": metrics["numFilesAdded"],
                "files_vacuumed": len(vacuumed)}

    def read_table(self, table: str, columns: list[str] | None = None) -> pa.Table:
        """All rows of `table` (an empty table with the declared schema when nothing is committed yet)."""
        return self.dataset(table).to_table(columns=columns)

    def rows(self, table: str, columns: list[str] | None = None) -> list[dict]:
        return self.read_table(table, columns).to_pylist()

    def migrate_old_layout(self, table: str) -> int | None:
        """Convert `table` from the pre-Delta layout (one ``part-<unit key>.parquet`` per unit, hive folders) into a
        Delta table in place: one commit of every part's rows, each tagged with its part's key, every key an app
        transaction; the old files go once it has landed. Returns the rows converted, None when there was nothing
        to convert. Tables whose units were re-keyed since (DERIVED) are dropped for their stage to recompute."""
        folder = f"{self.root}/{table}"
        if self.fs.get_file_info(f"{folder}/_delta_log").type != pafs.FileType.NotFound:
            return None
        files = [info for info in self.fs.get_file_info(pafs.FileSelector(folder, recursive=True,
                                                                          allow_not_found=True))
                 if info.type == pafs.FileType.File]
        parts = [(info, match.group(1)) for info in files if (match := _OLD_PART.match(info.base_name))]
        if not parts:
            return None
        if table in DERIVED:
            self.fs.delete_dir(folder)
            return 0
        import pyarrow.parquet as pq

        pieces = []
        for info, key in parts:
            data = pq.read_table(info.path, filesystem=self.fs)
            for folder_name in info.path[len(folder) + 1:].split("/")[:-1]:  # hive partition values
                column, value = folder_name.split("=", 1)
                data = data.append_column(column, pa.array([value] * data.num_rows))
            data = data.append_column("unit_key", pa.array([key] * data.num_rows))
            for field in TABLES[table]:  # columns added since: NULL, or a status that says where the row came from
                if field.name not in data.column_names:
                    fill = None if field.nullable else "not recorded (migrated from the Parquet-part layout)"
                    data = data.append_column(field.name, pa.array([fill] * data.num_rows, field.type))
            pieces.append(data.select(TABLES[table].names).cast(TABLES[table]))
        rows = pa.concat_tables(pieces)
        commit = CommitProperties(app_transactions=[Transaction(key, 1) for _, key in parts])
        write_deltalake(self.table_uri(table), rows, mode="append", partition_by=_partitions(table),
                        storage_options=self.storage_options, commit_properties=commit,
                        configuration=TABLE_PROPERTIES)
        for info, _ in parts:
            self.fs.delete_file(info.path)
        return rows.num_rows

    def relativize_paths(self, table: str) -> int:
        """Rewrite `table`'s absolute paths to files this warehouse holds as paths relative to its root, in one
        commit (an overwrite that keeps every row, unit key and app transaction); returns the paths rewritten.

        A path written by an older version names the root it was written under (perhaps the original of this
        copy): its shortest tail that exists here is the relative path. Paths to files outside (a user's NWB
        file) stay as they are. Run it with no survey writing to the warehouse."""
        snapshot, columns = self.delta(table), PATH_COLUMNS[table]
        if snapshot is None or not columns:
            return 0
        data = self.read_table(table)
        roots: set[str] = set()  # old roots found so far: most paths share one, so few look-ups
        rewritten = 0
        for name in columns:
            paths = data[name].to_pylist()
            relative = [self._relative(path, roots) for path in paths]
            changed = sum(old != new for old, new in zip(paths, relative, strict=True))
            if changed:
                data = data.set_column(data.schema.get_field_index(name), data.schema.field(name),
                                       pa.array(relative, pa.string()))
                rewritten += changed
        if rewritten:
            write_deltalake(snapshot, data, mode="overwrite", partition_by=_partitions(table),
                            storage_options=self.storage_options, configuration=TABLE_PROPERTIES)
        return rewritten

    def _relative(self, path: str | None, roots: set[str]) -> str | None:
        """`path` relative to this warehouse when its tail names a file or folder here; else `path` unchanged."""
        if path is None or not _is_absolute(path):
            return path
        bare = path.split("://", 1)[-1]
        for root in roots:
            if bare.startswith(f"{root}/"):
                return bare[len(root) + 1:]
        parts = bare.split("/")
        for start in range(len(parts) - 1, 0, -1):
            tail = "/".join(parts[start:])
            if self.fs.get_file_info(f"{self.root}/{tail}").type != pafs.FileType.NotFound:
                roots.add("/".join(parts[:start]))
                return tail
        return path

    def _refuse_old_layout(self, table: str) -> None:
        """One clear line for a warehouse written before the tables were Delta tables (Parquet parts, no log)."""
        selector = pafs.FileSelector(f"{self.root}/{table}", recursive=True, allow_not_found=True)
        try:
            entries = self.fs.get_file_info(selector)
        except FileNotFoundError:  # a folder made or removed by a concurrent writer while listed: not the old layout
            return
        if any(_OLD_PART.match(info.base_name) for info in entries):  # not a first commit's
            raise SurveyError(
                f"warehouse {self.uri} holds {table}/ in the old Parquet-part layout (no Delta log); convert it in "
                f"place with `survey migrate -w {self.uri}` (shape distances and spaces are then recomputed), or "
                "rebuild it by running the survey into a new --warehouse"
            )

    # ---- arrays and files -----------------------------------------------------------------------------

    def put_array(self, array: np.ndarray) -> tuple[str, str]:
        """Store `array` as ``arrays/<hash>.npy`` (skipped when present); returns (relative path, content hash)."""
        digest = array_hash(array)
        relative = f"arrays/{digest[:32]}.npy"
        path = f"{self.root}/{relative}"
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
            self._stage_and_move(path, lambda stream: stream.write(buffer.getbuffer()))
        return relative, digest

    def put_file(self, local_path: str | os.PathLike, digest: str, suffix: str) -> str:
        """Copy a local file to ``arrays/<digest>.<suffix>`` (skipped when present); returns its relative path."""
        relative = f"arrays/{digest[:32]}{suffix}"
        path = f"{self.root}/{relative}"
        if self.fs.get_file_info(path).type != pafs.FileType.File:

            def copy(stream: pa.NativeFile) -> None:
                with open(local_path, "rb") as source:
                    while chunk := source.read(_COPY_CHUNK):
                        stream.write(chunk)

            self._stage_and_move(path, copy)
        return relative

    def put_bytes(self, relative_path: str, data: bytes) -> str:
        """Write `data` at ``<root>/<relative_path>`` (staged, then renamed); returns `relative_path`."""
        self._stage_and_move(self.resolve(relative_path), lambda stream: stream.write(data))
        return relative_path

    def put_npz(self, relative_path: str, arrays: Mapping[str, np.ndarray]) -> str:
        """Write `arrays` as an .npz at ``<root>/<relative_path>`` (staged, then renamed); returns `relative_path`."""
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return self.put_bytes(relative_path, buffer.getvalue())

    def stored(self, relative_path: str) -> str | None:
        """`relative_path` when that file exists in the warehouse, else None."""
        return relative_path if self.fs.get_file_info(self.resolve(relative_path)).type == pafs.FileType.File else None

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(self.resolve(path)) as stream:
            return stream.read()

    def load_array(self, path: str) -> np.ndarray:
        if self.is_local:
            return np.load(self.resolve(path), allow_pickle=False)
        with self.fs.open_input_file(self.resolve(path)) as stream:
            return np.load(io.BytesIO(stream.read()), allow_pickle=False)

    def load_npz(self, path: str) -> dict[str, np.ndarray]:
        with self.local_copy(path) as local, np.load(local, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}

    @contextlib.contextmanager
    def local_copy(self, path: str) -> Iterator[str]:
        """A local path for the stored file `path` (the file itself when local, else a temporary download)."""
        if self.is_local:
            yield self.resolve(path)
            return
        with tempfile.TemporaryDirectory() as folder:
            target = os.path.join(folder, os.path.basename(path))
            with self.fs.open_input_stream(self.resolve(path)) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, _COPY_CHUNK)
            yield target

    def resolve(self, path: str) -> str:
        """Where the stored file `path` (relative to the root, as the tables record it) lies in this warehouse's
        filesystem. An absolute path, written before paths were relative, is read only when it lies inside this
        warehouse; one that lies elsewhere (the warehouse was copied or moved) is refused: never the original."""
        if not _is_absolute(path):
            return f"{self.root}/{path}"
        inside = path.removeprefix(self._prefix) if self._prefix else path
        if inside.startswith(f"{self.root}/"):
            return inside
        raise SurveyError(
            f"warehouse {self.uri} records {path!r}, an absolute path outside it (it was written by an older "
            f"version and then copied or moved); rewrite its paths relative to the root with `survey migrate -w "
            f"{self.uri}`")

    # ---- helpers --------------------------------------------------------------------------------------

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


def _file_name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _is_absolute(path: str) -> bool:
    return path.startswith("/") or "://" in path


def _key_in(keys: list[str]) -> str:
    """A Delta predicate matching the rows of the units `keys` (content keys: letters, digits and dashes)."""
    return f"unit_key IN ({', '.join(repr(key) for key in keys)})"


def _partitions(table: str) -> list[str] | None:
    return list(PARTITIONS.get(table, ())) or None
