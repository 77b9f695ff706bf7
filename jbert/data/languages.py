"""Language detection from file names: the 30 languages of jina-embeddings-v2-base-code + prose.

The language names follow the `codeparrot/github-code` dataset the released model was trained on,
so a corpus built here and one loaded from the hub share the same `language` values. "Text" is
English prose (plain text, reStructuredText); "Markdown" is one of the 30.
"""

from __future__ import annotations

import os

# Extension (lower case, with the dot) -> language. `.h` is counted as C: a header alone does not
# say which of C and C++ it serves.
_EXTENSIONS: dict[str, str] = {}
for _lang, _exts in {
    "Assembly": ".asm .s",
    "Batchfile": ".bat .cmd",
    "C": ".c .h",
    "C#": ".cs",
    "C++": ".cpp .cc .cxx .c++ .hpp .hh .hxx .h++ .ipp .tcc .inl .cuh .cu",
    "CMake": ".cmake",
    "CSS": ".css .scss .less",
    "Dockerfile": ".dockerfile",
    "FORTRAN": ".f .for .f77 .f90 .f95 .f03 .f08",
    "GO": ".go",
    "Haskell": ".hs .lhs",
    "HTML": ".html .htm .xhtml",
    "Java": ".java",
    "JavaScript": ".js .mjs .cjs .jsx",
    "Julia": ".jl",
    "Lua": ".lua",
    "Makefile": ".mk .mak",
    "Markdown": ".md .markdown",
    "PHP": ".php .phtml",
    "Perl": ".pl .pm .pod",
    "PowerShell": ".ps1 .psm1 .psd1",
    "Python": ".py .pyi .pyw",
    "Ruby": ".rb .rake .gemspec",
    "Rust": ".rs",
    "SQL": ".sql",
    "Scala": ".scala .sc",
    "Shell": ".sh .bash .zsh .ksh",
    "TypeScript": ".ts .tsx .mts .cts",
    "TeX": ".tex .sty .cls .dtx .ltx .bib",
    "Visual Basic": ".vb .vbs .bas",
    "Text": ".txt .rst",
}.items():
    for _ext in _exts.split():
        _EXTENSIONS[_ext] = _lang

# Whole file names that carry the language without an extension.
_FILENAMES: dict[str, str] = {
    "makefile": "Makefile",
    "gnumakefile": "Makefile",
    "cmakelists.txt": "CMake",
    "dockerfile": "Dockerfile",
    "rakefile": "Ruby",
    "gemfile": "Ruby",
    "readme": "Text",
    "license": "Text",
    "copying": "Text",
    "authors": "Text",
}

# `#!` interpreters for extension-less scripts (as found under /usr/bin, /etc, debian/rules).
_SHEBANGS: dict[str, str] = {
    "sh": "Shell",
    "bash": "Shell",
    "dash": "Shell",
    "zsh": "Shell",
    "ksh": "Shell",
    "python": "Python",
    "python3": "Python",
    "perl": "Perl",
    "ruby": "Ruby",
    "node": "JavaScript",
    "lua": "Lua",
    "make": "Makefile",
}

LANGUAGES: tuple[str, ...] = tuple(sorted(set(_EXTENSIONS.values()) | set(_FILENAMES.values())))
"""Every language value the corpus can hold (30 programming languages plus "Text")."""

PROSE_LANGUAGES = frozenset({"Markdown", "Text"})


def detect_language(path: str, head: bytes | None = None) -> str | None:
    """The language of `path` from its name, else from a `#!` line in `head`; None if unknown.

    `head` is the start of the file; it is only consulted for names with no known extension.
    """
    name = os.path.basename(path)
    lower = name.lower()
    if lower in _FILENAMES:
        return _FILENAMES[lower]
    if lower.startswith("dockerfile."):
        return "Dockerfile"
    if lower.startswith(("makefile.", "readme.", "license.", "copying.")):
        stem_ext = os.path.splitext(lower)[1]
        if stem_ext not in _EXTENSIONS:
            return _FILENAMES[lower.split(".", 1)[0]]
    # Lower-cased, so `.S` (preprocessed assembly) and `.F90` (preprocessed Fortran) count too.
    ext = os.path.splitext(name)[1]
    lang = _EXTENSIONS.get(ext.lower())
    if lang is not None:
        return lang
    if ext == "" and head is not None and head.startswith(b"#!"):
        return _shebang_language(head)
    return None


def _shebang_language(head: bytes) -> str | None:
    line = head.split(b"\n", 1)[0][2:].decode("utf-8", "replace").split()
    if not line:
        return None
    prog = os.path.basename(line[0])
    if prog == "env" and len(line) > 1:
        prog = os.path.basename(line[1])
    # python3.11, perl5.36 -> python3 / perl
    for name in (prog, prog.rstrip("0123456789."), prog.split(".")[0]):
        if name in _SHEBANGS:
            return _SHEBANGS[name]
    return None
