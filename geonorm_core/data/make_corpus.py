"""Rebuilds ``corpus.txt.gz`` (geonorm's default corpus) from the two source distributions it
is taken from.  Not imported by the library; kept so that the shipped file can be checked and
remade byte for byte::

    pip download --no-deps --no-binary :all: --no-build-isolation -d SRC brotli==1.2.1 sentencepiece==0.2.3
    python geonorm_core/data/make_corpus.py SRC/brotli-1.2.1.tar.gz SRC/sentencepiece-0.2.3.tar.gz

Editing is limited to what a reader of the header is told: line endings, the byte-order mark,
per-line indentation, runs of blank lines, Project Gutenberg's licence boilerplate and its
transcriber's errata markers.  Not one word of either work is changed.
"""
from __future__ import annotations

import gzip
import io
import re
import sys
import tarfile
from pathlib import Path

HEADER = """\
# geonorm default corpus: public-domain English prose
#
# Two works, one after the other, separated by a blank line:
#
# 1. "Alice's Adventures in Wonderland", Lewis Carroll (Charles L. Dodgson, 1832-1898), first
#    published 1865 (Macmillan, London). Text: the Millennium Fulcrum Edition 2.9 (Project
#    Gutenberg etext #11) as stored in the Canterbury compression corpus file "alice29.txt",
#    taken from the PyPI source distribution brotli==1.2.1 (tests/testdata/alice29.txt;
#    the package is MIT-licensed, Copyright the Brotli Authors). That file carries no
#    Project Gutenberg licence text.
#    Public domain: published 1865, author died 1898 - in the public domain everywhere.
#
# 2. "Botchan (Master Darling)", Natsume Soseki (Kin-nosuke Natsume, 1867-1916), translated into
#    English by Yasotaro Morri, revised by J. R. Kennedy, published 1918/1919 (Ogawa Seibundo,
#    Tokyo). Text: Project Gutenberg EBook #8868 as stored in the PyPI source distribution
#    sentencepiece==0.2.3 (test/botchan.txt; the package is Apache-2.0-licensed).
#    Public domain: a translation published before 1929, hence in the public domain in the
#    United States (Project Gutenberg distributes it as such); the original author died 1916.
#
# Editing (geonorm_core/data/make_corpus.py, reproducible from the two source distributions):
# CRLF -> LF; the UTF-8 byte-order mark and a final DOS end-of-file byte (Ctrl-Z) removed;
# leading and trailing spaces of each line removed; runs of blank lines collapsed to one. For
# Botchan the Project Gutenberg header (lines before "BOTCHAN (MASTER DARLING)", incl. the
# "Produced by" credit), the Project Gutenberg licence and footer (from "End of Project
# Gutenberg's ..." on), the transcriber's errata list after "--(THE END)--" and its inline
# markers "[A]".."[S]" are stripped, so the text carries no Project Gutenberg trademark. No word
# of either work is changed; the original line wrapping is kept (Botchan's source has no blank
# lines between paragraphs). The translator's note and footnotes of Botchan are kept.
#
# Every header line starts with "#"; the text begins after the line "# END OF HEADER".
# geonorm_core.models.corpus.default_text() returns the text without this header.
# END OF HEADER
"""


def _member(tar_path: str, suffix: str) -> str:
    with tarfile.open(tar_path) as tar:
        (name,) = [m for m in tar.getnames() if m.endswith(suffix)]
        return tar.extractfile(name).read().decode("utf-8-sig")


def _tidy(text: str) -> str:
    text = text.rstrip("\x1a")  # alice29.txt ends with a DOS end-of-file mark (Ctrl-Z)
    lines = [line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def alice(brotli_sdist: str) -> str:
    return _tidy(_member(brotli_sdist, "tests/testdata/alice29.txt"))


def botchan(sentencepiece_sdist: str) -> str:
    text = _tidy(_member(sentencepiece_sdist, "test/botchan.txt"))
    start = text.index("BOTCHAN (MASTER DARLING)\n")
    end = text.index("--(THE END)--") + len("--(THE END)--")
    body = text[start:end]
    assert "Gutenberg" not in body and "gutenberg" not in body
    return re.sub(r"\[[A-S]\]", "", body)


def main(brotli_sdist: str, sentencepiece_sdist: str) -> None:
    text = HEADER + "\n" + alice(brotli_sdist) + "\n\n" + botchan(sentencepiece_sdist) + "\n"
    out = Path(__file__).with_name("corpus.txt.gz")
    buf = io.BytesIO()
    # mtime=0 and no file name: the same inputs give the same bytes
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    out.write_bytes(buf.getvalue())
    print(f"wrote {out} ({len(buf.getvalue())} bytes, {len(text)} characters)")


if __name__ == "__main__":
    main(*sys.argv[1:3])
