"""Blend two purifiers of one architecture in weight space: (1 - alpha) * A + alpha * B, tensor by tensor.

Fine-tuning towards robustness pulls a purifier away from its clean fidelity; when B was fine-tuned from A
(same architecture, same starting point), the weights in between often keep most of B's gain and most of
A's fidelity (weight-space ensembling, as in WiSE-FT). A blend is an ordinary safetensors file of the same
architecture, so every engine path applies; it is a candidate like a training snapshot, chosen by
scripts/select_snapshot.py on validation photos.

Usage: python scripts/blend_weights.py A.safetensors B.safetensors --alpha 0.5 --out BLEND.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safetensors.torch import load_file, save

from nrp_deploy.fileutil import write_bytes_atomic


def blend(a: dict, b: dict, alpha: float) -> dict:
    """``(1 - alpha) * a + alpha * b``; refuses state dicts whose keys or shapes differ."""
    if a.keys() != b.keys():
        raise ValueError(f"the two files hold different tensors ({len(a)} vs {len(b)} keys)")
    wrong = [k for k in a if a[k].shape != b[k].shape]
    if wrong:
        raise ValueError(f"shapes differ: {', '.join(wrong[:3])}")
    return {k: ((1 - alpha) * a[k].float() + alpha * b[k].float()).contiguous() for k in a}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="the starting weights (alpha 0)")
    parser.add_argument("b", type=Path, help="the fine-tuned weights (alpha 1)")
    parser.add_argument("--alpha", type=float, required=True, help="share of B, in [0, 1]")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not 0 <= args.alpha <= 1:
        parser.error(f"--alpha must be in [0, 1], got {args.alpha}")
    try:
        blended = blend(load_file(args.a), load_file(args.b), args.alpha)
    except (OSError, ValueError) as exc:
        print(f"cannot blend {args.a} and {args.b}: {exc}", file=sys.stderr)
        return 1
    write_bytes_atomic(args.out, save(blended))
    print(f"wrote {args.out}: {1 - args.alpha:g} x {args.a.name} + {args.alpha:g} x {args.b.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
