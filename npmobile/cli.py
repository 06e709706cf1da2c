"""`npmobile ...`: the command line. Each subcommand lives in its own function below; argparse
(the standard library's) parses, so `npmobile --help` and `npmobile CMD --help` document all."""

import argparse
import os
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
    from .weights import save
    model = load(args.src, dequantize=True)  # the native file holds float32 tensors
    save(args.output, model)
    print(f"wrote {args.output}: {model!r}")
    return 0


def cmd_summary(args):
    """The cost of a model, layer by layer: from a weight file, or from architecture flags."""
    import json

    from . import cost
    from .architectures import ARCHITECTURES

    flags = {k: getattr(args, k) for k in ("arch", "alpha", "resolution", "classes", "convention")}
    if args.src:
        defaults = vars(build_parser().parse_args(["summary"]))
        if any(flags[k] != defaults[k] for k in flags):
            raise ValueError("give a weight file or architecture flags (--arch, --alpha, ...), not both")
        from .io import load
        model = load(args.src, dequantize=True)  # the same layers; counted on the float graph
        graph, title = model.graph, f"{args.src}: {model!r}"
    else:
        graph = ARCHITECTURES[args.arch](args.alpha, args.resolution, args.classes, convention=args.convention)
        title = (f"{args.arch} alpha={args.alpha} resolution={args.resolution} "
                 f"classes={graph.config.classes} convention={args.convention}")
    c = cost.count(graph)
    text = json.dumps(c.to_json(), indent=1) if args.json else cost.format_table(c, title)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


def cmd_bench(args):
    from . import bench
    return bench.main(args.rest)


def build_parser():
    parser = argparse.ArgumentParser(prog="npmobile", description="MobileNetV1 and V2 inference with numpy and numba only.")
    parser.add_argument("--version", action="version", version=f"npmobile {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("convert", help="convert a Keras, torchvision, ONNX or TFLite file to the native .npz")
    p.add_argument("src", help="weight file to read (.h5, .keras, .pth, .onnx, .tflite, .npz)")
    p.add_argument("-o", "--output", required=True, help="native .npz file to write")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("summary", help="MACs and parameters per layer (like Keras model.summary())",
                       description="Count MACs and parameters from the graph that runs, for a weight file "
                                   "or for an architecture given by flags. See docs/cost.md.")
    p.add_argument("src", nargs="?", help="weight file (any format npmobile.load reads); omit to use the flags")
    _add_arch_flags(p)
    p.add_argument("--json", action="store_true",
                   help="print JSON instead of the table: top-level keys macs, params, params_by_kind, config, layers")
    p.add_argument("-o", "--output", help="write the table or JSON to this file instead of stdout")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("bench", help="time whole MobileNets against ONNX Runtime and PyTorch (same weights)",
                       description="The end-to-end benchmark (npmobile/bench.py): MobileNetV1/V2-1.0-224, "
                                   "batch 1 and 8, 1 and 2 threads, ratios from the same run.", add_help=False)
    p.set_defaults(func=cmd_bench)

    from .classify import add_parsers  # `classify` and `demo`
    add_parsers(sub)
    from .warmup import add_parser as add_warmup
    add_warmup(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "command", None) == "bench":  # bench parses its own flags (and --help)
        args.rest = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return _run(args)


def _run(args):
    """Run a subcommand; whatever goes wrong is one line on stderr, never a traceback. The
    documented errors (ValueError and its WeightFileError, FileNotFoundError, ImportError naming
    the extra to install) are the message; Ctrl-C exits 130 as shells expect; anything else is a
    bug, reported as one (NPMOBILE_DEBUG=1 shows its traceback)."""
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"npmobile {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"npmobile {args.command}: error: {e}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"npmobile {args.command}: error: out of memory", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 -- the last line of defence: no traceback for users
        if os.environ.get("NPMOBILE_DEBUG"):
            raise
        print(f"npmobile {args.command}: internal error (please report it; NPMOBILE_DEBUG=1 shows the "
              f"traceback): {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
