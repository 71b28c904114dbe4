"""Text in, token batches out: the default corpus, user text files, and fixed-length batches.

The default corpus (``geonorm_core/data/corpus.txt.gz``) is public-domain English prose shipped
with the package: Lewis Carroll's *Alice's Adventures in Wonderland* (1865) followed by Natsume
Soseki's *Botchan* in Yasotaro Morri's English translation (1918/1919), about 100k SmolLM2
tokens.  Its header (:func:`default_header`) gives title, author, year, the source package and
version each text comes from, why it is public domain, and every edit made to it.

Batches
-------
:func:`token_batches` cuts one token stream into sequences of ``seq_len`` tokens and groups them
``batch_size`` at a time, as a tokenizer called with ``padding=True, return_tensors="pt"`` would
give them: ``{"input_ids", "attention_mask"}`` of dtype ``torch.long``, shape ``(b, L)``.

* **Special tokens follow the tokenizer** (``add_special_tokens=None``, the default): each
  sequence is framed by exactly the special tokens the tokenizer itself puts around one text,
  found by probing it: Gemma and Llama begin every sequence with ``<bos>``/``<s>``, BERT wraps it
  in ``[CLS] ... [SEP]``, SmolLM2 and GPT-2 add nothing.  So every model sees its sequences the
  way it sees ``tokenizer(text)``.  (SmolLM2's ``bos_token`` is the chat-turn marker
  ``<|im_start|>``, which its tokenizer never adds to plain text: it is not prepended.)
  ``add_special_tokens=True`` instead begins every sequence with ``tokenizer.bos_token`` (and
  nothing else), an error if the tokenizer has none; ``False`` adds no special token at all.
* **Order and coverage**: the content of consecutive sequences is consecutive in the stream; no
  token of the text is dropped or repeated.  Texts are tokenized in blocks of about 1 MB ending
  at a line break (memory stays bounded for large files, and tokenizing stops once
  ``max_tokens`` are reached); a text under the block size is tokenized in one call, exactly as
  ``tokenizer(text, add_special_tokens=False)``.  A file need not be read whole:
  :func:`text_blocks` reads it incrementally into the same blocks, so
  ``token_batches(text_blocks(path), ...)`` gives the batches of ``token_batches(read_text(path), ...)``
  with the memory of a block or two, whatever the size of the file.
* **Padding**: only the final sequence can be shorter than ``seq_len``; it is padded on the right
  to the longest sequence of its batch with ``pad_token_id`` (``eos_token_id`` if the tokenizer
  has no pad token, 0 if it has neither) and its ``attention_mask`` is 0 there.  The last batch
  may hold fewer than ``batch_size`` sequences.
* **max_tokens** counts real tokens, special ones included (the positions with attention_mask 1):
  the batches hold exactly ``min(max_tokens, all)`` of them, the first ones of the unlimited
  stream (so the last sequence may lose its closing ``[SEP]``).
* Deterministic: the same text and tokenizer give the same batches.
"""
from __future__ import annotations

import codecs
import functools
import gzip
import os
from collections.abc import Iterable, Iterator
from importlib import resources
from typing import Any

__all__ = ["check_text", "default_header", "default_text", "read_text", "text_blocks", "token_batches"]

_CORPUS = "corpus.txt.gz"
_HEADER_END = "# END OF HEADER\n"
_BLOCK_CHARS = 1 << 20
_READ_BYTES = 1 << 20


@functools.lru_cache(maxsize=1)
def _default_file() -> str:
    raw = resources.files("geonorm_core").joinpath("data", _CORPUS).read_bytes()
    return gzip.decompress(raw).decode("utf-8")


def default_header() -> str:
    """The default corpus's provenance header: each ``#`` line as it is stored in the file."""
    full = _default_file()
    return full[: full.index(_HEADER_END) + len(_HEADER_END)]


def default_text() -> str:
    """The default corpus: public-domain English prose (about 100k SmolLM2 tokens), no header."""
    full = _default_file()
    return full[full.index(_HEADER_END) + len(_HEADER_END):].lstrip("\n")


def read_text(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file (a leading byte-order mark is dropped).

    Raises
    ------
    ValueError
        if the file is not valid UTF-8 (the message names the file, the byte offset and the
        offending byte), or if it is empty or whitespace only.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start:exc.end]
        raise ValueError(
            f"{path}: not UTF-8 text: byte offset {exc.start} (0x{bad.hex()}) {exc.reason}; "
            "convert the file to UTF-8 first (e.g. `iconv -f latin1 -t utf-8`)") from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise ValueError(f"{path}: the text is {'empty' if not text else 'whitespace only'}")
    return text


def _decoded(path: str) -> Iterator[str]:
    """The file's text, decoded as UTF-8 a chunk at a time (a leading BOM dropped); a ValueError
    names the file and the byte offset of the first invalid byte, as :func:`read_text` does."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    consumed = 0
    first = True
    with open(path, "rb") as f:
        while True:
            data = f.read(_READ_BYTES)
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                offset = consumed - pending + exc.start
                raise ValueError(
                    f"{path}: not UTF-8 text: byte offset {offset} (0x{exc.object[exc.start:exc.end].hex()}) "
                    f"{exc.reason}; convert the file to UTF-8 first (e.g. `iconv -f latin1 -t utf-8`)") from None
            consumed += len(data)
            if first and text:
                text = text.removeprefix("\ufeff")
                first = False
            if text:
                yield text
            if not data:
                return


def text_blocks(path: str | os.PathLike) -> Iterator[str]:
    """A UTF-8 text file as the blocks :func:`token_batches` tokenizes, read incrementally.

    The blocks are those of ``read_text(path)`` cut by :func:`token_batches` (about 1 MB, ending
    at a line break), so the batches are the same; memory is a block or two, whatever the size
    of the file.  Errors are :func:`read_text`'s (raised when the reading gets there).
    """
    path = os.fspath(path)
    buf = ""
    seen_text = False
    for piece in _decoded(path):
        buf += piece
        seen_text = seen_text or bool(piece.strip())
        while len(buf) > _BLOCK_CHARS:
            cut = buf.rfind("\n", 0, _BLOCK_CHARS)
            end = cut + 1 if cut >= 0 else _BLOCK_CHARS
            yield buf[:end]
            buf = buf[end:]
    if not seen_text:
        raise ValueError(f"{path}: the text is {'whitespace only' if buf else 'empty'}")
    if buf:
        yield buf


def check_text(path: str | os.PathLike) -> None:
    """Raise :func:`read_text`'s ValueError for a file that is not UTF-8 text, reading it a
    block at a time (memory stays small for any size)."""
    for _ in text_blocks(path):
        pass


def token_batches(text: str | Iterable[str], tokenizer: Any, *, seq_len: int = 256, batch_size: int = 8,
                  max_tokens: int | None = None,
                  add_special_tokens: bool | None = None) -> Iterator[dict]:
    """Cut ``text`` into batches of token sequences for a model's forward pass.

    Parameters
    ----------
    text
        The text (non-empty, not whitespace only), or its blocks as :func:`text_blocks` gives them
        (a file streamed, never held whole).
    tokenizer
        A Hugging Face tokenizer (anything with ``__call__`` returning ``input_ids`` and the
        ``pad_token_id``/``eos_token_id``/``bos_token_id`` attributes).
    seq_len
        Tokens per sequence, special tokens included; larger than the number of special tokens.
    batch_size
        Sequences per batch.
    max_tokens
        Stop after exactly this many real (non-pad) tokens; ``None``: the whole text.
    add_special_tokens
        ``None``: frame each sequence as the tokenizer frames one text (see the module docstring);
        ``True``: begin each sequence with the tokenizer's BOS token; ``False``: no special tokens.

    Yields
    ------
    dict
        ``input_ids`` and ``attention_mask``, ``torch.long`` tensors of shape ``(b, L)`` with
        ``b <= batch_size`` and ``L <= seq_len``.
    """
    if isinstance(text, (bytes, bytearray)) or not isinstance(text, (str, Iterable)):
        raise TypeError(f"text must be a str or an iterable of str blocks, got {type(text).__name__}")
    if isinstance(text, str) and not text.strip():
        raise ValueError(f"text is {'empty' if not text else 'whitespace only'}: nothing to tokenize")
    for arg, value in (("seq_len", seq_len), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise ValueError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
    prefix, suffix = _frame(tokenizer, add_special_tokens)
    body = seq_len - len(prefix) - len(suffix)
    if body < 1:
        raise ValueError(f"seq_len={seq_len} leaves no room for text after the tokenizer's "
                         f"{len(prefix) + len(suffix)} special token(s) per sequence")
    pad_id = _pad_id(tokenizer)
    return _batches(text, tokenizer, prefix, suffix, body, batch_size, max_tokens, pad_id)


def _batches(text, tokenizer, prefix, suffix, body, batch_size, max_tokens, pad_id):
    import torch

    budget = max_tokens
    stream = _token_stream(text, tokenizer)
    pending: list[list[int]] = []
    while budget is None or budget > 0:
        content = _take(stream, body)
        if not content:
            break
        seq = prefix + content + suffix
        if budget is not None:
            seq = seq[:budget]
            budget -= len(seq)
        pending.append(seq)
        if len(pending) == batch_size:
            yield _to_batch(torch, pending, pad_id)
            pending = []
    if pending:
        yield _to_batch(torch, pending, pad_id)


def _to_batch(torch, seqs, pad_id):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _take(stream, n):
    out = []
    for tok in stream:
        out.append(tok)
        if len(out) == n:
            break
    return out


def _str_blocks(text: str) -> Iterator[str]:
    start = 0
    while start < len(text):
        end = len(text)
        if end - start > _BLOCK_CHARS:
            cut = text.rfind("\n", start, start + _BLOCK_CHARS)
            end = cut + 1 if cut >= start else start + _BLOCK_CHARS
        yield text[start:end]
        start = end


def _token_stream(text: str | Iterable[str], tokenizer) -> Iterator[int]:
    for block in _str_blocks(text) if isinstance(text, str) else text:
        # verbose=False: no "sequence longer than the model's maximum" warning; the
        # sequences are cut to seq_len here
        ids = tokenizer(block, add_special_tokens=False, return_attention_mask=False,
                        verbose=False)["input_ids"]
        yield from ids


def _frame(tokenizer, add_special_tokens):
    """The special token ids a tokenizer puts before and after one text."""
    if add_special_tokens is False:
        return [], []
    if add_special_tokens is True:
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is None:
            raise ValueError(f"add_special_tokens=True but {type(tokenizer).__name__} has no BOS token")
        return [int(bos)], []
    if add_special_tokens is not None:
        raise ValueError(f"add_special_tokens must be None, True or False, got {add_special_tokens!r}")
    probe = "geonorm"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    framed = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for i in range(len(framed) - len(plain) + 1):
        if framed[i:i + len(plain)] == plain:
            return framed[:i], framed[i + len(plain):]
    raise ValueError(f"cannot tell which special tokens {type(tokenizer).__name__} adds around a text; "
                     "pass add_special_tokens=True or False")


def _pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0
