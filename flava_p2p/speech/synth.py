"""Synthetic Speech Commands corpus voiced by espeak-ng.

A *speaker* is a distinct (accent, voice variant, base pitch, base speed); each take varies pitch
and speed around it, and is placed at a random offset in a 1 s, 16 kHz clip at a random level with
light noise (optionally mixed with a ``_background_noise_`` clip). Written in the Speech Commands
layout so every loader path is the real one. Whole speakers are held out in
``validation_list.txt`` / ``testing_list.txt``.

Reproducible: every clip's randomness comes from ``(seed, clip index)``, so the output does not
depend on how clips are spread over worker processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from flava_p2p.errors import FlavaError
from flava_p2p.speech.audio import Waveform, fix_length

SAMPLE_RATE = 16000
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN_WORDS = (
    "bed",
    "bird",
    "cat",
    "dog",
    "happy",
    "house",
    "marvin",
    "sheila",
    "tree",
    "wow",
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "backward",
    "forward",
    "follow",
    "learn",
    "visual",
)
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
BACKGROUND = "_background_noise_"
#: Present while a corpus is being written; a folder holding it was interrupted.
INCOMPLETE_MARKER = ".synthesis-incomplete"

# espeak-ng's built-in English accents (no mbrola data needed) and voice variants.
ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-rp",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
VARIANTS = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
)


class SynthError(FlavaError):
    """The corpus could not be generated (e.g. espeak-ng missing); the message says how to fix."""


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: the fixed voice parameters that takes vary around."""

    id: str
    accent: str
    variant: str
    pitch: int
    speed: int


@dataclass(frozen=True)
class ClipJob:
    """Everything one worker needs to render one clip, independent of every other clip."""

    path: str
    text: str  # "" for silence
    speaker: Speaker
    seed: int
    background: tuple[str, ...]
    background_prob: float


def make_speakers(n: int, seed: int) -> list[Speaker]:
    """``n`` distinct speakers; distinct (accent, variant) pairs first, then pitch/speed differ."""
    rng = np.random.default_rng([seed, 1])
    combos = [(a, v) for a in ACCENTS for v in VARIANTS]
    order = rng.permutation(len(combos))
    speakers: list[Speaker] = []
    used: set[tuple[str, str, int, int]] = set()
    i = 0
    while len(speakers) < n:
        accent, variant = combos[int(order[i % len(combos)])]
        i += 1
        pitch = int(rng.integers(25, 76))
        speed = int(rng.integers(120, 200))
        key = (accent, variant, pitch // 5, speed // 10)
        if (accent, variant, pitch, speed) in used or key in {
            (u[0], u[1], u[2] // 5, u[3] // 10) for u in used
        }:
            continue
        used.add((accent, variant, pitch, speed))
        sid = hashlib.sha256(f"{seed}:{len(speakers)}".encode()).hexdigest()[:8]
        speakers.append(Speaker(sid, accent, variant, pitch, speed))
    return speakers


def voice(text: str, speaker: Speaker, pitch: int, speed: int, workdir: str) -> Waveform:
    """Run espeak-ng once and return the utterance at 16 kHz, leading/trailing silence trimmed."""
    out = str(Path(workdir) / "utt.wav")
    cmd = [
        "espeak-ng",
        "-v",
        f"{speaker.accent}+{speaker.variant}",
        "-p",
        str(pitch),
        "-s",
        str(speed),
        "-w",
        out,
        text,
    ]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)  # noqa: S603 (fixed argv, no shell)
    except FileNotFoundError:
        raise SynthError(
            "espeak-ng is not installed; install it with `sudo apt-get install -y espeak-ng` "
            "(or run scripts/setup.sh)."
        ) from None
    except subprocess.CalledProcessError as exc:
        raise SynthError(
            f"espeak-ng failed for {text!r}: {exc.stderr.decode(errors='replace')}"
        ) from None
    wave, rate = sf.read(out, dtype="float32")
    wave = _fft_resample(np.asarray(wave, dtype=np.float32), int(rate), SAMPLE_RATE)
    loud = np.flatnonzero(np.abs(wave) > 0.02 * (np.abs(wave).max() + 1e-9))
    if loud.size:
        wave = wave[loud[0] : loud[-1] + 1]
    return wave


def _fft_resample(wave: Waveform, orig: int, new: int) -> Waveform:
    """Band-limited resampling by FFT; numpy only so forked workers never touch torch."""
    if orig == new:
        return wave
    n_new = round(len(wave) * new / orig)
    spec = np.fft.rfft(wave)[: n_new // 2 + 1]
    return (np.fft.irfft(spec, n_new) * (n_new / len(wave))).astype(np.float32)


def render_clip(job: ClipJob, workdir: str) -> None:
    """Render one clip (word or silence) to ``job.path`` as 16-bit PCM WAV."""
    rng = np.random.default_rng(job.seed)
    n = SAMPLE_RATE
    clip = np.zeros(n, dtype=np.float32)
    if job.text:
        pitch = int(np.clip(job.speaker.pitch + rng.integers(-6, 7), 0, 99))
        speed = int(np.clip(job.speaker.speed * rng.uniform(0.9, 1.1), 80, 260))
        word = voice(job.text, job.speaker, pitch, speed, workdir)
        word = fix_length(word, min(len(word), n - 800))
        word = word / (np.abs(word).max() + 1e-9) * rng.uniform(0.15, 0.9)
        offset = int(rng.integers(0, n - len(word) + 1))
        clip[offset : offset + len(word)] = word
        clip += rng.normal(0, 10 ** rng.uniform(-3.5, -2.5), n).astype(np.float32)
        if job.background and rng.random() < job.background_prob:
            clip += _background_slice(job.background, rng) * rng.uniform(0.02, 0.12)
    else:
        # Silence: background noise at a random level, sometimes nearly nothing.
        level = rng.choice([rng.uniform(0.0, 0.01), rng.uniform(0.02, 0.3)])
        if job.background:
            clip += _background_slice(job.background, rng) * float(level)
        clip += rng.normal(0, 10 ** rng.uniform(-4, -3), n).astype(np.float32)
    clip = np.clip(clip, -1.0, 1.0)
    sf.write(job.path, clip, SAMPLE_RATE, subtype="PCM_16")


def _background_slice(files: tuple[str, ...], rng: np.random.Generator) -> Waveform:
    wave, _ = sf.read(files[int(rng.integers(len(files)))], dtype="float32")
    start = int(rng.integers(0, len(wave) - SAMPLE_RATE))
    seg = np.asarray(wave[start : start + SAMPLE_RATE], dtype=np.float32)
    normed: Waveform = seg / (np.abs(seg).max() + 1e-9)
    return normed


def make_background(out_dir: Path, seed: int, seconds: int = 10) -> list[Path]:
    """Write white, pink, brown and hum noise clips to ``out_dir`` (like Speech Commands')."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2])
    n = SAMPLE_RATE * seconds
    white = rng.normal(0, 1, n)
    spectrum = np.fft.rfft(rng.normal(0, 1, n))
    freqs = np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 1.0)
    pink = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    brown = np.fft.irfft(spectrum / freqs, n)
    t = np.arange(n) / SAMPLE_RATE
    hum = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in range(1, 6)) + 0.3 * white
    paths = []
    for name, raw in [
        ("white_noise", white),
        ("pink_noise", pink),
        ("brown_noise", brown),
        ("hum", hum),
    ]:
        wave = 0.5 * raw / np.abs(raw).max()
        path = out_dir / f"{name}.wav"
        sf.write(path, wave.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        paths.append(path)
    return paths


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`synthesize_corpus` wrote."""

    out: str
    speakers: int
    clips: int
    labels: list[str]
    validation_speakers: int
    testing_speakers: int
    seconds: float


def synthesize_corpus(
    out: str | Path,
    *,
    n_speakers: int = 60,
    takes: int = 5,
    words: Sequence[str] = KEYWORDS,
    unknown: bool = True,
    silence: bool = True,
    seed: int = 0,
    background_prob: float = 0.3,
    holdout_fraction: float = 0.1,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SynthSummary:
    """Write the corpus to ``out`` in the Speech Commands layout and return a summary."""
    import time

    start = time.perf_counter()
    if shutil.which("espeak-ng") is None:
        raise SynthError(
            "espeak-ng is not installed; install it with `sudo apt-get install -y espeak-ng` "
            "(or run scripts/setup.sh)."
        )
    if n_speakers < 3:
        raise SynthError("--speakers must be at least 3 (train, validation and test speakers).")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE_MARKER).touch()
    background = tuple(str(p) for p in make_background(out / BACKGROUND, seed))
    speakers = make_speakers(n_speakers, seed)
    rng = np.random.default_rng([seed, 3])

    jobs: list[ClipJob] = []
    labels = list(words) + ([UNKNOWN] if unknown else []) + ([SILENCE] if silence else [])
    for label in labels:
        (out / label).mkdir(exist_ok=True)
    for spk in speakers:
        for take in range(takes):
            for label in labels:
                if label == UNKNOWN:
                    text = str(rng.choice(UNKNOWN_WORDS))
                elif label == SILENCE:
                    text = ""
                else:
                    text = label
                path = out / label / f"{spk.id}_nohash_{take}.wav"
                jobs.append(
                    ClipJob(
                        str(path),
                        text,
                        spk,
                        seed * 1_000_003 + len(jobs),
                        background,
                        background_prob,
                    )
                )

    workers = workers or os.cpu_count() or 1
    chunks = [jobs[i :: workers * 8] for i in range(workers * 8)]
    done = 0
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for count in pool.map(_render_many, chunks):
            done += count
            if progress:
                progress(done, len(jobs))

    n_hold = max(1, round(holdout_fraction * n_speakers))
    order = rng.permutation(n_speakers)
    val = {speakers[i].id for i in order[:n_hold]}
    test = {speakers[i].id for i in order[n_hold : 2 * n_hold]}
    rel = sorted(str(Path(j.path).relative_to(out)) for j in jobs)
    (out / "validation_list.txt").write_text(
        "".join(f"{r}\n" for r in rel if Path(r).name.split("_nohash_")[0] in val)
    )
    (out / "testing_list.txt").write_text(
        "".join(f"{r}\n" for r in rel if Path(r).name.split("_nohash_")[0] in test)
    )
    (out / "speakers.json").write_text(json.dumps([asdict(s) for s in speakers], indent=1))
    summary = SynthSummary(
        str(out), n_speakers, len(jobs), labels, len(val), len(test), time.perf_counter() - start
    )
    (out / "corpus.json").write_text(json.dumps(asdict(summary) | {"seed": seed, "takes": takes}))
    (out / INCOMPLETE_MARKER).unlink(missing_ok=True)
    return summary


def _render_many(jobs: list[ClipJob]) -> int:
    with tempfile.TemporaryDirectory(prefix="flava-synth-") as workdir:
        for job in jobs:
            render_clip(job, workdir)
    return len(jobs)
