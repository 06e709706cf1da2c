"""`npmobile ...`: the command line. Each subcommand lives in its own function below; argparse
(the standard library's) parses, so `npmobile --help` and `npmobile CMD --help` document all."""

import argparse
import sys

from . import __version__


def _add_arch_flags(p):
    p.add_argument("--arch", choices=["mobilenet_v1", "mobilenet_v2"], default="mobilenet_v2")
    p.add_argument("--alpha", type=float, default=1.0, help="width multiplier (default 1.0)")
    p.add_argument("--resolution", type=int, default=224, help="input side in pixels (default 224)")
    p.add_argument("--classes", type=int, default=None, help="classes of the head (default: the convention's)")
    p.add_argument("--convention", choices=["keras", "torch", "tfslim"], default="keras")


def cmd_convert(args):
    from .io import load
    model = load(args.src)
    model.save(args.output)
    print(f"wrote {args.output}: {model!r}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="npmobile", description="MobileNetV1 and V2 inference with numpy and numba only.")
    parser.add_argument("--version", action="version", version=f"npmobile {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("convert", help="convert a Keras, torchvision, ONNX or TFLite file to the native .npz")
    p.add_argument("src", help="weight file to read (.h5, .keras, .pth, .onnx, .tflite, .npz)")
    p.add_argument("-o", "--output", required=True, help="native .npz file to write")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"npmobile {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
