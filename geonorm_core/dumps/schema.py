"""The schema of geonorm's dump manifest, checked whole before any of it is used, and its digest.

:func:`check_manifest` walks a parsed manifest once: every field the readers and the writer
use has its type (``int`` is never a ``bool`` or a ``float``; numbers are finite), its range
(counts non-negative, ``d >= 1``, ``eps >= 0``), its known values (roles, kinds, dtype codes,
64-hex-digit digests) and its layout (site folders are one path component, shards live in their
site's folder).  A failure is a :class:`~geonorm_core.dumps.shards.DumpError` naming the manifest
and the field (``sites[3].shards[0].bytes``).  Paths are further checked to stay inside the
dump when they are used (:func:`geonorm_core.dumps.files.inside`).

The manifest carries its own digest (:data:`DIGEST_KEY`, from version 2 on): the sha256 of
its canonical JSON without that key (:func:`manifest_digest`).  An edited manifest (an eps,
a gain, a role, a renamed key) no longer matches it, which every read but
``verify="size"`` refuses.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from .formats import SAFETENSORS_DTYPES
from .shards import DumpError

__all__ = ["DIGEST_KEY", "KINDS", "ROLES", "check_manifest", "manifest_digest"]

#: The manifest's own sha256 (of its canonical JSON without this key).
DIGEST_KEY = "manifest_sha256"
#: The roles a site may have (``geonorm_core.sources.sites.ROLES``; a test keeps the two equal).
ROLES = ("embed", "LN1", "q_norm", "k_norm", "post_attn", "cross_attn", "LN2", "post_mlp", "other", "final")
#: The kinds of norm a site may be.
KINDS = ("layernorm", "rmsnorm", "unknown")

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_MAX_INT = 1 << 62  # counts and sizes beyond this are not real


def manifest_digest(man: Mapping) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces), without :data:`DIGEST_KEY`."""
    body = {k: v for k, v in man.items() if k != DIGEST_KEY}
    raw = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True)
    return hashlib.sha256(raw.encode()).hexdigest()


class _Checker:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = path

    def fail(self, field: str, problem: str) -> None:
        raise DumpError(self.path, f"manifest field {field}: {problem}")

    def get(self, obj: Mapping, key: str, field: str, required: bool = True) -> Any:
        if key not in obj:
            if required:
                self.fail(f"{field}{key}", "missing")
            return None
        return obj[key]

    def integer(self, v: Any, field: str, lo: int = 0, hi: int = _MAX_INT) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(field, f"must be an integer, got {_show(v)}")
        if not lo <= v <= hi:
            self.fail(field, f"{v} is outside [{lo}, {hi}]")
        return v

    def number(self, v: Any, field: str, lo: float = 0.0) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            self.fail(field, f"must be a finite number, got {_show(v)}")
        if v < lo:
            self.fail(field, f"{v} is below {lo}")
        return float(v)

    def kind(self, v: Any, types: type | tuple, field: str, what: str, optional: bool = False) -> Any:
        if (v is None and optional) or (isinstance(v, types) and not isinstance(v, bool)):
            return v
        self.fail(field, f"must be {what}{' or null' if optional else ''}, got {_show(v)}")

    def one_of(self, v: Any, allowed: tuple, field: str, optional: bool = False) -> Any:
        if (v is None and optional) or (isinstance(v, str) and v in allowed):
            return v
        self.fail(field, f"{_show(v)} is not one of {', '.join(allowed)}")

    def digest(self, v: Any, field: str) -> str:
        if not isinstance(v, str) or not _HEX64.match(v):
            self.fail(field, f"must be a sha256 (64 lowercase hex digits), got {_show(v)}")
        return v


def check_manifest(man: Any, path: str | os.PathLike, *, version: int) -> None:
    """Check a parsed manifest against the dump format (see the module docstring).

    Raises
    ------
    DumpError
        naming ``path`` and the first field that is missing, of the wrong type, out of range or
        unknown.
    """
    c = _Checker(path)
    if not isinstance(man, dict):
        c.fail("(top level)", f"must be a JSON object, got {type(man).__name__}")
    if not isinstance(c.get(man, "complete", ""), bool):
        c.fail("complete", f"must be true or false, got {_show(man['complete'])}")
    c.kind(c.get(man, "config", ""), dict, "config", "an object")
    c.kind(man.get("report_meta", {}), dict, "report_meta", "an object")
    c.integer(c.get(man, "batches_done", ""), "batches_done")
    c.integer(c.get(man, "tokens", ""), "tokens")
    for key in ("first_batch", "last_batch"):
        c.kind(man.get(key), str, key, "a string", optional=True)
    if version >= 2:
        c.digest(c.get(man, DIGEST_KEY, ""), DIGEST_KEY)
    params = man.get("params")
    if params is not None:
        c.kind(params, dict, "params", "an object")
        c.kind(c.get(params, "file", "params."), str, "params.file", "a path")
        c.integer(c.get(params, "bytes", "params."), "params.bytes")
        c.digest(c.get(params, "sha256", "params."), "params.sha256")
    sites = c.kind(c.get(man, "sites", ""), list, "sites", "a list")
    names = set()
    for i, entry in enumerate(sites):
        _check_site(c, entry, f"sites[{i}]", params is not None)
        if entry["name"] in names:
            c.fail(f"sites[{i}].name", f"{entry['name']!r} appears twice")
        names.add(entry["name"])


def _check_site(c: _Checker, entry: Any, at: str, has_params: bool) -> None:
    c.kind(entry, dict, at, "an object")
    name = c.kind(c.get(entry, "name", f"{at}."), str, f"{at}.name", "a string")
    folder = c.kind(c.get(entry, "dir", f"{at}."), str, f"{at}.dir", "a folder name")
    if not folder or "/" in folder or folder in (".", ".."):
        c.fail(f"{at}.dir", f"{folder!r} must be one folder name inside the dump")
    meta = c.kind(c.get(entry, "meta", f"{at}."), dict, f"{at}.meta", "an object")
    if meta.get("name", name) != name:
        c.fail(f"{at}.meta.name", f"{_show(meta.get('name'))} differs from the site's name {name!r}")
    d = c.integer(c.get(meta, "d", f"{at}.meta."), f"{at}.meta.d", 1, 1 << 31)
    if "eps" in meta:
        c.number(meta["eps"], f"{at}.meta.eps")
    c.one_of(meta.get("role"), ROLES, f"{at}.meta.role", optional=True)
    c.one_of(meta.get("kind", "unknown"), KINDS, f"{at}.meta.kind")
    if meta.get("layer") is not None:
        c.integer(meta["layer"], f"{at}.meta.layer")
    c.kind(meta.get("stack"), str, f"{at}.meta.stack", "a string", optional=True)
    for what in ("gain", "bias"):
        v = c.kind(entry.get(what), str, f"{at}.{what}", "a parameter name", optional=True)
        if v is not None and not has_params:
            c.fail(f"{at}.{what}", "names a parameter but the manifest has no params file")
    rows = c.integer(c.get(entry, "rows", f"{at}."), f"{at}.rows")
    total = 0
    for j, sh in enumerate(c.kind(c.get(entry, "shards", f"{at}."), list, f"{at}.shards", "a list")):
        total += _check_shard(c, sh, f"{at}.shards[{j}]", folder, d)
    if total != rows:
        c.fail(f"{at}.rows", f"{rows}, but its shards list {total} rows")


def _check_shard(c: _Checker, sh: Any, at: str, folder: str, d: int) -> int:
    c.kind(sh, dict, at, "an object")
    f = c.kind(c.get(sh, "file", f"{at}."), str, f"{at}.file", "a path")
    if not re.fullmatch(re.escape(folder) + r"/shard-\d{6}\.safetensors", f):
        c.fail(f"{at}.file", f"{f!r} is not a shard of its site's folder {folder!r} "
                             f"({folder}/shard-NNNNNN.safetensors)")
    rows = c.integer(c.get(sh, "rows", f"{at}."), f"{at}.rows", 0, _MAX_INT // max(1, d))
    c.integer(c.get(sh, "bytes", f"{at}."), f"{at}.bytes")
    c.digest(c.get(sh, "sha256", f"{at}."), f"{at}.sha256")
    dtypes = c.kind(c.get(sh, "dtype", f"{at}."), dict, f"{at}.dtype", "an object")
    for side in ("hidden", "post"):
        c.one_of(c.get(dtypes, side, f"{at}.dtype."), tuple(SAFETENSORS_DTYPES), f"{at}.dtype.{side}")
    segs = sh.get("segments")
    if segs is not None:
        c.kind(segs, list, f"{at}.segments", "a list of row counts")
        for k, s in enumerate(segs):
            c.integer(s, f"{at}.segments[{k}]", 1)
        if sum(segs) != rows:
            c.fail(f"{at}.segments", f"add up to {sum(segs)}, the shard has {rows} rows")
    batches = sh.get("batches")
    if batches is not None:
        c.kind(batches, list, f"{at}.batches", "[first, last]")
        if len(batches) != 2:
            c.fail(f"{at}.batches", f"must be [first, last], got {_show(batches)}")
        for k, b in enumerate(batches):
            c.integer(b, f"{at}.batches[{k}]")
    return rows


def _show(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, (dict, list, str, int, float, type(None))) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
