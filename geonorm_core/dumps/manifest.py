"""geonorm's own dump format: the manifest, and a dump's sites opened and checked against it.

A dump (written by :mod:`.writing`) is a folder with ``manifest.json``, a params file
holding every site's gain and bias, and per site a series of safetensors shards of
"hidden" and "post" rows.  Opening checks everything that costs no full read: each
shard's size and header against the manifest (rows, d, dtype, byte ranges), that the
dump finished, and -- with ``verify="sha256"`` -- arranges each shard's digest to be
checked before its rows count (:mod:`.verify` remembers files that already hashed right).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .formats import prod, read_safetensors_header
from .shards import DEFAULT_EPS, ActivationSite, DumpError, FileShard
from .verify import VerifiedFiles, hash_file

__all__ = ["DUMP_FORMAT", "DUMP_VERSION", "MANIFEST_NAME", "VERIFY_MODES", "open_dump", "read_manifest"]

MANIFEST_NAME = "manifest.json"
DUMP_FORMAT = "geonorm-dump"
DUMP_VERSION = 1

#: How much of a geonorm dump is checked before its rows count (see :func:`open_activations`).
VERIFY_MODES = ("sha256", "rehash", "size")


def read_manifest(path: str | os.PathLike) -> dict:
    """The JSON manifest of a geonorm dump, with its format checked."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            man = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DumpError(path, f"cannot read the manifest: {exc}") from None
    fmt = man.get("format") if isinstance(man, dict) else None
    if fmt != DUMP_FORMAT:
        raise DumpError(path, f"not a geonorm dump manifest (format {fmt!r})")
    if man.get("version") != DUMP_VERSION:
        raise DumpError(path, f"dump format version {man.get('version')!r}; this geonorm reads "
                              f"{DUMP_VERSION}")
    return man


def open_dump(manifest: Path, verify: str, partial: bool) -> list[ActivationSite]:
    man = read_manifest(manifest)
    root = manifest.parent
    if not man.get("complete") and not partial:
        raise DumpError(manifest, f"the dump is incomplete (interrupted after {man.get('batches_done', 0)} "
                                  f"batches): finish it with `geonorm dump --resume`, or pass partial=True "
                                  f"(--partial) to analyze the batches written")
    record = VerifiedFiles(root) if verify != "size" else None
    params = _read_params(root, man.get("params"), verify, record)
    report_meta = {**man.get("report_meta", {}), "source": str(root)}
    sites = []
    for entry in man.get("sites", []):
        try:
            name, meta, shards = entry["name"], entry["meta"], entry["shards"]
        except (KeyError, TypeError):
            raise DumpError(manifest, f"malformed site entry {str(entry)[:120]}") from None
        d = int(meta["d"])
        hidden, post = [], []
        for sh in shards:
            h, p_ = _open_dump_shard(root, sh, d, verify, record)
            hidden.append(h)
            post.append(p_)
        if sum(s.rows for s in hidden) != int(entry.get("rows", -1)):
            raise DumpError(manifest, f"site {name}: manifest says {entry.get('rows')} rows, its shards list "
                                      f"{sum(s.rows for s in hidden)}")
        gain = params.get(entry.get("gain")) if entry.get("gain") else None
        bias = params.get(entry.get("bias")) if entry.get("bias") else None
        for what, v in (("gain", gain), ("bias", bias)):
            if v is not None and v.shape != (d,):
                raise DumpError(root / man["params"]["file"],
                                f"site {name}: {what} has shape {v.shape}, d={d}")
        if not hidden:
            continue  # nothing written for this site (yet)
        sites.append(ActivationSite(name=name, meta=meta, hidden=hidden, post=post, gain=gain, bias=bias,
                                    eps=float(meta.get("eps", DEFAULT_EPS)), report_meta=report_meta))
    if not sites:
        raise DumpError(manifest, "the dump holds no rows")
    return sites


def _read_params(root: Path, entry: dict | None, verify: str, record: VerifiedFiles | None
                 ) -> dict[str, np.ndarray]:
    if not entry:
        return {}
    path = root / entry["file"]
    if not path.is_file():
        raise DumpError(path, "missing (the sites' gains and biases)")
    if path.stat().st_size != entry.get("bytes"):
        raise DumpError(path, f"size {path.stat().st_size} bytes, the manifest says {entry.get('bytes')}")
    if _must_hash(path, entry.get("sha256"), verify, record):
        digest, identity = hash_file(path)
        if digest != entry.get("sha256"):
            raise DumpError(path, "sha256 does not match the manifest (the gains and biases are corrupt)")
        record.add(path, identity, digest)
    header, start = read_safetensors_header(path)
    return {key: np.fromfile(path, dtype=t["dtype"], count=prod(t["shape"]),
                             offset=start + t["data_offsets"][0]).reshape(t["shape"]).astype(np.float32)
            for key, t in header.items()}


def _must_hash(path: Path, digest: str | None, verify: str, record: VerifiedFiles | None) -> bool:
    """Whether ``path`` has to be hashed: a digest to check, and no record that it already was."""
    return record is not None and (verify == "rehash" or not record.known(path, digest or ""))


def _open_dump_shard(root: Path, sh: dict, d: int, verify: str, record: VerifiedFiles | None
                     ) -> tuple[FileShard, FileShard]:
    try:
        path = root / sh["file"]
        rows, size, dtypes = int(sh["rows"]), int(sh["bytes"]), sh["dtype"]
    except (KeyError, TypeError, ValueError):
        raise DumpError(root / MANIFEST_NAME, f"malformed shard entry {str(sh)[:120]}") from None
    if not path.is_file():
        raise DumpError(path, "missing: the manifest lists it")
    actual = path.stat().st_size
    if actual != size:
        raise DumpError(path, f"truncated or altered: {actual} bytes, the manifest says {size}")
    header, start = read_safetensors_header(path)
    hashing = _must_hash(path, sh.get("sha256"), verify, record)
    out = []
    for key in ("hidden", "post"):
        t = header.get(key)
        if t is None:
            raise DumpError(path, f"has no {key!r} tensor (it holds {sorted(header)})")
        want = dtypes.get(key) if isinstance(dtypes, dict) else None
        if t["code"] != want:
            raise DumpError(path, f"{key} is {t['code']} but the manifest says {want}")
        if list(t["shape"]) != [rows, d]:
            raise DumpError(path, f"{key} has shape {t['shape']} but the manifest says ({rows}, {d})")
        out.append(FileShard(path, start + t["data_offsets"][0], rows, d, t["dtype"],
                             sha256=sh.get("sha256") if hashing else None, segments=sh.get("segments"),
                             record=record))
    if start + max(header[k]["data_offsets"][1] for k in header) != size:
        raise DumpError(path, "its header does not account for every byte of the file")
    segs = out[0].segments
    if segs is not None and (sum(segs) != rows or any(s <= 0 for s in segs)):
        raise DumpError(root / MANIFEST_NAME, f"{sh['file']}: segments {list(segs)[:8]}... do not add up to "
                                              f"its {rows} rows")
    return out[0], out[1]


