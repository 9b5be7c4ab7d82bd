"""``flava-node enroll | verify | listen``: the device verbs beyond recognition.

Each talks to the running node's local API when one runs in ``--home`` (so the answers come
from the live model and the node's own enrolments), and otherwise works on the home directly:
enrolments are the same files either way, and ``listen`` falls back to the checkpoint.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from flava_p2p.cli.common import HelpFormatter, add_logging_args
from flava_p2p.errors import FlavaError

DEFAULT_HOME = Path.home() / ".flava"


def add_device_commands(sub: Any) -> None:
    """Register ``enroll``, ``verify`` and ``listen`` on the ``flava-node`` parser."""
    enroll = sub.add_parser(
        "enroll",
        help="enrol a speaker's voice on this device (for verification / owner-only training)",
        formatter_class=HelpFormatter,
        description=(
            "Embed each clip with the packaged speaker encoder and add it to NAME's enrolment\n"
            "in <home>/speakers/ (voice embeddings only, never audio, never shared). Three to\n"
            "five clips of a few seconds each give a usable enrolment."
        ),
        epilog="example:\n  flava-node enroll alice a1.wav a2.wav a3.wav --home ~/.flava",
    )
    enroll.add_argument("name", help="speaker name: letters, digits, '_' or '-'")
    enroll.add_argument("files", nargs="+", metavar="FILE", help="WAV or FLAC clips of NAME")
    enroll.add_argument("--replace", action="store_true", help="forget NAME's earlier clips")
    _common(enroll)
    enroll.set_defaults(func=_cmd_enroll)

    verify = sub.add_parser(
        "verify",
        help="is this the enrolled speaker? (or: are two clips the same speaker?)",
        formatter_class=HelpFormatter,
        description=(
            "Cosine score of a clip against an enrolled speaker (--speaker), or of two clips,\n"
            "with the decision at the node's api.speaker_threshold (calibrated on a public\n"
            "corpus at its equal-error rate). Exit status 0 = same speaker, 3 = different."
        ),
        epilog=(
            "examples:\n  flava-node verify door.wav --speaker alice\n"
            "  flava-node verify a.wav b.wav --json"
        ),
    )
    verify.add_argument("files", nargs="+", metavar="FILE", help="one clip (with --speaker) or two")
    verify.add_argument("--speaker", help="enrolled speaker to check against")
    _common(verify)
    verify.set_defaults(func=_cmd_verify)

    listen = sub.add_parser(
        "listen",
        help="recognise each utterance live from a microphone or a WAV stream (VAD)",
        formatter_class=HelpFormatter,
        description=(
            "Voice-activity detection (Silero VAD, shipped in the package) cuts the stream into\n"
            "utterances; each is recognised by the running node (live model, personalised) or,\n"
            "with no node running, by the checkpoint in --home. One line per utterance.\n"
            "--wav reads a file as a stream (--realtime paces it like a microphone); --mic\n"
            "needs the optional `sounddevice` package and a capture device."
        ),
        epilog=(
            "examples:\n  flava-node listen --wav session.wav --json\n"
            "  flava-node listen --mic --home ~/.flava"
        ),
    )
    src = listen.add_mutually_exclusive_group(required=True)
    src.add_argument("--wav", metavar="FILE", help="a WAV/FLAC recording read as a stream")
    src.add_argument("--mic", action="store_true", help="the default microphone (16 kHz mono)")
    listen.add_argument("--realtime", action="store_true", help="pace --wav like live audio")
    listen.add_argument("--vad-threshold", type=float, default=0.5, help="speech score (0.5)")
    listen.add_argument("--seconds", type=float, default=None, help="stop after this long")
    _common(listen)
    listen.set_defaults(func=_cmd_listen)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", default=str(DEFAULT_HOME), help="node home (default ~/.flava)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_logging_args(p, top_level=False)


# ---------------------------------------------------------------------- talking to the node
class ApiError(FlavaError):
    """The node refused a request; ``doc`` is its JSON answer (``error``, ``message``)."""

    def __init__(self, doc: dict[str, Any], fallback: str) -> None:
        super().__init__(str(doc.get("message", fallback)))
        self.doc = doc


class NodeApi:
    """The running node's API (base URL and token), or None when no node answers."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base, self.token = base, token

    @staticmethod
    def find(home: Path) -> NodeApi | None:
        try:
            base = json.loads((home / "status.json").read_text())["api"]
        except (OSError, KeyError, ValueError):
            return None
        api = NodeApi(base, _home_config(home).api.token)
        try:
            api.call("GET", "/v1/openapi.json")
        except FlavaError:
            return None
        return api

    def call(
        self, method: str, path: str, body: bytes | None = None, content_type: str = ""
    ) -> dict[str, Any]:
        headers = {"Content-Type": content_type} if content_type else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(  # noqa: S310 (the URL the node wrote in its home)
            self.base + path, data=body, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310
                out: dict[str, Any] = json.loads(resp.read())
                return out
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read() or b"{}")
            except ValueError:
                err = {}
            finally:
                exc.close()
            raise ApiError(err if isinstance(err, dict) else {}, str(exc)) from None
        except (OSError, urllib.error.URLError) as exc:
            raise FlavaError(f"the node at {self.base} does not answer ({exc}).") from None


def _home_config(home: Path) -> Any:
    from flava_p2p.config import NodeConfig, load_config

    path = home / "node.yaml"
    return load_config(path) if path.exists() else NodeConfig()


def _multipart(files: list[Path], fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for key, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode())
        out.write(value.encode() + b"\r\n")
    for i, path in enumerate(files):
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="clip{i}{path.suffix}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        out.write(_read(path) + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FlavaError(f"{path}: cannot read ({exc.strerror or exc}).") from None


# ---------------------------------------------------------------------- enroll / verify
def _local_book(home: Path) -> Any:
    from flava_p2p.speech.enrolment import SpeakerBook

    return SpeakerBook(home / "speakers", _home_config(home).api.speaker_threshold)


def _embed_files(files: list[Path]) -> np.ndarray:
    from flava_p2p.speech.audio import read_audio
    from flava_p2p.speech.speaker import SpeakerEncoder

    enc = SpeakerEncoder()
    return np.stack([enc.embed(*read_audio(f)) for f in files])


def _cmd_enroll(args: argparse.Namespace) -> int:
    from flava_p2p.speech.enrolment import EnrolmentError

    home = Path(args.home).expanduser()
    files = [Path(f) for f in args.files]
    api = NodeApi.find(home)
    try:
        if api is not None:
            body, ctype = _multipart(files, {})
            path = f"/v1/speakers/{args.name}/enroll" + ("?replace=1" if args.replace else "")
            out = api.call("POST", path, body, ctype)
        else:
            out = _local_book(home).enrol(args.name, _embed_files(files), replace=args.replace)
    except EnrolmentError as exc:
        raise FlavaError(str(exc)) from None
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['speaker']}: +{out['clips']} clips, {out['enrolled_clips']} enrolled")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from flava_p2p.speech.enrolment import EnrolmentError

    home = Path(args.home).expanduser()
    files = [Path(f) for f in args.files]
    if len(files) != (1 if args.speaker else 2):
        raise FlavaError("give one clip with --speaker NAME, or two clips to compare.")
    api = NodeApi.find(home)
    try:
        if api is not None:
            body, ctype = _multipart(files, {"speaker": args.speaker} if args.speaker else {})
            out = api.call("POST", "/v1/verify", body, ctype)
        else:
            book = _local_book(home)
            e = _embed_files(files)
            v = book.verify(e[0], args.speaker) if args.speaker else book.compare(e[0], e[1])
            out = {"score": round(v.score, 4), "threshold": v.threshold,
                   "same_speaker": v.same_speaker}  # fmt: skip
            if args.speaker:
                out["speaker"] = args.speaker
    except EnrolmentError as exc:
        raise FlavaError(str(exc)) from None
    if args.json:
        print(json.dumps(out))
    else:
        verdict = "same speaker" if out["same_speaker"] else "different speaker"
        print(f"{verdict} (score {out['score']:.3f}, threshold {out['threshold']:.3f})")
    return 0 if out["same_speaker"] else 3


# ---------------------------------------------------------------------- listen
def _stream_wav(path: Path, realtime: bool) -> Iterator[np.ndarray]:
    from flava_p2p.speech.audio import read_audio, resample

    wave, rate = read_audio(path)
    wave = resample(wave, rate, 16000)
    block = 1600  # 100 ms
    start = time.monotonic()
    for i in range(0, len(wave), block):
        if realtime:
            time.sleep(max(0.0, start + i / 16000 - time.monotonic()))
        yield wave[i : i + block]


def _stream_mic() -> Iterator[np.ndarray]:
    try:
        import sounddevice  # type: ignore[import-not-found]
    except ImportError:
        raise FlavaError(
            "--mic needs the optional `sounddevice` package (and PortAudio): "
            "`pip install sounddevice`; or stream a recording with --wav FILE."
        ) from None
    with sounddevice.InputStream(samplerate=16000, channels=1, dtype="float32",
                                 blocksize=1600) as stream:  # fmt: skip
        while True:
            block, _ = stream.read(1600)
            yield np.asarray(block, np.float32).reshape(-1)


def _wav_bytes(wave: np.ndarray) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _cmd_listen(args: argparse.Namespace) -> int:
    from flava_p2p.speech.vad import UtteranceSplitter

    home = Path(args.home).expanduser()
    api = NodeApi.find(home)
    recognize: Any
    if api is not None:
        source = "node"

        def recognize(wave: np.ndarray) -> tuple[str, float, int | None]:
            out = api.call("POST", "/v1/recognize", _wav_bytes(wave), "audio/wav")
            return out["label"], float(out["probabilities"][out["label"]]), out["model_round"]
    else:
        from flava_p2p.learning.inference import KeywordSpotter
        from flava_p2p.speech.audio import fix_length

        source = "checkpoint"
        spotter = KeywordSpotter(home / "model.ckpt")
        fc = spotter.feature_cfg
        n = round(fc.sample_rate * fc.clip_seconds)

        def recognize(wave: np.ndarray) -> tuple[str, float, int | None]:
            clip = fix_length(wave, n, spotter.extractor.center)[None, :]
            label, p = spotter.predict_waves(clip, 1)[0][0]
            return label, p, None

    print(f"listening ({source}); Ctrl-C stops", file=sys.stderr)
    splitter = UtteranceSplitter(threshold=args.vad_threshold)
    stream = _stream_mic() if args.mic else _stream_wav(Path(args.wav), args.realtime)
    began = time.monotonic()
    heard = 0
    try:
        for block in stream:
            for utt in splitter.feed(block):
                heard += 1
                _say(utt, recognize, args.json)
            if args.seconds is not None and time.monotonic() - began > args.seconds:
                break
        for utt in splitter.flush():
            heard += 1
            _say(utt, recognize, args.json)
    except KeyboardInterrupt:
        pass
    print(f"{heard} utterances", file=sys.stderr)
    return 0


def _say(utt: Any, recognize: Any, as_json: bool) -> None:
    label, p, round_ = recognize(utt.wave)
    if as_json:
        print(json.dumps({"start_s": round(utt.start_s, 2), "end_s": round(utt.end_s, 2),
                          "label": label, "probability": round(p, 4), "model_round": round_}),
              flush=True)  # fmt: skip
    else:
        print(f"{utt.start_s:7.2f}–{utt.end_s:6.2f} s  {label:<12} {p:.2f}", flush=True)
