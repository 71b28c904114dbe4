"""Arrow and parquet stores: a ``datasets`` folder (``save_to_disk``), ``.arrow``/``.parquet`` files.

A ``datasets`` folder lists its Arrow files in ``state.json`` (``_data_files``); they are Arrow IPC
streams, never compressed.  Each file is mapped once when the store is opened to locate, record batch
by record batch, the byte range of each float column's values in the file (only the batches'
metadata is touched); the rows are then read through :class:`~.shards.FileShard` maps of one block,
as geonorm's own dumps are.  Parquet is compressed and encoded: its rows are decoded by pyarrow a
batch at a time, streaming through each file's row groups.

A column holds vectors when its type is a list (fixed size or not, ``large_list`` too) of floats, or a
list of such lists (``Array2D``, ``Array3D``: the leading axes become rows); a list column whose rows
have different lengths is ragged, and an error.  ``datasets``' own extension types are read as the
lists they store (``datasets`` itself is not imported).
"""
from __future__ import annotations

import json
import math
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..shards import DumpError, FileShard, Shard
from .columns import Column, ConcatShard, need

__all__ = ["arrow_columns", "arrow_files"]

_PARQUET_BATCH = 1 << 16  # rows pyarrow decodes at a time (bounded further by bytes, below)
_PARQUET_BATCH_BYTES = 4 << 20
#: Bytes pyarrow reads from a parquet file at a time: a column chunk (a row group's column, often
#: 100+ MB for activations) is then streamed, not read (pre_buffer) whole before its first row.
_PARQUET_BUFFER = 1 << 20


def _natural(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


def arrow_files(root: Path, strict: bool = True) -> list[Path]:
    """The Arrow/parquet files of a store, in row order: ``state.json``'s list, else by name."""
    if root.is_file():
        return [root]
    state = root / "state.json"
    if state.is_file():
        try:
            files = [root / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise DumpError(state, f"is not a datasets state file ({exc})") from None
        for f in files:
            if not f.is_file():
                raise DumpError(f, "missing (listed in state.json)")
        return files
    if strict and (root / "dataset_dict.json").is_file():
        splits = json.loads((root / "dataset_dict.json").read_text()).get("splits", [])
        raise DumpError(root, f"is a DatasetDict of splits {splits}: give one split's folder, e.g. "
                              f"{root / (splits[0] if splits else 'train')}")
    files = sorted((f for f in root.rglob("*") if f.suffix.lower() in (".arrow", ".parquet", ".feather")
                    and f.is_file() and not any(part.startswith(".") for part in f.relative_to(root).parts)),
                   key=_natural)
    if strict and not files:
        raise DumpError(root, "holds no .arrow or .parquet files")
    return files


def _shape_of(pa: Any, t: Any) -> tuple[list[int | None], Any]:
    """The list sizes (None: variable) around a type's values, and the value type."""
    sizes: list[int | None] = []
    while True:
        if isinstance(t, pa.ExtensionType):
            t = t.storage_type
        if pa.types.is_fixed_size_list(t):
            sizes.append(t.list_size)
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            sizes.append(None)
        else:
            return sizes, t
        t = t.value_type


def _why_not(pa: Any, t: Any) -> str | None:
    """Why a column of type ``t`` is not float vectors, or None when it is."""
    sizes, value = _shape_of(pa, t)
    if not pa.types.is_floating(value):
        return f"holds {value} values, not float"
    if not sizes:
        return f"holds one {value} per row, not vectors"
    if len(sizes) > 3:
        return f"holds {len(sizes)}-D {value} arrays; geonorm reads 1-D to 3-D per row"
    return None


def _flatten(pa: Any, arr: Any, f: Path, name: str) -> tuple[Any, list[int]]:
    """A column's values (a primitive array, zero copy) and the sizes of its list levels."""
    sizes = []
    while True:
        if isinstance(arr, pa.ExtensionArray):
            arr = arr.storage
        if arr.null_count:
            raise DumpError(f, f"column {name!r} has {arr.null_count} missing (null) values")
        t = arr.type
        if pa.types.is_fixed_size_list(t):
            sizes.append(t.list_size)
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            lengths = np.diff(arr.offsets.to_numpy())
            if len(lengths) and (lengths != lengths[0]).any():
                bad = int(np.argmax(lengths != lengths[0]))
                raise DumpError(f, f"column {name!r} is ragged: lists of {lengths[0]} and {lengths[bad]} "
                                   f"values; geonorm reads vectors of one length")
            sizes.append(int(lengths[0]) if len(lengths) else None)
        else:
            return arr, sizes
        arr = arr.flatten()


def arrow_columns(root: Path) -> tuple[list[Column], dict]:
    """The columns of an Arrow/parquet store, each float one as a :class:`ConcatShard` of its rows."""
    pa = need("pyarrow", "Arrow and parquet stores")
    files = arrow_files(root)
    parts: dict[str, list[Shard]] = {}
    why: dict[str, str] = {}
    order: list[str] | None = None
    for f in files:
        try:
            if f.suffix.lower() == ".parquet":
                names, file_why, file_parts = _parquet_file(pa, f)
            else:
                names, file_why, file_parts = _ipc_file(pa, f)
        except DumpError:
            raise
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise DumpError(f, f"is not a readable Arrow/parquet file (truncated or corrupt?): "
                               f"{type(exc).__name__}: {exc}") from None
        if order is None:
            order, why = names, file_why
        elif names != order:
            raise DumpError(f, f"has columns {names}, but {files[0].name} has {order}: every file of a store "
                               f"must hold the same columns")
        for name, shards in file_parts.items():
            if isinstance(parts.get(name), DumpError):
                continue
            if isinstance(shards, DumpError):
                parts[name] = shards
                continue
            parts.setdefault(name, []).extend(shards)
    columns = []
    for name in order or []:
        if name in why:
            columns.append(Column(name, None, why[name]))
            continue
        try:
            if isinstance(parts[name], DumpError):
                raise parts[name]
            columns.append(Column(name, ConcatShard(root, parts[name])))
        except DumpError as exc:  # vectors of different lengths in different files: ragged too
            columns.append(Column(name, None, exc.problem, error=exc))
    fmt = "parquet" if files and files[0].suffix.lower() == ".parquet" else "arrow"
    return columns, {"files": len(files), "store": "datasets" if (root / "state.json").is_file() else fmt}


def _ipc_file(pa: Any, f: Path) -> tuple[list[str], dict[str, str], dict[str, list[Shard]]]:
    """An Arrow IPC file or stream: per float column, a FileShard for each record batch's values."""
    with pa.memory_map(str(f)) as mm:
        whole = mm.read_buffer()
        base, size = whole.address, whole.size
        if whole.size >= 6 and whole[:6].to_pybytes() == b"ARROW1":
            reader = pa.ipc.open_file(whole)
            schema = reader.schema
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            reader = pa.ipc.open_stream(whole)
            schema = reader.schema
            batches = iter(reader)
        names = list(schema.names)
        why = {n: w for n, t in zip(names, schema.types) if (w := _why_not(pa, t)) is not None}
        good = [(i, n) for i, n in enumerate(names) if n not in why]
        parts: dict[str, list[Shard]] = {n: [] for _, n in good}
        d_of: dict[str, int] = {}
        errors: dict[str, DumpError] = {}
        for batch in batches:
            for i, name in good:
                if name in errors:
                    continue
                try:
                    values, sizes = _flatten(pa, batch.column(i), f, name)
                except DumpError as exc:  # an error if this column is read, and only then
                    errors[name] = exc
                    continue
                if batch.num_rows == 0:
                    continue
                d = sizes[-1]
                if d_of.setdefault(name, d) != d:
                    errors[name] = DumpError(f, f"column {name!r} is ragged: vectors of {d_of[name]} and {d} "
                                                f"values")
                    continue
                rows = batch.num_rows * math.prod(sizes[:-1])
                buf = values.buffers()[1]
                dtype = np.dtype(values.type.to_pandas_dtype())
                offset = buf.address - base + values.offset * dtype.itemsize
                if not 0 <= offset <= offset + rows * d * dtype.itemsize <= size:
                    raise DumpError(f, f"column {name!r}: its values are not stored as they are read "
                                       f"(a compressed Arrow file?); geonorm reads uncompressed Arrow")
                if rows:
                    parts[name].append(FileShard(f, offset, rows, d, dtype))
        del whole, reader, batches
    for name, exc in errors.items():
        parts[name] = exc
    return names, why, parts


class ParquetShard(Shard):
    """A parquet file's column, decoded by pyarrow a batch at a time (forward; back restarts).

    Going to a row restarts at the row group holding it.  Memory: one decoded batch and a block.
    """

    def __init__(self, path: Path, column: str, group_rows: list[int], d: int, dtype: np.dtype) -> None:
        self.path, self.column, self.group_rows = Path(path), column, list(group_rows)  # token rows per group
        self.rows, self.d, self.dtype = int(sum(group_rows)), int(d), np.dtype(dtype)
        self._local = threading.local()  # the stream's place, per thread (Dask's threads share shards)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _state(self) -> Any:
        st = self._local
        if not hasattr(st, "it"):
            st.it, st.pos, st.pending = None, 0, None
        return st

    def _restart(self, start: int) -> None:
        pq = need("pyarrow.parquet", "parquet stores")
        starts = np.cumsum([0, *self.group_rows]).tolist()
        g = max(0, int(np.searchsorted(starts, start, side="right")) - 1)
        pf = pq.ParquetFile(str(self.path), buffer_size=_PARQUET_BUFFER, pre_buffer=False)
        per_row = max(1, self.d * self.dtype.itemsize * max(1, self.rows // max(1, pf.metadata.num_rows)))
        batch = max(1, min(_PARQUET_BATCH, _PARQUET_BATCH_BYTES // per_row))
        st = self._state()
        st.it = pf.iter_batches(batch_size=batch, row_groups=list(range(g, len(self.group_rows))),
                                columns=[self.column], use_threads=False)
        st.pos, st.pending = starts[g], None

    def _next(self) -> np.ndarray:
        import pyarrow as pa

        try:
            batch = next(self._state().it)
        except StopIteration:
            raise DumpError(self.path, f"column {self.column!r} ends before its {self.rows} rows") from None
        except (OSError, pa.ArrowException) as exc:
            raise DumpError(self.path, f"column {self.column!r} cannot be decoded: {exc}") from None
        values, sizes = _flatten(pa, batch.column(0), self.path, self.column)
        if batch.num_rows and sizes[-1] != self.d:
            raise DumpError(self.path, f"column {self.column!r} is ragged: vectors of {self.d} and "
                                       f"{sizes[-1]} values")
        return values.to_numpy(zero_copy_only=False).astype(self.dtype, copy=False).reshape(-1, self.d)

    def read(self, start: int, stop: int) -> np.ndarray:
        self._check_range(start, stop)
        st = self._state()
        if st.it is None or start < st.pos:
            self._restart(start)
        out = np.empty((stop - start, self.d), self.dtype)
        at = start
        while at < stop:
            if st.pending is None or len(st.pending) == 0:
                st.pending = self._next()
                continue
            n = len(st.pending)
            if st.pos + n <= at:  # a batch wholly before the range
                st.pos += n
                st.pending = None
                continue
            skip = at - st.pos
            take = min(n - skip, stop - at)
            out[at - start:at - start + take] = st.pending[skip:skip + take]
            at += take
            st.pending = st.pending[skip + take:]
            st.pos = at
        return out

    def release(self) -> None:
        st = self._state()
        st.it = st.pending = None
        st.pos = 0


def _parquet_file(pa: Any, f: Path) -> tuple[list[str], dict[str, str], dict[str, list[Shard]]]:
    pq = need("pyarrow.parquet", "parquet stores")
    pf = pq.ParquetFile(str(f))
    schema = pf.schema_arrow
    names = list(schema.names)
    why = {n: w for n, t in zip(names, schema.types) if (w := _why_not(pa, t)) is not None}
    groups = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
    parts: dict[str, list[Shard]] = {}
    for name in names:
        if name in why:
            continue
        if not sum(groups):
            parts[name] = []
            continue
        first = next(pq.ParquetFile(str(f), buffer_size=_PARQUET_BUFFER, pre_buffer=False).iter_batches(
            batch_size=1, columns=[name], use_threads=False))  # buffered: not the whole column chunk
        values, sizes = _flatten(pa, first.column(0), f, name)
        per_row = math.prod(sizes[:-1])
        dtype = np.dtype(values.type.to_pandas_dtype())
        parts[name] = [ParquetShard(f, name, [g * per_row for g in groups], sizes[-1], dtype)]
    return names, why, parts
