"""Atomic file writes: an output is either complete or absent.

Outputs are written into a hidden temporary folder beside their destination and moved into
place only when complete. The temporary folder's name carries the writer's process id, so a
later run can tell a folder left by a killed writer (its process is gone) from one that is
still being written, and clean it up.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._faults import fault_point
from .errors import ConfigError, PrunetuneError

__all__ = ["atomic_write_text", "atomic_dir", "prepare_out"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _public_modes(root: Path) -> None:
    """Files 0666 and folders 0777, less the umask (temporary files are created 0600/0700)."""
    mask = _umask()
    for dirpath, _, files in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~mask)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_MANIFEST = ".swap-manifest"


def _leftovers(out: Path) -> dict[str, dict[str, Path]]:
    """Temporary folders of ``out`` whose writer is dead, by writer tag:
    ``{"tmp": ..., "old": ...}``."""
    found: dict[str, dict[str, Path]] = {}
    if not out.parent.is_dir():
        return found
    for p in out.parent.glob(f".{out.name}.*"):
        parts = p.name[len(out.name) + 2 :].split(".")
        if len(parts) == 3 and parts[2] in ("tmp", "old") and parts[0].isdigit() and p.is_dir():
            if not _alive(int(parts[0])) or int(parts[0]) == os.getpid():
                found.setdefault(f"{parts[0]}.{parts[1]}", {})[parts[2]] = p
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _undo_swap(out: Path, tmp: Path | None, old: Path, names: list[str]) -> None:
    """Puts ``out`` back as it was before a swap of ``names`` began.

    A name whose new version is no longer in ``tmp`` had been moved into ``out``: it is
    removed. A name moved aside into ``old`` is put back.
    """
    for name in names:
        if tmp is None or not (tmp / name).exists():
            _remove(out / name)
        if (old / name).exists() or (old / name).is_symlink():
            os.replace(old / name, out / name)


def _clean_leftovers(out: Path) -> None:
    """Removes what a killed writer left; a swap it had begun is rolled back (its manifest
    lists every entry it was to replace)."""
    for parts in _leftovers(out).values():
        tmp, old = parts.get("tmp"), parts.get("old")
        if old is not None and (old / _MANIFEST).is_file():
            names = [n for n in (old / _MANIFEST).read_text().splitlines() if n]
            _undo_swap(out, tmp, old, names)
        for p in (tmp, old):
            if p is not None:
                shutil.rmtree(p, ignore_errors=True)


def prepare_out(out: str | Path, overwrite: bool = False, what: str = "output folder") -> Path:
    """Checks ``--out`` before any work: a folder (or nothing) in a writable place.

    Raises:
        PrunetuneError: ``out`` is a file, lies under a file, is not writable, or is a
            non-empty folder without ``overwrite``.
    """
    out = Path(out)
    _clean_leftovers(out)
    for parent in [out, *out.parents]:
        if parent.exists() or parent.is_symlink():
            if parent.is_symlink() and parent == out:
                break  # replaced, never followed
            if not parent.is_dir():
                where = "is a file" if parent == out else f"lies under {parent}, which is a file"
                raise PrunetuneError(f"{what} {out} {where}; choose a folder with --out")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise PrunetuneError(
                    f"{what} {out} is not writable ({parent} is read-only for this user); "
                    f"choose another --out"
                )
            break
    if out.is_dir() and not out.is_symlink() and any(out.iterdir()) and not overwrite:
        raise PrunetuneError(f"{what} {out} is not empty; pass --overwrite or choose another --out")
    return out


@contextmanager
def atomic_dir(out: str | Path):
    """Yields a temporary folder beside ``out``; on success its entries replace ``out``'s.

    Each top-level entry written (a file, or a folder such as ``front/``) replaces the entry
    of the same name in ``out`` as a whole; other entries of ``out`` are kept. The replaced
    entries are first moved aside, so a failure while swapping restores them, and a kill
    while swapping is rolled back by the next write to ``out``. On any error before the
    swap the temporary folder is removed and ``out`` is left as it was.
    """
    out = prepare_out(out, overwrite=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tag = f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp = out.parent / f"{tag}.tmp"
        tmp.mkdir()
    except OSError as e:
        raise PrunetuneError(
            f"cannot write to {out}: {e.strerror or e}; choose another --out"
        ) from None
    old = out.parent / f"{tag}.old"
    try:
        yield tmp
        _public_modes(tmp)
        if out.is_symlink():
            out.unlink()
        out.mkdir(parents=True, exist_ok=True)
        old.mkdir()
        names = sorted(f.name for f in tmp.iterdir())
        (old / _MANIFEST).write_text("\n".join(names) + "\n")  # lets a later run undo a killed swap
        moved: list[str] = []
        try:
            for f in (tmp / n for n in names):
                dest = out / f.name
                if dest.exists() or dest.is_symlink():
                    os.replace(dest, old / f.name)
                moved.append(f.name)
                os.replace(f, dest)
                fault_point("export")
        except BaseException:
            _undo_swap(out, tmp, old, moved)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def read_mapping(path: Path, what: str) -> dict[str, Any]:
    """Reads a JSON (or, by suffix, YAML) file that must hold a mapping.

    Raises:
        ConfigError: The file is missing, a directory, unreadable, not UTF-8 text, empty,
            malformed, or holds something other than a mapping. The message names the file.
    """
    kind = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON"
    if path.is_dir():
        raise ConfigError(f"{what} file {path} is a directory; pass a JSON or YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{what} file {path} is not UTF-8 text (byte {e.start} cannot be "
            f"decoded); pass a {kind} file"
        ) from None
    except OSError as e:
        raise ConfigError(f"{what} file {path} cannot be read ({e.strerror or e})") from None
    if not text.strip():
        raise ConfigError(f"{what} file {path} is empty; it must hold a {kind} mapping")
    if kind == "YAML":
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{what} file {path} is malformed YAML: {yaml_problem(e)}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{what} file {path} is malformed JSON: {e}") from None
        except RecursionError:
            raise ConfigError(f"{what} file {path} is nested too deeply to read") from None
    if not isinstance(data, dict):
        got = "null" if data is None else type(data).__name__
        shape = "JSON object" if kind == "JSON" else "YAML mapping"
        raise ConfigError(f"{what} file {path} must hold a mapping ({shape}), but holds a {got}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{what} file {path} must have text keys, but has the key {bad[0]!r}")
    return data


def yaml_problem(e: Exception) -> str:
    """One line for a YAML error: the problem and where it is."""
    problem = getattr(e, "problem", None) or getattr(e, "context", None)
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(e).split())[:200]
