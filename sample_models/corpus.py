"""The sample models' corpus: Python standard-library source of the running interpreter.

Every machine that runs this project has it, so the build reproduces offline; nothing of it is
committed. Training and held-out modules are fixed, disjoint lists of top-level stdlib modules.
The text was read from CPython 3.11; a module missing from another version is skipped (training)
or reported (held-out), and the model cards name the interpreter version they were built with.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

# Separates documents in the joined corpus; the tokenizer knows it as a single special token.
DOCUMENT_SEPARATOR = "<|endoftext|>"

HELDOUT_MODULES: tuple[str, ...] = (
    "bisect", "colorsys", "copy", "csv", "fnmatch", "fractions", "glob", "graphlib", "heapq",
    "numbers", "queue", "reprlib", "sched", "shlex", "statistics", "string", "textwrap",
)

TRAIN_MODULES: tuple[str, ...] = (
    "_aix_support", "_bootsubprocess", "_collections_abc", "_compat_pickle", "_compression",
    "_markupbase", "_osx_support", "_py_abc", "_pydecimal", "_pyio", "_sitebuiltins",
    "_strptime", "_threading_local", "_weakrefset", "abc", "aifc", "argparse", "ast",
    "asynchat", "asyncore", "base64", "bdb", "bz2", "cProfile", "calendar", "cgi", "cgitb",
    "chunk", "cmd", "code", "codecs", "codeop", "compileall", "configparser", "contextlib",
    "contextvars", "copyreg", "crypt", "dataclasses", "datetime", "decimal", "difflib", "dis",
    "doctest", "enum", "filecmp", "fileinput", "ftplib", "functools", "genericpath", "getopt",
    "getpass", "gettext", "gzip", "hashlib", "hmac", "imaplib", "imghdr", "imp", "inspect",
    "io", "ipaddress", "keyword", "linecache", "locale", "lzma", "mailbox", "mailcap",
    "mimetypes", "modulefinder", "netrc", "nntplib", "ntpath", "nturl2path", "opcode",
    "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pickletools", "pipes", "pkgutil",
    "platform", "plistlib", "poplib", "posixpath", "pprint", "profile", "pstats", "pty",
    "py_compile", "pyclbr", "pydoc", "quopri", "random", "rlcompleter", "runpy", "secrets",
    "selectors", "shelve", "shutil", "signal", "site", "smtpd", "smtplib", "sndhdr", "socket",
    "socketserver", "sre_compile", "sre_constants", "sre_parse", "ssl", "stat", "stringprep",
    "struct", "subprocess", "sunau", "symtable", "sysconfig", "tabnanny", "tarfile",
    "telnetlib", "tempfile", "threading", "timeit", "token", "tokenize", "trace", "traceback",
    "tracemalloc", "tty", "turtle", "types", "typing", "uu", "uuid", "warnings", "wave",
    "weakref", "webbrowser", "xdrlib", "zipapp", "zipfile", "zipimport",
)

assert not set(HELDOUT_MODULES) & set(TRAIN_MODULES), "held-out and training modules must be disjoint"


def stdlib_dir() -> Path:
    """The folder of the running interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def module_texts(modules: tuple[str, ...], required: bool) -> dict[str, str]:
    """Source text of each listed top-level module; missing ones raise if ``required``."""
    texts = {}
    for name in modules:
        path = stdlib_dir() / f"{name}.py"
        if path.is_file():
            texts[name] = path.read_text(encoding="utf-8", errors="replace")
        elif required:
            raise FileNotFoundError(
                f"held-out module {name}.py is missing from {stdlib_dir()}; the sample text needs "
                "CPython's standard library sources (3.11 or newer)"
            )
    return texts


def heldout_text() -> str:
    """The held-out evaluation text: the held-out modules joined by the document separator."""
    return DOCUMENT_SEPARATOR.join(module_texts(HELDOUT_MODULES, required=True).values())


def train_text() -> str:
    """The training text: the training modules present in this interpreter, joined."""
    return DOCUMENT_SEPARATOR.join(module_texts(TRAIN_MODULES, required=False).values())
