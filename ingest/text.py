"""Text and code files: encoding detection, binary rejection, kind by extension."""

from __future__ import annotations

import codecs
import re

from charset_normalizer import from_bytes

from .document import Extracted
from .errors import FileRejected
from .names import base_name, extension

CODE_EXTENSIONS = frozenset("""
py pyi pyx pxd ipynb c h cc cpp cxx hpp hh hxx cu cuh m mm java kt kts scala groovy go rs swift
js jsx mjs cjs ts tsx vue svelte rb php pl pm lua r jl dart ex exs erl hrl hs ml mli fs fsx clj cljs
cs vb sh bash zsh fish ps1 bat cmd sql html htm xml xsl css scss sass less json jsonc yaml yml toml
ini cfg conf proto graphql gql tf hcl cmake mk gradle asm s v sv vhd zig nim f f90 el lisp scm rkt
""".split())

CODE_FILENAMES = frozenset({"makefile", "dockerfile", "cmakelists.txt", "gemfile", "rakefile",
                            "justfile", "vagrantfile", "procfile", "build", "workspace"})

BINARY_EXTENSIONS = frozenset("""
png jpg jpeg gif bmp ico tif tiff webp psd heic avif mp3 mp4 m4a wav flac ogg opus mov avi mkv webm
woff woff2 ttf otf eot pyc pyo pyd so dll dylib exe o a lib obj class jar war whl egg bin dat db
sqlite sqlite3 npy npz pt pth safetensors gguf onnx pkl pickle h5 parquet arrow xz bz2 gz tgz 7z rar
zst lz4 iso dmg img msi deb rpm doc xls xlsx ppt pptx odt ods odp epub
""".split())

BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

# Single-byte Latin-script guesses that charset-normalizer returns for short Western text;
# for all of them cp1252 is the better reading when the bytes are valid cp1252.
LATIN_GUESSES = frozenset({
    "ascii", "latin_1", "iso8859_15", "cp1252", "cp1250", "cp1254", "cp1257", "cp775", "cp850",
    "cp437", "cp858", "mac_roman", "mac_latin2", "iso8859_2", "iso8859_3", "iso8859_4",
    "iso8859_9", "iso8859_10", "iso8859_13", "iso8859_14", "iso8859_16", "mac_iceland", "mac_turkish",
})

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_NEWLINES = re.compile(r"\r\n?")


def kind_of(name: str) -> str:
    """'code' for programming/config files by extension or well-known name, else 'text'."""
    if base_name(name).lower() in CODE_FILENAMES:
        return "code"
    return "code" if extension(name) in CODE_EXTENSIONS else "text"


def is_binary_name(name: str) -> bool:
    """True for extensions that are never text (images, archives, compiled objects...)."""
    return extension(name) in BINARY_EXTENSIONS


def decode(data: bytes) -> str:
    """Bytes of a text file → str. Raises FileRejected for binary data.

    Order: a BOM decides; then strict UTF-8; NUL bytes mean binary; then UTF-8 with a few bad bytes
    (shown as U+FFFD: read as cp1251 they turned the whole file into mojibake); then a legacy
    encoding guessed by charset-normalizer, preferring cp1252 for Western text.
    """
    for bom, encoding in BOMS:
        if data.startswith(bom):
            return data[len(bom):].decode(encoding, errors="replace")
    head = data[:8192]
    if b"\x00" in head:
        raise FileRejected("binary file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    mostly = _mostly_utf8(data)
    if mostly is not None:
        return mostly
    best = from_bytes(data[:65536]).best()
    if best is None:
        raise FileRejected("binary file (no text encoding fits)")
    encoding = best.encoding
    if encoding in LATIN_GUESSES:
        try:
            return data.decode("cp1252")
        except UnicodeDecodeError:
            return data.decode("latin-1")
    return data.decode(encoding, errors="replace")


UTF8_GOOD_PER_BAD = 8  # valid multi-byte characters needed per invalid byte to read a file as damaged UTF-8


def _mostly_utf8(data: bytes) -> str | None:
    """The text of UTF-8 with a few invalid bytes (each becomes U+FFFD), or None when it is not that.

    Legacy single-byte text almost never forms valid multi-byte UTF-8 sequences by chance, so it has
    (nearly) none; real UTF-8 with a stray byte has many per bad byte."""
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - data.count("\ufffd".encode())
    good = len(text) - len(text.encode("ascii", "ignore")) - bad - data.count("\ufffd".encode())
    return text if bad > 0 and good >= UTF8_GOOD_PER_BAD * bad else None


def clean(text: str) -> str:
    """Normalise line ends to \\n, drop NULs and other C0 controls (tab, newline and form feed stay),
    and drop lone surrogates so every string encodes as UTF-8."""
    text = _NEWLINES.sub("\n", text)
    text = _CONTROL.sub("", text)
    if not text.isascii():
        text = text.encode("utf-8", errors="ignore").decode("utf-8")
    return text


def extract(name: str, data: bytes, limits) -> Extracted:
    """Load one text or code file."""
    if is_binary_name(name):
        raise FileRejected(f"binary file (.{extension(name)})")
    text = clean(decode(data))
    kind = kind_of(name)
    if extension(name) in ("js", "css", "mjs", "cjs") and text:
        lines = text.count("\n") + 1
        if len(text) / lines > limits.minified_line_chars:
            raise FileRejected("minified bundle (mean line over "
                               f"{limits.minified_line_chars:,} characters)")
    if len(text) > 200 and _looks_binary(text):
        raise FileRejected("binary file")
    return Extracted(kind=kind, body=text)


def _looks_binary(text: str) -> bool:
    """Legacy-decoded binary shows up as many replacement characters."""
    sample = text[:8192]
    return sample.count("\ufffd") > len(sample) // 10
