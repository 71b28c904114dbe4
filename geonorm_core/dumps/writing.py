"""Write a model's norm-site activations to disk, in a form that survives interruption.

The paper stored every hidden vector entering LN1/LN2 and every
post-norm vector -- 2 TB for GPT-2 XL -- before measuring anything.  geonorm
measures while the model runs (:mod:`geonorm_core.sources.adapter`); a dump is for
when the vectors themselves are wanted: to analyze them again with other
settings, on a cluster, or with other tools.  :func:`dump` writes them as
safetensors shards that any safetensors reader opens, and
:func:`geonorm_core.dumps.reading.analyze_dump` turns them into the report
``analyze`` gives on the same batches, bitwise.

Layout ::

    out_dir/
      manifest.json                         what is on disk and how far the run got
      params.safetensors                    every site's gain ("<site>.gain") and bias, float32
      003.<site>/shard-000000.safetensors   "hidden" and "post": (rows, d), the model's dtype
                                            (folders numbered in forward order)

Checkpoints
-----------
Rows are buffered per site and written at *checkpoints*: after the batch that
brings the buffers to ``shard_rows`` rows, one shard per site holding exactly
the rows of those whole batches (so a shard has ``shard_rows`` rows or a
batch's worth more, and the last one fewer).  A checkpoint

1. writes each site's shard under a temporary name (``.shard-*.<pid>.tmp`` in
   its folder), fsyncs it and renames it to its final name (``os.replace``);
2. fsyncs the folders, so the renames are durable;
3. rewrites the manifest the same way (temporary file, fsync, rename, fsync):
   it now lists the new shards -- rows, dtypes, byte size, sha256, the batch
   range, the row counts the hooks saw -- and the number of batches done.

A shard is therefore under its final name only when complete, and listed only
when durable: a crash leaves either a manifest that does not list a shard
(resume rewrites it) or one that lists complete files.  Readers take the
manifest's word, never a directory listing.  The manifest is rewritten whole
at each checkpoint (~300 bytes per shard listed): for SmolLM2 over 1M tokens
that is ~1% of the bytes the shards take.

Resume
------
``resume=True`` continues an interrupted dump: it needs the same model (its
class, and the same gains and biases, compared through the params file's sha256),
sites, dtypes, shard_rows and **the same batches in the same order** (e.g.
:func:`geonorm_core.models.corpus.token_batches` on the same text and settings, which
is deterministic).  It skips the batches already written -- checking the
fingerprints (sha256 of ``input_ids`` and ``attention_mask``) of the first and
the last of them against the manifest -- deletes any shard or temporary file
the manifest does not list, and carries on.  The result is the dump an
uninterrupted run writes, byte for byte.

Disk space
----------
``tokens x (sum over sites of 2 d) x itemsize`` bytes, printed before the run; the run
refuses to start (``OSError`` ENOSPC) when the disk's free space is smaller.  The tokens
are counted from ``batches`` when it is a list, else taken from ``max_tokens``; without
either the need cannot be estimated (said so), and each checkpoint checks its own bytes
before it writes.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import sys
from collections.abc import Sequence as SequenceABC
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import ml_dtypes
import numpy as np
import torch

from ..durable import LOCK_NAME, fsync_dir, write_json
from ..sources.adapter import Analyzer
from ..sources.batches import real_tokens
from .files import inside
from .formats import SAFETENSORS_CODES, safetensors_chunks, write_safetensors
from .manifest import DUMP_FORMAT, DUMP_VERSION, MANIFEST_NAME, read_manifest
from .schema import DIGEST_KEY, manifest_digest
from .shards import DumpError

__all__ = ["DEFAULT_BUFFER_BYTES", "DEFAULT_SHARD_BYTES", "DumpError", "DumpWriter", "default_shard_rows", "dump",
           "write_safetensors"]

#: The size of one shard file (a site's hidden + post rows) the default ``shard_rows`` aims at.
#: Reading a dump costs about 0.3 ms per file beyond its bytes (maps, unmaps, accumulator
#: updates): from the page cache, bf16 shards of SmolLM2's width (d=576) read at 0.70x the speed
#: of a raw read of the same files with 2,048 rows (4.7 MB), 0.88x with 8,192, 1.0x with 16,384
#: (benchmarks/dump_read.py, 2 cores).  32 MiB: SmolLM2 writes 7,281-row fp32 and 14,563-row
#: bf16 shards.
DEFAULT_SHARD_BYTES = 32 << 20
#: ... unless the rows buffered between checkpoints (all sites) would take more memory than this.
DEFAULT_BUFFER_BYTES = 2 << 30

_DTYPE_NAMES = {"float64": np.float64, "float32": np.float32, "float16": np.float16,
                "bfloat16": ml_dtypes.bfloat16, "fp64": np.float64, "fp32": np.float32, "fp16": np.float16,
                "bf16": ml_dtypes.bfloat16}
_PARAMS_NAME = "params.safetensors"
_SHARD_RE = re.compile(r"shard-\d{6}\.safetensors\Z")


# ---------------------------------------------------------------------------------------- the writer


def _site_dir(index: int, name: str) -> str:
    return f"{index:03d}." + re.sub(r"[^A-Za-z0-9._-]", "_", name)


class DumpWriter:
    """The on-disk side of a dump: buffers per site, checkpoints, the manifest.

    Independent of torch: give it the sites' metadata and parameters, then rows
    (:meth:`add`), and call :meth:`checkpoint` at batch boundaries and
    :meth:`finish` at the end.  :func:`dump` drives it from model hooks; tests and
    benchmarks drive it with arrays.

    Parameters
    ----------
    out_dir : the dump folder (created; must be empty or hold a dump to resume).
    sites : one dict per site: ``meta`` (``NormSite.to_dict()``: name, d, eps, ...), ``gain``, ``bias``
        (arrays of d values or None).
    config : what a resumed run must match (model class, dtype, shard_rows, ...).
    report_meta : ``Report.meta`` of the analysis (model, settings).
    resume : continue the dump in ``out_dir`` if there is one.
    """

    def __init__(self, out_dir: str | os.PathLike, sites: Sequence[Mapping], *, config: Mapping,
                 report_meta: Mapping | None = None, resume: bool = False) -> None:
        self.root = Path(out_dir)
        self.manifest_path = self.root / MANIFEST_NAME
        names = [s["meta"]["name"] for s in sites]
        if len(set(names)) != len(names):
            raise ValueError(f"sites: names must be unique, got {names}")
        params = {}
        entries = []
        for i, s in enumerate(sites):
            meta = dict(s["meta"])
            entry = {"name": meta["name"], "dir": _site_dir(i, meta["name"]), "meta": meta, "gain": None,
                     "bias": None, "rows": 0, "shards": []}
            for what in ("gain", "bias"):
                if s.get(what) is not None:
                    entry[what] = f"{meta['name']}.{what}"
                    params[entry[what]] = [np.asarray(s[what], dtype=np.float32).reshape(-1)]
            entries.append(entry)
        self._params = params
        self._buffers: dict[str, dict[str, list]] = {n: {"hidden": [], "post": [], "segments": []}
                                                     for n in names}
        fresh = {"format": DUMP_FORMAT, "version": DUMP_VERSION, "complete": False, "config": dict(config),
                 "report_meta": dict(report_meta or {}), "batches_done": 0, "tokens": 0,
                 "first_batch": None, "last_batch": None, "params": None, "sites": entries}
        if self.manifest_path.exists():
            if not resume:
                raise FileExistsError(f"{self.root} already holds a geonorm dump; pass resume=True "
                                      f"(geonorm dump --resume) to continue it, or choose another folder")
            self.manifest = self._resume(fresh)
        else:
            if self.root.exists() and any(p.name != LOCK_NAME for p in self.root.iterdir()):
                raise FileExistsError(f"{self.root} is not empty and holds no geonorm dump; choose an empty "
                                      f"or new folder")
            self.root.mkdir(parents=True, exist_ok=True)
            self.manifest = fresh
            self._write_params()
            self._write_manifest()

    # -- state
    @property
    def batches_done(self) -> int:
        return int(self.manifest["batches_done"])

    @property
    def tokens(self) -> int:
        return int(self.manifest["tokens"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    @property
    def buffered_rows(self) -> int:
        """The most rows any site holds in memory."""
        return max((sum(self._buffers[n]["segments"]) for n in self._buffers), default=0)

    def buffered_bytes(self) -> int:
        return sum(a.nbytes for b in self._buffers.values() for side in ("hidden", "post") for a in b[side])

    # -- writing
    def add(self, name: str, hidden: np.ndarray, post: np.ndarray) -> None:
        """Buffer rows of one site (one hook call: a segment, replayed as one block by the analysis)."""
        if hidden.shape != post.shape or hidden.ndim != 2:
            raise ValueError(f"{name}: hidden {hidden.shape} and post {post.shape} must be the same "
                             f"(rows, d)")
        if hidden.shape[0] == 0:
            return
        b = self._buffers[name]
        for side, a in (("hidden", hidden), ("post", post)):
            if b[side] and a.dtype != b[side][0].dtype:  # one dtype per shard tensor
                a = a.astype(b[side][0].dtype)
            b[side].append(a)
        b["segments"].append(int(hidden.shape[0]))

    def checkpoint(self, batches_done: int, tokens: int, last_batch: str | None) -> None:
        """Write every site's buffered rows as one shard each, then the manifest (see the module docs)."""
        need = self.buffered_bytes()
        if need:
            free = shutil.disk_usage(self.root).free
            if free < need + (1 << 20):
                raise OSError(errno.ENOSPC, f"out of disk space in {self.root}: this checkpoint needs "
                                            f"{_gb(need)}, {_gb(free)} are free; the dump is consistent up "
                                            f"to batch {self.batches_done} (free space, then resume)")
        first = self.batches_done
        dirs = set()
        for entry in self.manifest["sites"]:
            b = self._buffers[entry["name"]]
            if not b["segments"]:
                continue
            folder = self.root / entry["dir"]
            folder.mkdir(exist_ok=True)
            rel = f"{entry['dir']}/shard-{self._next_index(entry):06d}.safetensors"
            digest, size = write_safetensors(self.root / rel, {"hidden": b["hidden"], "post": b["post"]},
                                             {"format": DUMP_FORMAT, "site": entry["name"]})
            rows = sum(b["segments"])
            entry["shards"].append({
                "file": rel, "rows": rows, "bytes": size, "sha256": digest,
                "dtype": {"hidden": SAFETENSORS_CODES[b["hidden"][0].dtype],
                          "post": SAFETENSORS_CODES[b["post"][0].dtype]},
                "batches": [first, batches_done], "segments": list(b["segments"])})
            entry["rows"] += rows
            dirs.add(folder)
            self._buffers[entry["name"]] = {"hidden": [], "post": [], "segments": []}
        for folder in sorted(dirs):
            fsync_dir(folder)
        self.manifest.update(batches_done=int(batches_done), tokens=int(tokens), last_batch=last_batch)
        self._write_manifest()

    def set_first_batch(self, fingerprint: str) -> None:
        self.manifest["first_batch"] = fingerprint

    def finish(self, batches_done: int, tokens: int, last_batch: str | None) -> Path:
        """Write what is buffered and mark the dump complete; return the manifest's path."""
        self.manifest["complete"] = True
        self.checkpoint(batches_done, tokens, last_batch)
        return self.manifest_path

    def _next_index(self, entry: Mapping) -> int:
        return int(entry["shards"][-1]["file"].rsplit("-", 1)[1].split(".")[0]) + 1 if entry["shards"] else 0

    def _write_manifest(self) -> None:
        self.manifest["version"] = DUMP_VERSION  # a resumed version-1 dump is sealed as version 2
        self.manifest[DIGEST_KEY] = manifest_digest(self.manifest)
        write_json(self.manifest_path, self.manifest)

    def _write_params(self) -> None:
        path = self.root / _PARAMS_NAME
        digest, size = write_safetensors(path, self._params, {"format": DUMP_FORMAT})
        fsync_dir(self.root)
        self.manifest["params"] = {"file": _PARAMS_NAME, "bytes": size, "sha256": digest}

    # -- resume
    def _resume(self, fresh: dict) -> dict:
        old = read_manifest(self.manifest_path)
        if old["config"] != fresh["config"]:
            raise ValueError(f"resume: {self.manifest_path} was written with config {old['config']}, this "
                             f"run has {fresh['config']}; resume needs the same model, sites and settings")
        if [(s["name"], s["meta"]) for s in old["sites"]] != [(s["name"], s["meta"]) for s in fresh["sites"]]:
            raise ValueError(f"resume: the dump's norm sites differ from this model's: "
                             f"{[s['name'] for s in old['sites']][:4]}... vs {list(self._buffers)[:4]}...")
        for i, (o, n) in enumerate(zip(old["sites"], fresh["sites"])):  # resume owns geonorm's layout only
            if o["dir"] != n["dir"]:
                raise DumpError(self.manifest_path, f"sites[{i}].dir: {o['dir']!r} is not the folder geonorm "
                                                    f"writes for this site ({n['dir']!r}); refusing to resume")
        if (old.get("params") or {}).get("sha256") != _params_digest(self._params):
            raise ValueError(f"resume: the gains/biases in {self.root / _PARAMS_NAME} differ from this "
                             f"model's: not the same weights")
        self._discard_unlisted(old)
        return old

    def _discard_unlisted(self, man: Mapping) -> None:
        """Delete temporary files and shards the manifest does not list (a checkpoint cut short)."""
        listed = {s["file"] for e in man["sites"] for s in e["shards"]}
        for i, entry in enumerate(man["sites"]):
            folder = inside(self.root, entry["dir"], f"sites[{i}].dir", self.manifest_path)  # no symlink out
            if not folder.is_dir():
                continue
            for f in folder.iterdir():
                rel = f"{entry['dir']}/{f.name}"
                if (f.name.startswith(".") and f.name.endswith(".tmp")) or (_SHARD_RE.match(f.name)
                                                                              and rel not in listed):
                    f.unlink()
        for f in self.root.iterdir():
            if f.name.startswith(".") and f.name.endswith(".tmp"):
                f.unlink()


def _params_digest(params: Mapping[str, Sequence[np.ndarray]]) -> str:
    """The sha256 write_safetensors gives the params file, without writing it."""
    h = hashlib.sha256()
    for c in safetensors_chunks(params, {"format": DUMP_FORMAT})[0]:
        h.update(c)
    return h.hexdigest()


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------------------------------- the hooks


def _as_store_dtype(dtype: Any) -> np.dtype | None:
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if isinstance(dtype, str):
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"dtype must be float32, bfloat16, float16 or float64, got {dtype!r}")
        return np.dtype(_DTYPE_NAMES[dtype])
    dt = np.dtype(dtype)
    if dt not in SAFETENSORS_CODES:
        raise ValueError(f"dtype must be float32, bfloat16, float16 or float64, got {dt}")
    return dt


def _rows_to(writer: DumpWriter, dtype: np.dtype | None) -> Callable:
    """An :class:`Analyzer` row sink that hands each site's kept rows to ``writer`` as private
    contiguous copies (torch reuses its buffers) in the store dtype."""
    def store(a: np.ndarray) -> np.ndarray:
        if dtype is not None and a.dtype != dtype:
            return np.ascontiguousarray(a.astype(dtype))
        # kept rows picked out of padding are already a private copy; a view of a hook's buffer is not
        return a if a.flags.owndata and a.flags.c_contiguous else np.array(a, order="C")

    def sink(site, hidden: np.ndarray, post: np.ndarray) -> None:
        writer.add(site.name, store(hidden), store(post))

    return sink


def _fingerprint(batch: Mapping[str, Any]) -> str:
    """sha256 of a batch's token ids and mask: what resume checks to know the batches are the same."""
    h = hashlib.sha256()
    for key in ("input_ids", "attention_mask"):
        v = batch.get(key) if isinstance(batch, Mapping) else None
        if v is None:
            continue
        a = np.ascontiguousarray((v.detach().cpu() if torch.is_tensor(v) else torch.as_tensor(v)).numpy()
                                 .astype(np.int64))
        h.update(f"{key}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _batch_tokens(batch: Mapping[str, Any], exclude_first_token: bool) -> int:
    """The tokens ``Analyzer.feed`` will count in a batch (non-pad, maybe minus each first)."""
    return int(real_tokens(tuple(batch["input_ids"].shape), batch.get("attention_mask"),
                           exclude_first_token=exclude_first_token).sum())


def dump(model: torch.nn.Module, batches: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike, *,
         sites: Sequence[str] | None = None, dtype: Any = None, shard_rows: int | None = None,
         resume: bool = False, exclude_first_token: bool = False, max_tokens: int | None = None,
         meta: Mapping | None = None, progress: Callable[[int], None] | None = None) -> Path:
    """Run ``model`` over ``batches`` and write every norm site's input and output rows to disk.

    For each site and each real token (padding excluded, as :func:`~geonorm_core.sources.adapter.analyze`
    does) the vector entering the norm ("hidden", the residual stream for LN1) and the norm's
    output ("post", gain and bias included; G8) -- the data of the paper's
    measurements.  See the module docstring for the layout, checkpoints and resume.

    Parameters
    ----------
    model : a torch / Hugging Face model (any device).
    batches : dicts with ``input_ids`` (and ``attention_mask``); for ``resume`` the same ones in
        the same order as the interrupted run.
    out_dir : a new or empty folder (or the dump to resume).
    sites : module names (default: every residual-stream norm site, as ``analyze``).
    dtype : store the rows in this dtype (``"bfloat16"``, ``torch.float16``, ...); default: as the
        model produces them (a bf16 model's rows stay bf16).
    shard_rows : rows per shard and site (default: :func:`default_shard_rows`; on ``resume``, the
        dump's own).
    resume : continue the dump in ``out_dir``.
    exclude_first_token : drop each sequence's first real token.
    max_tokens : the tokens ``batches`` will give, for the disk-space estimate when it is not a list.
    meta : extra ``Report.meta`` entries (model name, text, ...).
    progress : called with the tokens written so far after each batch.

    Returns
    -------
    Path
        The manifest; ``geonorm_core.analyze_dump(path.parent)`` reads the dump.

    Raises
    ------
    OSError
        ENOSPC when the disk cannot hold the estimated dump (before anything is written) or a
        checkpoint.
    FileExistsError
        ``out_dir`` holds a dump and ``resume`` is False, or holds something else.
    ValueError
        ``resume`` with other settings, sites, weights or batches than the dump's.
    """
    store = _as_store_dtype(dtype)
    recorder = Analyzer(model, sites, exclude_first_token=exclude_first_token)  # its rows go to the writer
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    model_dtype = str(param.dtype).removeprefix("torch.") if param is not None else "float32"
    itemsize = (store or np.dtype(_DTYPE_NAMES.get(model_dtype, np.float32))).itemsize
    per_token = sum(2 * s.d for s in recorder.sites) * itemsize
    if shard_rows is None:
        previous_rows = _manifest_shard_rows(out_dir) if resume else None
        shard_rows = previous_rows or default_shard_rows(len(recorder.sites), per_token)
    if isinstance(shard_rows, bool) or not isinstance(shard_rows, int) or shard_rows < 1:
        raise ValueError(f"shard_rows must be a positive int, got {shard_rows!r}")
    config = {"model": type(model).__name__, "sites": [s.name for s in recorder.sites],
              "model_dtype": model_dtype, "dtype": None if store is None else store.name,
              "shard_rows": int(shard_rows),
              "exclude_first_token": bool(exclude_first_token)}
    report_meta = {"model": type(model).__name__, "exclude_first_token": bool(exclude_first_token),
                   **dict(meta or {})}
    manifest = Path(out_dir) / MANIFEST_NAME
    previous = read_manifest(manifest) if resume and manifest.is_file() else {}
    done, tokens = int(previous.get("batches_done", 0)), int(previous.get("tokens", 0))
    if not previous.get("complete"):  # the disk is checked before anything is written
        if isinstance(batches, SequenceABC):
            remaining = sum(_batch_tokens(b, exclude_first_token) for b in list(batches)[done:])
        else:
            remaining = None if max_tokens is None else max(0, int(max_tokens) - tokens)
        _check_disk(Path(out_dir), remaining, per_token, len(recorder.sites), shard_rows)
    site_specs = [{"meta": s.to_dict(), "gain": s.gain, "bias": s.bias} for s in recorder.sites]
    writer = DumpWriter(out_dir, site_specs, config=config, report_meta=report_meta, resume=resume)
    recorder.row_sink = _rows_to(writer, store)
    if writer.complete:
        print(f"geonorm dump: {writer.manifest_path} is complete ({writer.tokens} tokens); nothing to do",
              file=sys.stderr)
        return writer.manifest_path
    if progress is not None and tokens:
        progress(tokens)

    index = -1
    last = writer.manifest.get("last_batch")
    with recorder:
        for index, batch in enumerate(batches):
            fp = _fingerprint(batch)
            if index < done:  # written by the interrupted run: check it is the same batch, skip it
                if (index == 0 and fp != writer.manifest["first_batch"]) or (index == done - 1
                                                                                and fp != last):
                    raise ValueError(f"resume: batch {index} differs from the one the dump in {writer.root} "
                                     f"was written with; resume needs the same batches in the same order")
                continue
            if index == 0:
                writer.set_first_batch(fp)
            tokens += recorder.feed(batch)
            last = fp
            if writer.buffered_rows >= shard_rows:
                writer.checkpoint(index + 1, tokens, last)
            if progress is not None:
                progress(tokens)
    if index + 1 < done:
        raise ValueError(f"resume: the batches ended after {index + 1}, but the dump in {writer.root} has "
                         f"{done} done; resume needs the same batches in the same order")
    if tokens == 0:
        raise ValueError("batches: no tokens were dumped (empty corpus, or every token masked out)")
    return writer.finish(max(index + 1, done), tokens, last)


def default_shard_rows(n_sites: int, per_token: int) -> int:
    """Rows per shard when none is given: shard files of about ``DEFAULT_SHARD_BYTES`` (fewer
    files to open, map and fold), with the buffers of all ``n_sites`` sites (``per_token`` bytes
    a token, hidden + post) under ``DEFAULT_BUFFER_BYTES``; at least 64."""
    per_site = max(1, per_token // max(1, n_sites))
    return max(64, min(DEFAULT_SHARD_BYTES // per_site, DEFAULT_BUFFER_BYTES // max(1, per_token)))


def _manifest_shard_rows(out_dir: str | os.PathLike) -> int | None:
    """The shard_rows an existing dump was written with (a resume keeps it, whatever the default)."""
    manifest = Path(out_dir) / MANIFEST_NAME
    if not manifest.is_file():
        return None
    rows = read_manifest(manifest).get("config", {}).get("shard_rows")
    return int(rows) if isinstance(rows, int) and rows > 0 else None


def _check_disk(root: Path, tokens: int | None, per_token: int, n_sites: int, shard_rows: int) -> None:
    """Print the space the dump needs; refuse (ENOSPC) when the disk's free space is smaller."""
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if tokens is None:
        print(f"geonorm dump: disk space needed cannot be estimated (batches is an iterator and max_tokens "
              f"is not given): {per_token} bytes a token ({n_sites} sites x 2 x d x itemsize); "
              f"{_gb(free)} free in {root}", file=sys.stderr)
        return
    checkpoints = -(-tokens // shard_rows) + 1
    need = tokens * per_token + checkpoints * n_sites * 4096 + (1 << 20)  # + headers and the manifest
    print(f"geonorm dump: {tokens} tokens x {per_token} bytes ({n_sites} sites x 2 x d x itemsize) = "
          f"{_gb(need)} needed; {_gb(free)} free in {root}", file=sys.stderr)
    if need > free:
        raise OSError(errno.ENOSPC, f"not enough disk space in {root} for the dump: {_gb(need)} needed, "
                                    f"{_gb(free)} free (fewer --max-tokens, --sites, or a 16-bit "
                                    f"--store-dtype)")

