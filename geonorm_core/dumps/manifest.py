"""geonorm's own dump format: the manifest, and a dump's sites opened and checked against it.

A dump (written by :mod:`.writing`) is a folder with ``manifest.json``, a params file
holding every site's gain and bias, and per site a series of safetensors shards of
"hidden" and "post" rows.  Opening checks everything that costs no full read: the manifest whole
against its schema (:mod:`.schema`) and its own digest, every path it names to stay inside
the dump (:mod:`.files`), each shard's size and header against the manifest (rows, d,
dtype, byte ranges), that the dump finished, and -- with ``verify="sha256"`` -- arranges
each shard's digest to be checked before its rows count (:mod:`.verify` remembers files
that already hashed right).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .files import inside, open_regular, regular_file, strict_json
from .formats import read_safetensors_header
from .schema import DIGEST_KEY, check_manifest, manifest_digest
from .shards import DEFAULT_EPS, ActivationSite, DumpError, FileShard
from .verify import VerifiedFiles, hash_file

__all__ = ["DUMP_FORMAT", "DUMP_VERSION", "MANIFEST_NAME", "READ_VERSIONS", "VERIFY_MODES", "open_dump",
           "read_manifest"]

MANIFEST_NAME = "manifest.json"
DUMP_FORMAT = "geonorm-dump"
#: The version geonorm writes (2: the manifest carries its own digest) ...
DUMP_VERSION = 2
#: ... and the versions it reads.
READ_VERSIONS = (1, 2)
_MAX_MANIFEST = 1 << 30

#: How much of a geonorm dump is checked before its rows count (see :func:`open_activations`).
VERIFY_MODES = ("sha256", "rehash", "size")


def read_manifest(path: str | os.PathLike, *, verify: str = "sha256") -> dict:
    """The JSON manifest of a geonorm dump, parsed strictly and checked against its schema.

    Every field is checked (:func:`geonorm_core.dumps.schema.check_manifest`) and, unless
    ``verify="size"``, the manifest's own digest too (an edited manifest is refused).

    Raises
    ------
    DumpError
        naming the manifest and the field: not a regular file, not JSON, not a geonorm manifest,
        a field missing or out of range, or a digest that does not match.
    """
    path = Path(path)
    with open_regular(path) as f:
        raw = f.read(_MAX_MANIFEST + 1)
    if len(raw) > _MAX_MANIFEST:
        raise DumpError(path, f"the manifest is over {_MAX_MANIFEST >> 20} MiB: not one geonorm wrote")
    man = strict_json(raw, path, "the manifest")
    fmt = man.get("format") if isinstance(man, dict) else None
    if fmt != DUMP_FORMAT:
        raise DumpError(path, f"not a geonorm dump manifest (format {str(fmt)[:40]!r})")
    version = man.get("version")
    if isinstance(version, bool) or version not in READ_VERSIONS:
        raise DumpError(path, f"dump format version {str(version)[:20]}; this geonorm reads "
                              f"{', '.join(map(str, READ_VERSIONS))}")
    check_manifest(man, path, version=version)
    if verify != "size" and DIGEST_KEY in man and man[DIGEST_KEY] != manifest_digest(man):
        raise DumpError(path, f"{DIGEST_KEY} does not match the manifest: it was edited or corrupted "
                              f"after geonorm wrote it (--verify size skips this check)")
    return man


def open_dump(manifest: Path, verify: str, partial: bool) -> list[ActivationSite]:
    man = read_manifest(manifest, verify=verify)
    root = manifest.parent
    if not man["complete"] and not partial:
        raise DumpError(manifest, f"the dump is incomplete (interrupted after {man['batches_done']} "
                                  f"batches): finish it with `geonorm dump --resume`, or pass partial=True "
                                  f"(--partial) to analyze the batches written")
    record = VerifiedFiles(root) if verify != "size" else None
    params, params_path = _read_params(root, manifest, man.get("params"), verify, record)
    report_meta = {**man.get("report_meta", {}), "source": str(root)}
    sites = []
    for i, entry in enumerate(man["sites"]):
        name, meta = entry["name"], entry["meta"]
        d = meta["d"]
        hidden, post = [], []
        for j, sh in enumerate(entry["shards"]):
            path = inside(root, sh["file"], f"sites[{i}].shards[{j}].file", manifest)
            h, p_ = _open_dump_shard(path, sh, d, verify, record)
            hidden.append(h)
            post.append(p_)
        values = {}
        for what in ("gain", "bias"):
            key = entry.get(what)
            if key is None:
                continue
            if key not in params:
                raise DumpError(params_path, f"site {name}: has no {what} {key!r} (the manifest names it)")
            if params[key].shape != (d,):
                raise DumpError(params_path, f"site {name}: {what} has shape {params[key].shape}, d={d}")
            values[what] = params[key]
        if not hidden:
            continue  # nothing written for this site (yet)
        sites.append(ActivationSite(name=name, meta=meta, hidden=hidden, post=post, gain=values.get("gain"),
                                    bias=values.get("bias"), eps=float(meta.get("eps", DEFAULT_EPS)),
                                    report_meta=report_meta))
    if not sites:
        raise DumpError(manifest, "the dump holds no rows")
    return sites


def _read_params(root: Path, manifest: Path, entry: dict | None, verify: str, record: VerifiedFiles | None
                 ) -> tuple[dict[str, np.ndarray], Path | None]:
    if not entry:
        return {}, None
    path = inside(root, entry["file"], "params.file", manifest)
    size = regular_file(path).st_size
    if size != entry["bytes"]:
        raise DumpError(path, f"size {size} bytes, the manifest says {entry['bytes']}")
    if _must_hash(path, entry["sha256"], verify, record):
        digest, identity = hash_file(path)
        if digest != entry["sha256"]:
            raise DumpError(path, "sha256 does not match the manifest (the gains and biases are corrupt)")
        record.add(path, identity, digest)
    header, start = read_safetensors_header(path)
    out = {}
    with open_regular(path) as f:
        for key, t in header.items():
            f.seek(start + t["data_offsets"][0])
            raw = f.read(t["data_offsets"][1] - t["data_offsets"][0])
            out[key] = np.frombuffer(raw, dtype=t["dtype"]).reshape(t["shape"]).astype(np.float32)
    return out, path


def _must_hash(path: Path, digest: str | None, verify: str, record: VerifiedFiles | None) -> bool:
    """Whether ``path`` has to be hashed: a digest to check, and no record that it already was."""
    return record is not None and (verify == "rehash" or not record.known(path, digest or ""))


def _open_dump_shard(path: Path, sh: dict, d: int, verify: str, record: VerifiedFiles | None
                     ) -> tuple[FileShard, FileShard]:
    rows, size, dtypes = sh["rows"], sh["bytes"], sh["dtype"]
    actual = regular_file(path).st_size
    if actual != size:
        raise DumpError(path, f"truncated or altered: {actual} bytes, the manifest says {size}")
    header, start = read_safetensors_header(path)
    hashing = _must_hash(path, sh["sha256"], verify, record)
    out = []
    for key in ("hidden", "post"):
        t = header.get(key)
        if t is None:
            raise DumpError(path, f"has no {key!r} tensor (it holds {sorted(header)[:8]})")
        if t["code"] != dtypes[key]:
            raise DumpError(path, f"{key} is {t['code']} but the manifest says {dtypes[key]}")
        if list(t["shape"]) != [rows, d]:
            raise DumpError(path, f"{key} has shape {t['shape']} but the manifest says ({rows}, {d})")
        out.append(FileShard(path, start + t["data_offsets"][0], rows, d, t["dtype"],
                             sha256=sh["sha256"] if hashing else None, segments=sh.get("segments"),
                             record=record))
    if start + max(t["data_offsets"][1] for t in header.values()) != size:
        raise DumpError(path, "its header does not account for every byte of the file")
    return out[0], out[1]
