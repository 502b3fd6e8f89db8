"""TIMIT preparation: scan a corpus tree, report every problem, write split manifests.

Conventions follow Kaldi ``egs/timit/s5`` (docs/speech-data.md section 1):

* layout ``{TRAIN,TEST}/DR1..DR8/<SPK>/<UTT>.{WAV,PHN,WRD,TXT}``, upper- or lower-case; the split,
  dialect and speaker are read from the path *components below the root*, so a root path that
  itself contains "train" cannot leak test data into training;
* train = every TRAIN speaker, SI and SX sentences only (3696 utterances; SA1/SA2 dropped);
  dev = the 50 TEST speakers of ``resources/dev_speakers.txt`` (400); test = the 24 core-test
  speakers of ``resources/test_speakers.txt`` (192);
* audio headers are sniffed (``NIST_1A`` or ``RIFF``), whatever the extension says.

:func:`prepare_timit` writes ``train.jsonl``, ``dev.jsonl`` and ``test.jsonl`` (one JSON object per
utterance, see :func:`scan_timit`) plus ``prepare.json`` (counts, the root, skipped utterances).
Every problem in the tree is collected in one pass; unless ``skip_bad`` is set, any problem stops
preparation with all of them listed (:class:`PrepareError`). Nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from hardalign._io import atomic_write_text
from hardalign.data.audio import AudioError, audio_info
from hardalign.data.phones import load_speaker_list, phone_set

__all__ = [
    "SPLITS",
    "PrepareError",
    "PrepareResult",
    "Problem",
    "prepare_timit",
    "read_manifest",
    "scan_timit",
    "write_manifest",
]

#: Manifest names written by :func:`prepare_timit`.
SPLITS = ("train", "dev", "test")

EXPECTED_SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one utterance: the file and what is wrong."""

    path: str
    message: str
    utterance: str = ""

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class PrepareError(ValueError):
    """Raised by :func:`prepare_timit` when the scan found problems and ``skip_bad`` is off."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) found in the corpus (re-run with --skip-bad to leave "
                         f"those utterances out):\n{lines}")


@dataclass
class PrepareResult:
    """What :func:`scan_timit` found / :func:`prepare_timit` wrote."""

    splits: dict[str, list[dict]]
    problems: list[Problem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # utterance ids left out because of problems
    excluded_sa: int = 0  # SA1/SA2 utterances dropped by convention
    unused_test: int = 0  # TEST utterances of speakers in neither the dev nor the core-test list

    def counts(self) -> dict[str, int]:
        return {name: len(recs) for name, recs in self.splits.items()}


def _read_label_file(path: Path, kind: str, num_samples: int | None, problems: list[Problem], utt: str):
    """Parse ``start end label`` lines; returns (starts, ends, labels) or None after recording problems."""
    try:
        text = path.read_text(encoding="ascii", errors="strict")
    except (OSError, UnicodeDecodeError) as e:
        problems.append(Problem(str(path), f"unreadable {kind} file: {e}", utt))
        return None
    starts, ends, labels = [], [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3:
            problems.append(Problem(str(path), f"line {lineno}: expected 'start end label', got {line.strip()!r}", utt))
            return None
        try:
            start, end = int(parts[0]), int(parts[1])
        except ValueError:
            problems.append(Problem(str(path), f"line {lineno}: start/end are not integers: {line.strip()!r}", utt))
            return None
        if end < start:
            problems.append(Problem(str(path), f"line {lineno}: end {end} before start {start}", utt))
            return None
        starts.append(start)
        ends.append(end)
        labels.append(parts[2])
    if not labels:
        problems.append(Problem(str(path), f"empty {kind} file", utt))
        return None
    if num_samples is not None and ends[-1] > num_samples:
        problems.append(Problem(str(path), f"label times run past the end of the audio: last end {ends[-1]} > "
                                           f"{num_samples} samples", utt))
        return None
    return starts, ends, labels


def _utterance_record(wav: Path, files: dict[str, Path], split_dir: str, dialect: str, speaker: str,
                      problems: list[Problem]) -> dict | None:
    stem = wav.stem.lower()
    utt_id = f"{speaker}_{stem}"
    before = len(problems)
    num_samples = sample_rate = None
    try:
        info = audio_info(wav)
        num_samples, sample_rate = info.num_samples, info.sample_rate
        if info.channels != 1:
            problems.append(Problem(str(wav), f"{info.channels} channels, expected mono", utt_id))
        if sample_rate != EXPECTED_SAMPLE_RATE:
            problems.append(Problem(str(wav), f"sample rate {sample_rate} Hz, expected {EXPECTED_SAMPLE_RATE}", utt_id))
    except AudioError as e:
        problems.append(Problem(str(wav), str(e).split(": ", 1)[-1], utt_id))
    except OSError as e:
        problems.append(Problem(str(wav), f"unreadable audio: {e}", utt_id))
    phn = files.get(stem + ".phn")
    phones = words = None
    if phn is None:
        problems.append(Problem(str(wav.with_suffix(".PHN")), "missing .PHN file", utt_id))
    else:
        phones = _read_label_file(phn, ".PHN", num_samples, problems, utt_id)
        if phones is not None:
            bad = sorted(set(phones[2]) - set(phone_set(61)))
            if bad:
                problems.append(Problem(str(phn), f"labels outside the 61-phone TIMIT set: {' '.join(bad)}", utt_id))
    wrd = files.get(stem + ".wrd")
    if wrd is None:
        problems.append(Problem(str(wav.with_suffix(".WRD")), "missing .WRD file", utt_id))
    else:
        words = _read_label_file(wrd, ".WRD", num_samples, problems, utt_id)
    txt = files.get(stem + ".txt")
    text = None
    if txt is None:
        problems.append(Problem(str(wav.with_suffix(".TXT")), "missing .TXT file", utt_id))
    else:
        try:
            parts = txt.read_text(encoding="ascii").split(None, 2)
            if len(parts) < 3:
                raise ValueError("expected '0 N text'")
            int(parts[0]), int(parts[1])
            text = parts[2].strip()
        except (OSError, UnicodeDecodeError, ValueError) as e:
            problems.append(Problem(str(txt), f"unreadable .TXT file: {e}", utt_id))
    if len(problems) > before:
        return None
    return {
        "id": utt_id,
        "audio": str(wav.resolve()),
        "speaker": speaker,
        "gender": speaker[0] if speaker[0] in "fm" else "",
        "dialect": dialect,
        "corpus_split": split_dir,
        "num_samples": num_samples,
        "sample_rate": sample_rate,
        "phones": phones[2],
        "phone_starts": phones[0],
        "phone_ends": phones[1],
        "words": words[2],
        "word_starts": words[0],
        "word_ends": words[1],
        "text": text,
    }


def scan_timit(root: str | os.PathLike) -> PrepareResult:
    """Scan a TIMIT-layout tree and build the train / dev / test records, collecting every problem.

    Each record has ``id`` (``<speaker>_<utterance>``, lower case), ``audio`` (absolute path),
    ``speaker``, ``gender`` (``f``/``m``), ``dialect`` (``dr1``..), ``corpus_split`` (``train`` /
    ``test`` directory), ``num_samples``, ``sample_rate``, ``phones`` (raw 61-set labels in order),
    ``phone_starts`` / ``phone_ends`` (sample offsets), ``words``, ``word_starts`` / ``word_ends``
    and ``text``.

    Args:
        root: the directory holding ``TRAIN`` and ``TEST`` (any case).

    Returns:
        a :class:`PrepareResult`; utterances with problems are left out of ``splits``, listed in
        ``skipped`` and described in ``problems``.

    Raises:
        FileNotFoundError: ``root`` is not a directory or holds no TRAIN/TEST audio at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"TIMIT root {root} is not a directory")
    dev_speakers, test_speakers = set(load_speaker_list("dev")), set(load_speaker_list("test"))
    result = PrepareResult(splits={name: [] for name in SPLITS})
    found_any = False
    for dirpath, _, filenames in sorted(os.walk(root)):
        rel = Path(dirpath).relative_to(root).parts
        # <split>/<dialect>/<speaker> are the LAST three components below the root (a copy may have
        # extra levels such as TIMIT/ or data/ above them); never match substrings of the full path.
        if len(rel) < 3 or rel[-3].lower() not in ("train", "test"):
            continue
        split_dir, dialect, speaker = rel[-3].lower(), rel[-2].lower(), rel[-1].lower()
        files = {name.lower(): Path(dirpath) / name for name in filenames}
        for lower, wav in sorted(files.items()):
            if not lower.endswith(".wav"):
                continue
            found_any = True
            if lower.startswith("sa"):
                result.excluded_sa += 1
                continue
            if split_dir == "train":
                split = "train"
            elif speaker in dev_speakers:
                split = "dev"
            elif speaker in test_speakers:
                split = "test"
            else:
                result.unused_test += 1
                continue
            record = _utterance_record(wav, files, split_dir, dialect, speaker, result.problems)
            if record is None:
                result.skipped.append(f"{speaker}_{Path(lower).stem}")
            else:
                result.splits[split].append(record)
        for lower, path in sorted(files.items()):
            if lower.endswith(".phn") and lower[:-4] + ".wav" not in files and not lower.startswith("sa"):
                result.problems.append(Problem(str(path), "transcription without audio (no matching .WAV)"))
    if not found_any:
        raise FileNotFoundError(f"no TRAIN/TEST/<dialect>/<speaker>/*.WAV files under {root}")
    for recs in result.splits.values():
        recs.sort(key=lambda r: r["id"])
    return result


def write_manifest(records: Iterable[dict], path: str | os.PathLike) -> None:
    """Write records as JSON lines, atomically (temp file in the same directory, then rename)."""
    atomic_write_text(path, "".join(json.dumps(rec) + "\n" for rec in records))


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines manifest written by :func:`prepare_timit`.

    Raises:
        FileNotFoundError: the manifest does not exist (run ``hardalign prepare timit`` first).
        ValueError: a line is not valid JSON or lacks ``id`` / ``audio``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist; run `hardalign prepare timit ROOT --out "
                                f"{path.parent}` (or `hardalign prepare synth --out {path.parent}`) first")
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {e}") from None
            if "id" not in rec or "audio" not in rec:
                raise ValueError(f"{path}:{lineno}: record lacks 'id' or 'audio'")
            records.append(rec)
    return records


def prepare_timit(root: str | os.PathLike, out_dir: str | os.PathLike, *, skip_bad: bool = False) -> PrepareResult:
    """Scan ``root`` and write ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` and ``prepare.json`` to ``out_dir``.

    Args:
        root: TIMIT-layout corpus root (holding ``TRAIN`` and ``TEST``).
        out_dir: where the manifests go (created).
        skip_bad: leave out utterances with problems (they are listed in ``prepare.json`` and in
            the result) instead of failing.

    Returns:
        the :class:`PrepareResult`.

    Raises:
        PrepareError: problems were found and ``skip_bad`` is False; lists every problem.
        FileNotFoundError: see :func:`scan_timit`.
    """
    result = scan_timit(root)
    if result.problems and not skip_bad:
        raise PrepareError(result.problems)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, recs in result.splits.items():
        write_manifest(recs, out_dir / f"{name}.jsonl")
    info = {
        "root": str(Path(root).resolve()),
        "counts": result.counts(),
        "excluded_sa": result.excluded_sa,
        "unused_test": result.unused_test,
        "skipped": result.skipped,
        "problems": [str(p) for p in result.problems],
    }
    atomic_write_text(out_dir / "prepare.json", json.dumps(info, indent=2) + "\n")
    return result
