"""Checkpoints: atomic, rotated, safe to open, and a resume that falls back past a damaged file.

**Safe to open.** A checkpoint holds only tensors, plain containers, numbers and strings (the
config as a flat dict, RNG states as tensors and numbers), and is read with
``torch.load(weights_only=True)``: opening one never runs code, whoever made it. A file that
needs more (a pickled object) is refused with :class:`UnsafeCheckpointError`, naming the type it
wanted. ``trust=True`` (``--trust-checkpoint``) is the explicit opt-in to a full unpickle, for a
file you made yourself.

**Older files.** Format 1 (before this change) pickled python's and numpy's RNG state objects,
which ``weights_only=True`` refuses. Such a file is recognised and the error says the one command
that converts it (:func:`convert_checkpoint`, ``hardalign checkpoint convert OLD NEW``); the
conversion reads it with only numpy's array types allowed, so it runs no code either.

**Atomic and rotated.** Every file is written to a temporary name, fsync-ed and moved into
place (:mod:`hardalign._io`); a crash leaves the previous file or the new one, never half a
file. With ``keep=N >= 2`` each save writes ``checkpoint-STEP.pt`` and makes ``checkpoint.pt``
(the stable name of the newest) a hard link to it (a copy where the file system has no hard
links); the oldest numbered files beyond N are deleted. With ``keep=1`` only ``checkpoint.pt``
is written.

**Resume.** :func:`find_resume_checkpoint` tries the checkpoints of a run newest first, skips
(and reports) damaged ones, and refuses to start from scratch over existing work when none
loads.

A checkpoint is a dict::

    {"format": 2, "step": int, "epoch": int, "batch_in_epoch": int,
     "model": state_dict, "optimizer": state_dict, "scheduler": state_dict,
     "estimator": state_dict, "rng": [per-rank RNG states], "config": flat dict,
     "world_size": int}

Example:
    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     for step in (1, 2, 3):
    ...         _ = save_checkpoint(os.path.join(d, "checkpoint.pt"), {"step": step}, keep=2)
    ...     print(sorted(os.listdir(d)))
    ...     print(load_checkpoint(os.path.join(d, "checkpoint.pt"))["step"])
    ['checkpoint-2.pt', 'checkpoint-3.pt', 'checkpoint.pt']
    3
"""

from __future__ import annotations

import io
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from hardalign._io import atomic_path, atomic_write_bytes, fsync_directory, temp_prefix

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "UnsafeCheckpointError",
    "ResumePoint",
    "atomic_write_bytes",
    "checkpoint_files",
    "convert_checkpoint",
    "find_resume_checkpoint",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

#: The format written by :func:`save_checkpoint` (1: RNG states as pickled python/numpy objects).
CHECKPOINT_FORMAT = 2


class CheckpointError(ValueError):
    """A checkpoint cannot be used (damaged, not a checkpoint, or none of a run's loads); the message names the file."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint needs types that ``weights_only=True`` refuses; the message names them and the way out."""


# -- RNG states as tensors and numbers ------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """The python, numpy, torch CPU and (where initialised) CUDA RNG states, as tensors and numbers.

    Python's ``random.getstate()`` tuple and numpy's legacy state become dicts of a tensor and
    plain numbers, so that the checkpoint loads with ``weights_only=True``.
    """
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),  # uint32 values, stored as int64
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states saved by :func:`rng_state` (also format-1 states: python and numpy objects)."""
    python = state["python"]
    if isinstance(python, dict):
        python = (python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss_next"])
    random.setstate(python)
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        keys = np.asarray(numpy_state["keys"].tolist(), dtype=np.uint32)
        numpy_state = (numpy_state["kind"], keys, numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# -- writing --------------------------------------------------------------------------------------


def _numbered(path: Path, step: int) -> Path:
    return path.with_name(f"{path.stem}-{int(step)}{path.suffix}")


def checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """The numbered siblings ``STEM-STEP.pt`` of ``path``, newest (highest step) first."""
    path = Path(path)
    pattern = re.compile(re.escape(path.stem) + r"-(\d+)" + re.escape(path.suffix))
    found = []
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            match = pattern.fullmatch(p.name)
            if match and p.is_file():
                found.append((int(match.group(1)), p))
    return [p for _, p in sorted(found, reverse=True)]


def _link_newest(source: Path, path: Path) -> None:
    """Point ``path`` at ``source`` atomically: a hard link, or a copy where links are not supported."""
    try:
        with atomic_path(path, fsync=False) as tmp:
            os.unlink(tmp)
            os.link(source, tmp)
    except OSError:
        atomic_write_bytes(path, source.read_bytes())


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], *, keep: int = 1) -> Path:
    """Serialise ``state`` with ``torch.save`` and write it atomically; keep the newest ``keep``.

    Args:
        path: the stable name of the newest checkpoint (``out_dir/checkpoint.pt``).
        state: tensors, plain containers, numbers and strings (``state["step"]`` names the
            numbered file when ``keep >= 2``).
        keep: how many checkpoints to keep. 1: only ``path``. N >= 2: ``STEM-STEP.pt`` for the
            newest N steps, with ``path`` a hard link to the newest.

    Returns:
        the file written (``path`` or the numbered file).

    Raises:
        ValueError: ``keep < 1``, or ``keep >= 2`` and ``state`` has no integer ``step``.
    """
    if keep < 1:
        raise ValueError(f"keep_checkpoints={keep}: must be >= 1")
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    if keep == 1:
        atomic_write_bytes(path, buffer.getvalue())
        return path
    step = state.get("step")
    if not isinstance(step, int):
        raise ValueError(f"save_checkpoint(keep={keep}): the state needs an integer 'step' to name the file, got {step!r}")
    numbered = _numbered(path, step)
    atomic_write_bytes(numbered, buffer.getvalue())
    _link_newest(numbered, path)
    for old in checkpoint_files(path)[keep:]:
        if old != numbered:
            old.unlink(missing_ok=True)
    fsync_directory(path.parent)
    return numbered


# -- reading --------------------------------------------------------------------------------------

def _format1_safe_globals() -> list[Any]:
    """numpy's array types, the only extra types a format-1 checkpoint needs (no code runs)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    allowed: list[Any] = [_reconstruct, np.ndarray, np.dtype]
    allowed += [type(np.dtype(name)) for name in ("uint32", "int64", "float64")]  # numpy >= 1.25: dtype classes
    return allowed


def _unsafe_globals(error: BaseException) -> list[str]:
    """The ``module.name`` globals torch's weights-only unpickler refused, from its message."""
    return sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(error))))


def _unsafe_message(path: Path, error: BaseException) -> str:
    names = _unsafe_globals(error)
    wanted = ", ".join(names) if names else "an object that is not a tensor, container, number or string"
    if names and all(name.startswith("numpy.") for name in names):
        return (
            f"checkpoint {str(path)!r} looks like an older hardalign checkpoint (format 1, numpy RNG state: {wanted}); "
            f"convert it once with: hardalign checkpoint convert {path} {path}"
        )
    return (
        f"checkpoint {str(path)!r} refused: loading it would unpickle {wanted}, which could run code; "
        "open it only if you made it yourself, with --trust-checkpoint"
    )


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *, trust: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with ``torch.load(weights_only=True)``.

    Args:
        path: the checkpoint file.
        map_location: where tensors go.
        trust: unpickle anything (``weights_only=False``); only for files you made yourself.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        UnsafeCheckpointError: the file needs a type ``weights_only=True`` refuses (named); for a
            format-1 checkpoint the message gives the conversion command.
        CheckpointError: the file is damaged or not a checkpoint (a :class:`ValueError`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=not trust)
    except pickle.UnpicklingError as error:
        if not trust and _unsafe_globals(error):  # a refused type; otherwise the pickle itself is damaged
            raise UnsafeCheckpointError(_unsafe_message(path, error)) from None
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read (damaged, or not a checkpoint): {_unpickler_reason(error)}") from None
    except Exception as error:  # noqa: BLE001 - a truncated zip, a wrong magic number: all mean "damaged"
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read (damaged, or not a checkpoint): {_first_line(error)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} does not hold a dict (got {type(state).__name__})")
    return state


def _unpickler_reason(error: BaseException) -> str:
    """The unpickler's own reason, without torch's advice to retry with weights_only=False (wrong for a damaged file)."""
    match = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|Check the documentation|$)", str(error), re.DOTALL)
    return " ".join(match.group(1).split()) if match else _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def convert_checkpoint(old: str | os.PathLike, new: str | os.PathLike, *, trust: bool = False) -> dict[str, Any]:
    """Rewrite a format-1 checkpoint as format 2 (RNG states as tensors); ``old`` may equal ``new``.

    The old file is read with ``weights_only=True`` and only numpy's array types allowed, so the
    conversion runs no code; ``trust=True`` reads it with a full unpickle instead (files you made).
    The result is checked to load with ``weights_only=True`` before it replaces ``new``.

    Returns:
        the converted state.

    Raises:
        UnsafeCheckpointError: the old file needs more than numpy's array types (and not ``trust``).
        CheckpointError: it is damaged or not a checkpoint.
    """
    old, new = Path(old), Path(new)
    if not old.is_file():
        raise FileNotFoundError(f"checkpoint {str(old)!r} does not exist")
    if trust:
        state = load_checkpoint(old, trust=True)
    else:
        with torch.serialization.safe_globals(_format1_safe_globals()):
            try:
                state = load_checkpoint(old)
            except UnsafeCheckpointError as error:
                raise UnsafeCheckpointError(
                    f"{error}".split("; ")[0] + "; it is not a hardalign format-1 checkpoint, so it is not converted "
                    "(convert it with --trust-checkpoint only if you made it yourself)"
                ) from None
    state["rng"] = [_plain_rng(rank_state) for rank_state in state.get("rng", [])]
    state["format"] = CHECKPOINT_FORMAT
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)  # the result must be safe to open
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"checkpoint {str(old)!r} holds more than a format-1 hardalign checkpoint ({', '.join(_unsafe_globals(error)) or 'objects'} "
            "outside its RNG state); not converted"
        ) from None
    atomic_write_bytes(new, buffer.getvalue())
    return state


def _plain_rng(state: dict[str, Any]) -> dict[str, Any]:
    """A format-1 per-rank RNG state (python tuple, numpy tuple) as tensors and numbers."""
    state = dict(state)
    python = state.get("python")
    if isinstance(python, tuple):
        version, internal, gauss_next = python
        state["python"] = {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next}
    numpy_state = state.get("numpy")
    if isinstance(numpy_state, tuple):
        kind, keys, pos, has_gauss, cached = numpy_state
        state["numpy"] = {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    return state


# -- resume ---------------------------------------------------------------------------------------


class ResumePoint(NamedTuple):
    """What :func:`find_resume_checkpoint` chose: the file (None: start fresh), its state, and warnings."""

    path: Path | None
    state: dict[str, Any] | None
    warnings: list[str]


def _candidates(path: Path) -> list[Path]:
    """The numbered checkpoints newest first, then ``path`` itself unless it is one of them (a link)."""
    files = checkpoint_files(path)
    if path.is_file():
        try:
            same = any(os.path.samefile(path, f) for f in files)
        except OSError:
            same = False
        if not same:
            files.append(path)
    elif path.is_symlink():  # a dangling name still counts as existing work
        files.append(path)
    return files


def find_resume_checkpoint(
    checkpoint_path: str | os.PathLike,
    resume: str | None,
    *,
    map_location: str | torch.device = "cpu",
    trust: bool = False,
) -> ResumePoint:
    """Pick the checkpoint a run resumes from, newest first, skipping damaged files.

    Args:
        checkpoint_path: the run's stable checkpoint name (``out_dir/checkpoint.pt``).
        resume: ``None`` (start fresh: refused if the run already has checkpoints), ``"auto"``
            (the newest that loads; fresh only if there are none), or a file (or a run's folder).
        map_location: where tensors go.
        trust: passed to :func:`load_checkpoint`.

    Returns:
        a :class:`ResumePoint`; ``warnings`` holds one line per damaged file skipped (a numbered
        one is renamed ``NAME.damaged``: kept, but out of the rotation) and per stale temporary
        file removed (print them).

    Raises:
        FileExistsError: ``resume`` is None but checkpoints exist.
        FileNotFoundError: ``resume`` names a file that does not exist.
        UnsafeCheckpointError: the newest checkpoint needs ``--trust-checkpoint`` or a conversion
            (never skipped silently: it is not damaged).
        CheckpointError: checkpoints exist but none loads (each named with its problem).
    """
    checkpoint_path = Path(checkpoint_path)
    if resume not in (None, "auto"):
        given = Path(resume)
        if given.is_dir():
            checkpoint_path = given / checkpoint_path.name
        else:
            if not given.is_file():
                raise FileNotFoundError(f"resume={resume!r}: no such checkpoint file")
            return ResumePoint(given, load_checkpoint(given, map_location, trust=trust), [])
    candidates = _candidates(checkpoint_path)
    if resume is None:
        if candidates:
            raise FileExistsError(
                f"out_dir {str(checkpoint_path.parent)!r} already holds checkpoints ({candidates[0].name}); "
                "continue it with --resume auto, or choose another --out-dir"
            )
        return ResumePoint(None, None, [])
    warnings = _remove_stale_temporaries(checkpoint_path)
    problems = []
    for candidate in candidates:
        try:
            state = load_checkpoint(candidate, map_location, trust=trust)
        except UnsafeCheckpointError:
            raise
        except (CheckpointError, FileNotFoundError) as error:
            problems.append((str(error), candidate))
            continue
        numbered = set(checkpoint_files(checkpoint_path))
        for problem, damaged in problems:
            # the stable name is replaced by the next save; a numbered file would stay in the rotation
            aside = _set_aside(damaged) if damaged in numbered else None
            moved = f"; moved it to {aside.name}" if aside is not None else ""
            warnings.append(f"warning: skipped a damaged checkpoint: {problem}{moved}")
        return ResumePoint(candidate, state, warnings)
    if candidates:
        raise CheckpointError(
            f"resume=auto: none of the {len(candidates)} checkpoint(s) in {str(checkpoint_path.parent)!r} loads "
            f"({'; '.join(problem for problem, _ in problems)}); not starting from scratch over them: "
            "move them away to start afresh"
        )
    return ResumePoint(None, None, warnings)


def _set_aside(path: Path) -> Path | None:
    """Rename a damaged numbered checkpoint to ``NAME.damaged`` (kept for inspection, out of the rotation)."""
    aside = path.with_name(path.name + ".damaged")
    try:
        os.replace(path, aside)
    except OSError:  # another rank moved it first, or a read-only folder: the warning still stands
        return None
    return aside


def _remove_stale_temporaries(checkpoint_path: Path) -> list[str]:
    """Delete temporary files a killed writer left beside the checkpoints (nobody writes while resuming)."""
    removed = []
    directory = checkpoint_path.parent
    if not directory.is_dir():
        return removed
    prefixes = (temp_prefix(checkpoint_path), f".{checkpoint_path.stem}-")
    for p in directory.iterdir():
        if p.name.startswith(prefixes) and ".tmp" in p.name and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(f"removed {p.name}, a partial checkpoint left by an interrupted write")
    return removed
