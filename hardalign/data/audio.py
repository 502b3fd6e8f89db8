"""Reading and writing corpus audio: NIST SPHERE and RIFF/WAVE, sniffed from the header.

TIMIT ``.WAV`` files are NIST SPHERE (a 1024-byte ASCII ``NIST_1A`` header, then int16 PCM),
whatever their extension says; many copies have been converted to RIFF/WAVE but kept the name.
:func:`sniff_format` looks at the first bytes, :func:`audio_info` reads only the header (and checks
that the file holds as many samples as it claims), :func:`read_audio` returns float32 samples in
[-1, 1]. :func:`write_sphere` writes the hand-made header used by the offline corpus.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

__all__ = ["AudioError", "AudioInfo", "audio_info", "read_audio", "sniff_format", "write_sphere"]

_SPHERE_HEADER = 1024


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of one audio file."""

    format: str  # "sphere" | "riff" | other soundfile format name
    sample_rate: int
    num_samples: int
    channels: int


def sniff_format(path: str | os.PathLike) -> str:
    """``"sphere"`` for a ``NIST_1A`` header, ``"riff"`` for ``RIFF....WAVE``, else ``"other"``."""
    with open(path, "rb") as f:
        head = f.read(12)
    if head.startswith(b"NIST_1A"):
        return "sphere"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "riff"
    return "other"


def _sphere_header(path: Path) -> dict[str, str]:
    with open(path, "rb") as f:
        raw = f.read(_SPHERE_HEADER)
    lines = raw.split(b"\n")
    if len(lines) < 2 or not lines[0].startswith(b"NIST_1A"):
        raise AudioError(f"{path}: not a NIST SPHERE file (no NIST_1A header)")
    try:
        header_size = int(lines[1].strip())
    except ValueError:
        raise AudioError(f"{path}: SPHERE header size line {lines[1][:20]!r} is not a number") from None
    fields = {"_header_size": str(header_size)}
    for line in raw[:header_size].split(b"\n")[2:]:
        line = line.strip()
        if line == b"end_head":
            break
        parts = line.split(None, 2)
        if len(parts) == 3:
            fields[parts[0].decode("ascii", "replace")] = parts[2].decode("ascii", "replace")
    else:
        raise AudioError(f"{path}: SPHERE header has no end_head within {header_size} bytes")
    return fields


def _riff_layout(path: Path) -> tuple[int, int, int, int, int]:
    """(sample_rate, channels, bytes_per_sample, data offset, declared data bytes) from the RIFF chunks."""
    with open(path, "rb") as f:
        f.seek(12)
        fmt = None
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise AudioError(f"{path}: RIFF file has no 'data' chunk (truncated header?)")
            cid, size = head[:4], struct.unpack("<I", head[4:])[0]
            if cid == b"fmt ":
                body = f.read(size)
                if len(body) < 16:
                    raise AudioError(f"{path}: RIFF 'fmt ' chunk is truncated")
                _, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
                fmt = (rate, channels, bits // 8)
                f.seek(size % 2, 1)
            elif cid == b"data":
                if fmt is None:
                    raise AudioError(f"{path}: RIFF 'data' chunk before 'fmt ' chunk")
                return (*fmt, f.tell(), size)
            else:
                f.seek(size + size % 2, 1)


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read the header of ``path`` and check the payload is complete.

    Raises:
        AudioError: unreadable header, unsupported coding, or fewer bytes than the header promises
            (a truncated file).
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file does not exist")
    size = path.stat().st_size
    kind = sniff_format(path)
    if kind == "sphere":
        h = _sphere_header(path)
        coding = h.get("sample_coding", "pcm")
        if coding != "pcm":
            raise AudioError(f"{path}: SPHERE sample_coding {coding!r} is not supported (decompress with sph2pipe first)")
        try:
            count = int(h["sample_count"])
            rate = int(h["sample_rate"])
            width = int(h.get("sample_n_bytes", "2"))
            channels = int(h.get("channel_count", "1"))
        except (KeyError, ValueError) as e:
            raise AudioError(f"{path}: SPHERE header lacks a valid {e} field") from None
        if width != 2:
            raise AudioError(f"{path}: SPHERE sample_n_bytes={width}; only 16-bit PCM is supported")
        need = int(h["_header_size"]) + count * width * channels
        if size < need:
            raise AudioError(f"{path}: truncated: header promises {count} samples ({need} bytes) but the file has {size} bytes")
        return AudioInfo("sphere", rate, count, channels)
    if kind == "riff":
        rate, channels, width, pos, data_bytes = _riff_layout(path)
        try:
            info = soundfile.info(str(path))
        except RuntimeError as e:
            raise AudioError(f"{path}: unreadable RIFF/WAVE file: {e}") from None
        frame_bytes = max(1, width * channels)
        if size - pos < data_bytes:
            raise AudioError(f"{path}: truncated: RIFF data chunk declares {data_bytes // frame_bytes} samples "
                             f"but only {(size - pos) // frame_bytes} are present")
        return AudioInfo("riff", rate, data_bytes // frame_bytes, channels or info.channels)
    try:
        info = soundfile.info(str(path))
    except RuntimeError as e:
        raise AudioError(f"{path}: unreadable audio (neither NIST_1A nor RIFF header): {e}") from None
    return AudioInfo(info.format.lower(), info.samplerate, info.frames, info.channels)


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a whole file as mono float32 in [-1, 1].

    Returns:
        ``(samples [N] float32, sample_rate)``; multi-channel files are averaged to mono.

    Raises:
        AudioError: as :func:`audio_info`.
    """
    path = Path(path)
    info = audio_info(path)
    if info.format == "sphere":
        h = _sphere_header(path)
        order = h.get("sample_byte_format", "01")
        dtype = "<i2" if order in ("01", "1") else ">i2"
        with open(path, "rb") as f:
            f.seek(int(h["_header_size"]))
            data = np.frombuffer(f.read(info.num_samples * 2 * info.channels), dtype=dtype)
        data = data.astype(np.float32) / 32768.0
        if info.channels > 1:
            data = data.reshape(-1, info.channels).mean(axis=1)
        return data, info.sample_rate
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError as e:
        raise AudioError(f"{path}: unreadable audio: {e}") from None
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0], rate


def write_sphere(path: str | os.PathLike, samples: np.ndarray, sample_rate: int = 16000) -> None:
    """Write int16 mono samples with a 1024-byte ``NIST_1A`` header (as TIMIT's ``.WAV`` files).

    Args:
        path: output file.
        samples: ``[N]`` int16, or float in [-1, 1] (scaled and clipped to int16).
        sample_rate: samples per second written into the header.
    """
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"samples must be 1-D mono, got shape {samples.shape}")
    if samples.dtype != np.int16:
        samples = np.clip(np.round(samples.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    fields = [
        "database_id -s5 TIMIT",
        "channel_count -i 1",
        f"sample_count -i {len(samples)}",
        f"sample_rate -i {sample_rate}",
        "sample_min -i %d" % (int(samples.min()) if len(samples) else 0),
        "sample_max -i %d" % (int(samples.max()) if len(samples) else 0),
        "sample_n_bytes -i 2",
        "sample_byte_format -s2 01",
        "sample_sig_bits -i 16",
        "sample_coding -s3 pcm",
        "end_head",
    ]
    header = ("NIST_1A\n   1024\n" + "\n".join(fields) + "\n").encode("ascii")
    header = header + b" " * (_SPHERE_HEADER - len(header))
    with open(path, "wb") as f:
        f.write(header)
        f.write(samples.astype("<i2").tobytes())
