"""`npmobile ...`: the command line. Each subcommand lives in its own function below; argparse
(the standard library's) parses, so `npmobile --help` and `npmobile CMD --help` document all."""

import argparse
import math
import os
import sys

from . import __version__

# The architecture flags' defaults. Every flag defaults to None ("not given") and is resolved
# here with `given(...)`, so that a value the user typed, 0 included, is never mistaken for absent.
ARCH_DEFAULTS = {"arch": "mobilenet_v2", "alpha": 1.0, "resolution": 224, "classes": None, "convention": "keras"}


def given(args, name):
    """The flag's value when the user gave it, else its default (ARCH_DEFAULTS)."""
    value = getattr(args, name)
    return ARCH_DEFAULTS[name] if value is None else value


def positive_float(text):
    """argparse type: a finite number > 0 (a width multiplier)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, found {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, found {text!r}")
    return value


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, found {text!r}")
    return value


def _add_arch_flags(p):
    p.add_argument("--arch", choices=["mobilenet_v1", "mobilenet_v2"], help="architecture (default mobilenet_v2)")
    p.add_argument("--alpha", type=positive_float, help="width multiplier (default 1.0)")
    p.add_argument("--resolution", type=positive_int, help="input side in pixels (default 224)")
    p.add_argument("--classes", type=positive_int, help="classes of the head (default: the convention's)")
    p.add_argument("--convention", choices=["keras", "torch", "tfslim"], help="padding/BN/head conventions (default keras)")


def cmd_convert(args):
    """Read any weight file, write the native .npz. Only a name ending in .npz is accepted: the
    file written is always the native format, and a name saying otherwise would lie to `load`."""
    from .io import load
    from .weights import save
    if os.path.splitext(args.output)[1].lower() != ".npz":
        raise ValueError(f"-o {args.output}: convert writes npmobile's native .npz format only; expected a name "
                         f"ending in .npz (npmobile reads .h5, .keras, .pth, .onnx and .tflite but writes none of them)")
    model = load(args.src, dequantize=True)  # the native file holds float32 tensors
    save(args.output, model)
    print(f"wrote {args.output}: {model!r}")
    return 0


def cmd_summary(args):
    """The cost of a model, layer by layer: from a weight file, or from architecture flags; with
    --time, per step of the fast engine with its measured time beside (npmobile/timing.py)."""
    import json

    from . import cost

    model, title = _summary_model(args)
    if args.time:
        from . import timing
        table = timing.timed_rows(model, runs=args.runs)
        text = (json.dumps({"config": model.config.to_json(), "layers": timing.to_json(table)}, indent=1) if args.json
                else timing.format_table(table, title + f" (batch 1, median of {args.runs} runs per step)"))
    else:
        c = cost.count(model.graph)
        text = json.dumps(c.to_json(), indent=1) if args.json else cost.format_table(c, title)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


def _summary_model(args):
    """(Model, title) from the weight file, or from the architecture flags with random weights
    (counts and times do not depend on the weights' values)."""
    from .model import Model
    from .architectures import ARCHITECTURES, random_params

    chosen = [f"--{k}" for k in ARCH_DEFAULTS if getattr(args, k) is not None]
    if args.src:
        if chosen:
            raise ValueError(f"give a weight file or architecture flags, not both: {args.src} carries its own "
                             f"architecture, so {', '.join(chosen)} would be ignored")
        from .io import load
        model = load(args.src, dequantize=True)  # the same layers; counted and timed on the float graph
        return model, f"{args.src}: {model!r}"
    arch, alpha, resolution, convention = (given(args, k) for k in ("arch", "alpha", "resolution", "convention"))
    graph = ARCHITECTURES[arch](alpha, resolution, args.classes, convention=convention)
    title = f"{arch} alpha={alpha} resolution={resolution} classes={graph.config.classes} convention={convention}"
    return Model(graph, random_params(graph), source="random weights"), title


def cmd_bench(args):
    """With --weights: time that file (bench_file_parser's flags). Without: the end-to-end
    benchmark, which parses its own flags (npmobile/bench.py)."""
    if any(a == "--weights" or a.startswith("--weights=") for a in args.rest):
        from pathlib import Path

        from .bench_file import bench_file
        opts = bench_file_parser().parse_args(args.rest)
        bench_file(Path(opts.weights), runs=opts.runs, warmup=opts.warmup, threads=opts.threads, batch=opts.batch)
        return 0
    from . import bench
    return bench.main(args.rest)


def bench_file_parser():
    p = argparse.ArgumentParser(prog="npmobile bench --weights", description="Time one model file with npmobile "
                                "and with the runtime that reads the same file (ONNX Runtime, LiteRT, PyTorch).")
    p.add_argument("--weights", required=True, metavar="FILE", help="any file npmobile.load reads")
    p.add_argument("--runs", type=positive_int, default=20, metavar="N", help="timed calls per runtime (default 20)")
    p.add_argument("--warmup", type=positive_int, default=3, metavar="N",
                   help="untimed calls first, at least 1: it absorbs numba's compile (default 3)")
    p.add_argument("--threads", type=positive_int, default=1, metavar="T", help="threads for every runtime (default 1)")
    p.add_argument("--batch", type=positive_int, default=1, metavar="B", help="images per call (default 1)")
    return p


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
    p.add_argument("--time", action="store_true",
                   help="one row per step of the fast engine (fused nodes named), MACs and parameters beside its "
                        "measured ms and GFLOP/s (batch 1)")
    p.add_argument("--runs", type=positive_int, default=20, metavar="N", help="with --time: timed runs per step (default 20)")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("bench", help="time whole MobileNets against ONNX Runtime and PyTorch (same weights); "
                                     "--weights FILE [--runs N --warmup N --threads T --batch B] times your file",
                       description="The end-to-end benchmark (npmobile/bench.py): MobileNetV1/V2-1.0-224, "
                                   "batch 1 and 8, 1 and 2 threads, ratios from the same run. "
                                   "`npmobile bench --weights FILE --help` for timing one file.", add_help=False)
    p.set_defaults(func=cmd_bench)

    from .classify import add_parsers  # `classify` and `demo`
    add_parsers(sub)
    from .warmup import add_parser as add_warmup
    add_warmup(sub)
    return parser


def main(argv=None):
    """The command line; its exit status. Ctrl-C at any point after the interpreter has started
    (importing numpy and numba, parsing, loading weights, classifying) is one line on stderr
    and exit status 130, as shells expect."""
    command = "npmobile"
    try:
        parser = build_parser()
        args, rest = parser.parse_known_args(argv)
        command = f"npmobile {args.command}" if getattr(args, "command", None) else command
        if getattr(args, "command", None) == "bench":  # bench parses its own flags (and --help)
            args.rest = rest
        elif rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return _run(args)
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130


def _run(args):
    """Run a subcommand; whatever goes wrong is one line on stderr, never a traceback. The
    documented errors (ValueError and its WeightFileError, FileNotFoundError, ImportError naming
    the extra to install) are the message; anything else is a bug, reported as one
    (NPMOBILE_DEBUG=1 shows its traceback). Ctrl-C is main's to report."""
    try:
        return args.func(args)
    except BrokenPipeError:
        return _output_closed()
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


def _output_closed():
    """The reader of our stdout went away (`| head`, `| true`): stop quietly, exit status 1, as
    the Python docs recommend (signal module, "Note on SIGPIPE"): point stdout at devnull so that
    the flush at exit cannot raise again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


if __name__ == "__main__":
    sys.exit(main())
