"""The kernel map (the ``pqgan_kernels`` package docstring) names files and symbols that exist.

A newcomer follows it from an op to its oracle, kernels, launchers and tests; a file moved or a kernel renamed
without updating the map fails here.
"""
import itertools
import pathlib
import re

import pqgan_kernels

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAP = pqgan_kernels.__doc__
SOURCES = [p for p in itertools.chain((ROOT / "pqgan_kernels").glob("*.py"), (ROOT / "csrc").rglob("*"))
           if p.is_file() and p.suffix in (".py", ".cpp", ".cu", ".cuh", ".h")
           and p.name != "__init__.py"]  # the map itself does not count


def _expand(token: str) -> list[str]:
    """'assign_{generic,avx2}.cpp' -> ['assign_generic.cpp', 'assign_avx2.cpp']."""
    m = re.search(r"\{([^}]*)\}", token)
    if not m:
        return [token]
    return [x for part in m.group(1).split(",") for x in _expand(token[:m.start()] + part + token[m.end():])]


def _paths() -> list[str]:
    tokens = re.findall(r"[\w/{},.<>-]+\.(?:py|cpp|cu|cuh|h)\b", MAP)
    return [t for token in tokens if "<" not in token for t in _expand(token)]


def _exists(name: str) -> bool:
    if "/" in name:
        return (ROOT / name).is_file()
    return any(p.name == name for p in SOURCES) or (ROOT / "tests" / name).is_file()


def test_every_file_in_the_map_exists():
    paths = _paths()
    assert len(paths) > 20, paths  # the map is parsed
    missing = [p for p in paths if not _exists(p)]
    assert not missing, f"the map names files that do not exist: {missing}"


def test_every_symbol_in_the_map_exists():
    text = "\n".join(p.read_text() for p in SOURCES)
    symbols = {s.split("(")[0].split(".")[-1] for s in re.findall(r"``([^`]+)``", MAP)}
    symbols = {s for s in symbols if re.fullmatch(r"[A-Za-z_]\w*", s) and s not in ("d", "D")}
    assert len(symbols) > 15, symbols
    missing = sorted(s for s in symbols if not re.search(rf"\b{re.escape(s)}\b", text))
    assert not missing, f"the map names symbols found in no kernel source: {missing}"
