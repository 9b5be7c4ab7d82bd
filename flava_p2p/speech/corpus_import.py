"""Bring real speech corpora into the project's layout: 16 kHz mono WAV in Speech Commands form.

Sources understood:

- ``speech_commands``: ``<src>/<label>/<file>.(wav|flac)`` (the standard; any sample rate or
  channel count), with ``_background_noise_/`` and the list files carried over;
- ``fsdd``: the Free Spoken Digit Dataset's flat ``<digit>_<speaker>_<take>.wav`` files
  (labels become the digit words zero … nine);
- ``manifest``: a CSV file with a ``path,label,speaker`` header (paths relative to the CSV).

Every file is decoded and validated; a file that cannot be used is listed with the reason and
skipped, never a crash. Output names are ``<label>/<speaker>_nohash_<n>.wav`` so speakers can be
held out; ``import_report.json`` records counts per label and speaker and every skipped file.
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import soundfile as sf

from flava_p2p.errors import FlavaError
from flava_p2p.speech.audio import AUDIO_EXTENSIONS, AudioError, read_audio, resample
from flava_p2p.speech.dataset import BACKGROUND_DIR

Layout = Literal["auto", "speech_commands", "fsdd", "manifest"]
TARGET_RATE = 16000
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_FSDD_RE = re.compile(r"^(?P<digit>\d)_(?P<speaker>[^_]+)_(?P<n>\d+)$")
_SC_RE = re.compile(r"^(?P<speaker>.+?)_nohash_(?P<n>\d+)$")
_UNSAFE = re.compile(r"[\\/\x00-\x1f]")


class CorpusImportError(FlavaError):
    """The source cannot be imported at all; the message says what was expected."""


@dataclass(frozen=True)
class SourceClip:
    """One clip to import: where it is and what it is."""

    path: Path
    label: str
    speaker: str
    take: int | None = None
    rel: str | None = None
    """Path relative to a Speech Commands source (to carry list files over)."""


@dataclass
class ImportReport:
    """What :func:`import_corpus` did."""

    source: str
    out: str
    layout: str
    clips: int = 0
    per_label: dict[str, int] = field(default_factory=dict)
    per_speaker: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    resampled: int = 0
    downmixed: int = 0
    background: int = 0
    seconds: float = 0.0


def detect_layout(src: Path) -> Layout:
    """Guess the layout of ``src`` (a CSV file is a manifest)."""
    if src.is_file():
        if src.suffix.lower() == ".csv":
            return "manifest"
        raise CorpusImportError(
            f"{src}: a file source must be a CSV manifest (path,label,speaker)."
        )
    if not src.is_dir():
        raise CorpusImportError(f"{src}: no such file or folder.")
    flat = [p for p in src.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS]
    # FSDD when most flat audio files are named <digit>_<speaker>_<take>
    if flat and sum(bool(_FSDD_RE.match(p.stem)) for p in flat) >= len(flat) / 2:
        return "fsdd"
    if any(p.is_dir() and not p.name.startswith(".") for p in src.iterdir()):
        return "speech_commands"
    raise CorpusImportError(
        f"{src}: cannot tell the layout: expected label folders (<label>/<file>.wav), FSDD's "
        f"flat <digit>_<speaker>_<n>.wav files, or a CSV manifest; pass --layout."
    )


def _clean(name: str, what: str) -> str:
    name = _UNSAFE.sub("-", name.strip())
    if not name or name in {".", ".."}:
        raise ValueError(f"empty or invalid {what}")
    return name


def list_sources(src: Path, layout: Layout) -> tuple[list[SourceClip], dict[str, str]]:
    """Clips to import plus entries rejected before decoding (path → reason)."""
    clips: list[SourceClip] = []
    rejected: dict[str, str] = {}
    if layout == "fsdd":
        for p in sorted(src.iterdir()):
            if not p.is_file() or p.suffix.lower() not in AUDIO_EXTENSIONS:
                continue
            m = _FSDD_RE.match(p.stem)
            if m is None:
                rejected[str(p)] = "name is not <digit>_<speaker>_<take>.wav"
                continue
            clips.append(SourceClip(p, DIGITS[int(m["digit"])], m["speaker"], int(m["n"])))
    elif layout == "speech_commands":
        for d in sorted(x for x in src.iterdir() if x.is_dir() and not x.name.startswith(".")):
            if d.name == BACKGROUND_DIR:
                continue
            for p in sorted(d.iterdir()):
                if not p.is_file() or p.suffix.lower() not in AUDIO_EXTENSIONS:
                    continue
                m = _SC_RE.match(p.stem)
                speaker, take = (m["speaker"], int(m["n"])) if m else (p.stem, None)
                clips.append(SourceClip(p, d.name, speaker, take, f"{d.name}/{p.name}"))
    else:
        clips, rejected = _read_manifest(src)
    return clips, rejected


def _read_manifest(csv_path: Path) -> tuple[list[SourceClip], dict[str, str]]:
    clips: list[SourceClip] = []
    rejected: dict[str, str] = {}
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusImportError(f"{csv_path}: cannot read the manifest ({exc}).") from None
    reader = csv.DictReader(text.splitlines())
    need = {"path", "label", "speaker"}
    if reader.fieldnames is None or not need <= {f.strip() for f in reader.fieldnames}:
        raise CorpusImportError(
            f"{csv_path}: the manifest needs a header with the columns path,label,speaker "
            f"(got {reader.fieldnames})."
        )
    for line, raw in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"{csv_path}:{line}"
        if not all(row.get(k) for k in need):
            rejected[where] = "row lacks path, label or speaker"
            continue
        path = Path(row["path"])
        clips.append(
            SourceClip(
                path if path.is_absolute() else csv_path.parent / path, row["label"], row["speaker"]
            )
        )
    return clips, rejected


def import_corpus(
    src: str | Path,
    out: str | Path,
    *,
    layout: Layout = "auto",
    test_speakers: list[str] | None = None,
    validation_speakers: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Convert ``src`` into ``out`` (16 kHz mono 16-bit WAV, Speech Commands layout)."""
    start = time.perf_counter()
    src, out = Path(src), Path(out)
    chosen: Layout = detect_layout(src) if layout == "auto" else layout
    if chosen != "manifest" and not src.is_dir():
        raise CorpusImportError(f"{src}: not a folder (layout {chosen}).")
    clips, rejected = list_sources(src, chosen)
    if not clips:
        raise CorpusImportError(f"{src}: no audio files found for layout {chosen}.")
    out.mkdir(parents=True, exist_ok=True)
    report = ImportReport(str(src), str(out), chosen, skipped=dict(rejected))
    labels: Counter[str] = Counter()
    speakers: Counter[str] = Counter()
    used: dict[str, tuple[str, str]] = {}
    rel_map: dict[str, str] = {}
    for i, clip in enumerate(clips):
        if progress:
            progress(i, len(clips))
        try:
            name = _import_one(clip, out, used, report)
        except (ValueError, AudioError) as exc:
            report.skipped[str(clip.path)] = str(exc)
            continue
        label, speaker = used[name]
        labels[label] += 1
        speakers[speaker] += 1
        if clip.rel is not None:
            rel_map[clip.rel] = f"{name}.wav"
    if chosen == "speech_commands":
        report.background = _copy_background(src, out, report)
        _carry_lists(src, out, rel_map)
    if test_speakers or validation_speakers:
        _write_speaker_lists(out, set(used), test_speakers or [], validation_speakers or [])
    if progress:
        progress(len(clips), len(clips))
    report.clips = sum(labels.values())
    report.per_label = dict(sorted(labels.items()))
    report.per_speaker = dict(sorted(speakers.items()))
    report.seconds = time.perf_counter() - start
    (out / "import_report.json").write_text(
        json.dumps(asdict(report), indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return report


def _import_one(
    clip: SourceClip, out: Path, used: dict[str, tuple[str, str]], report: ImportReport
) -> str:
    """Convert one clip to ``<label>/<speaker>_nohash_<n>.wav``; returns that name (no
    extension). ``used`` maps names already written to their (label, speaker)."""
    label = _clean(clip.label, "label")
    speaker = _clean(clip.speaker, "speaker").replace("_nohash_", "-nohash-")
    take = clip.take if clip.take is not None else 0
    while f"{label}/{speaker}_nohash_{take}" in used:  # manifests and clashes: next free take
        take += 1
    name = f"{label}/{speaker}_nohash_{take}"
    resampled, downmixed = _convert(clip.path, out / f"{name}.wav")
    used[name] = (label, speaker)
    report.resampled += resampled
    report.downmixed += downmixed
    return name


def _convert(path: Path, target: Path) -> tuple[int, int]:
    """Decode, downmix, resample to 16 kHz and write 16-bit PCM; (resampled, downmixed)."""
    try:
        channels = sf.info(str(path)).channels
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError):
        channels = 1  # read_audio raises the clear error below
    wave, rate = read_audio(path)
    wave = resample(wave, rate, TARGET_RATE)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    sf.write(str(tmp), wave.clip(-1.0, 1.0), TARGET_RATE, subtype="PCM_16", format="WAV")
    tmp.replace(target)
    return int(rate != TARGET_RATE), int(channels > 1)


def _copy_background(src: Path, out: Path, report: ImportReport) -> int:
    bg = src / BACKGROUND_DIR
    if not bg.is_dir():
        return 0
    n = 0
    for p in sorted(bg.iterdir()):
        if p.suffix.lower() not in AUDIO_EXTENSIONS:
            continue
        try:
            _convert(p, out / BACKGROUND_DIR / f"{p.stem}.wav")
            n += 1
        except AudioError as exc:
            report.skipped[str(p)] = str(exc)
    return n


def _carry_lists(src: Path, out: Path, rel_map: dict[str, str]) -> None:
    """Rewrite the source's validation/testing lists for the converted names."""
    for name in ("validation_list.txt", "testing_list.txt"):
        f = src / name
        if not f.is_file():
            continue
        lines = [ln.strip().replace("\\", "/") for ln in f.read_text(encoding="utf-8").splitlines()]
        kept = [rel_map[ln] for ln in lines if ln in rel_map]
        (out / name).write_text("".join(f"{k}\n" for k in kept), encoding="utf-8")


def _write_speaker_lists(out: Path, names: set[str], test: list[str], val: list[str]) -> None:
    """testing_list.txt / validation_list.txt holding out whole speakers."""
    present = {n.split("/", 1)[1].split("_nohash_")[0] for n in names}
    missing = sorted((set(test) | set(val)) - present)
    if missing:
        raise CorpusImportError(
            f"held-out speaker(s) {', '.join(missing)} not in the imported corpus; its speakers "
            f"are {', '.join(sorted(present))}."
        )
    for fname, chosen in (("testing_list.txt", set(test)), ("validation_list.txt", set(val))):
        rows = sorted(
            f"{n}.wav" for n in names if n.split("/", 1)[1].split("_nohash_")[0] in chosen
        )
        (out / fname).write_text("".join(f"{r}\n" for r in rows), encoding="utf-8")
