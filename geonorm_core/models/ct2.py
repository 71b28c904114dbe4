"""Read CTranslate2 model files (``model.bin``, binary format version 6) with NumPy alone.

CTranslate2 (OpenNMT) stores a converted model as one little-endian binary file, written by
``ctranslate2.specs.model_spec.ModelSpec._serialize``::

    uint32  binary version                      (6 since CTranslate2 3.x)
    string  spec name                           e.g. "WhisperSpec"
    uint32  spec revision                       e.g. 3
    uint32  number of variables
    per variable:
        string  name                            e.g. "decoder/layer_0/ffn/linear_0/weight"
        uint8   rank
        uint32  dims[rank]
        uint8   dtype id                        0 float32, 1 int8, 2 int16, 3 int32,
                                                4 float16, 5 bfloat16
        uint32  byte count
        bytes   the values, C order
    uint32  number of aliases
    per alias:
        string  alias name, string  name of the variable it stands for

    string = uint16 length (including a trailing NUL), the UTF-8 bytes, the NUL byte

Rank-0 variables hold scalar settings (``decoder/num_heads``, ``decoder/pre_norm`` ...).
Aliases are variables the converter found identical to another one and stored once (Whisper's
output projection is an alias of the token embedding).  Quantized models store ``int8`` weights
with a separate ``.../weight_scale`` variable; this reader returns them as stored.

Nothing here imports ``ctranslate2``: the format is small enough to read directly.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SUPPORTED_VERSION", "CT2Model", "read_bytes", "read_ct2"]

SUPPORTED_VERSION = 6


def _dtypes() -> tuple[np.dtype, ...]:
    import ml_dtypes  # a geonorm dependency; NumPy has no bfloat16

    return (np.dtype("<f4"), np.dtype("i1"), np.dtype("<i2"), np.dtype("<i4"), np.dtype("<f2"),
            np.dtype(ml_dtypes.bfloat16))


@dataclass(frozen=True)
class CT2Model:
    """The content of one CTranslate2 ``model.bin``.

    ``variables`` maps each stored name to a read-only NumPy array (a view of the file's bytes;
    rank-0 arrays for scalars); ``aliases`` maps alias names to the variable they repeat.
    """

    version: int
    name: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]

    def __getitem__(self, key: str) -> np.ndarray:
        """A variable by name, aliases resolved."""
        return self.variables[self.aliases.get(key, key)]

    def __contains__(self, key: object) -> bool:
        return key in self.variables or key in self.aliases

    def scalar(self, key: str) -> int | float:
        """A rank-0 variable as a Python number."""
        value = self[key]
        if value.ndim != 0:
            raise ValueError(f"{key} is not a scalar: shape {value.shape}")
        return value.item()


class _Cursor:
    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise ValueError(f"truncated CTranslate2 file: {n} bytes needed at offset {self.pos}, "
                             f"the file has {len(self.data)}")
        view = self.data[self.pos:self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.unpack("H"))
        if len(raw) == 0 or raw[-1] != 0:
            raise ValueError(f"malformed string before offset {self.pos} (no trailing NUL)")
        return bytes(raw[:-1]).decode("utf-8")


def read_bytes(source: bytes | bytearray | memoryview | str | os.PathLike | Sequence) -> memoryview:
    """A file's bytes: given directly, read from one path, or joined from consecutive parts (one copy)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return memoryview(source)
    paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not paths:
        raise ValueError("no file given")
    sizes = [os.path.getsize(p) for p in paths]
    buf = bytearray(sum(sizes))
    view, pos = memoryview(buf), 0
    for path, size in zip(paths, sizes):
        with open(path, "rb") as f:
            if f.readinto(view[pos:pos + size]) != size:
                raise OSError(f"{path}: short read (the file changed while being read?)")
        pos += size
    return view


def read_ct2(source: bytes | bytearray | memoryview | str | os.PathLike | Sequence) -> CT2Model:
    """Parse a CTranslate2 ``model.bin``.

    Parameters
    ----------
    source
        The file's bytes, its path, or a sequence of paths whose concatenation is the file
        (a model split into parts).

    Raises
    ------
    ValueError
        for a binary version other than 6, an unknown dtype id, a byte count that does not match
        the shape, a truncated file or trailing bytes.
    """
    cur = _Cursor(read_bytes(source))
    dtypes = _dtypes()
    version = cur.unpack("I")
    if version != SUPPORTED_VERSION:
        raise ValueError(f"CTranslate2 binary version {version} is not supported (only {SUPPORTED_VERSION}); "
                         "re-convert the model with CTranslate2 >= 3")
    name = cur.string()
    revision = cur.unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(cur.unpack("I")):
        var = cur.string()
        shape = tuple(cur.unpack("I") for _ in range(cur.unpack("B")))
        type_id = cur.unpack("B")
        if type_id >= len(dtypes):
            raise ValueError(f"{var}: unknown dtype id {type_id}")
        dtype = dtypes[type_id]
        nbytes = cur.unpack("I")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes != expected:
            raise ValueError(f"{var}: {nbytes} bytes stored, shape {shape} of {dtype} needs {expected}")
        array = np.frombuffer(cur.take(nbytes), dtype=dtype).reshape(shape)
        array.flags.writeable = False
        variables[var] = array
    aliases = {}
    for _ in range(cur.unpack("I")):
        alias, target = cur.string(), cur.string()
        if target not in variables:
            raise ValueError(f"alias {alias!r} names a missing variable {target!r}")
        aliases[alias] = target
    if cur.pos != len(cur.data):
        raise ValueError(f"{len(cur.data) - cur.pos} unexpected bytes after the aliases")
    return CT2Model(version=version, name=name, revision=revision, variables=variables, aliases=aliases)
