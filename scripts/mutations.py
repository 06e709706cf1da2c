"""The mutation check: plant one known bug at a time in a copy of the repository and run the tests
that should catch it. Every mutant must make them fail; a mutant that passes means a test has
gone soft.

The seven bugs are the ones a reviewer planted by hand (issue 16): a wrong tap in two of the
depthwise 3x3 paths, `c // m` -> `c % m` in the general depthwise loop, the im2col padding, the
average pool's divisor, the fused clamp, and the plan's buffer liveness. Each is written as a
regular expression over the source, so it survives edits around it; when the code it targets is
rewritten, the script says which mutation no longer applies (update its pattern) instead of
passing.

    python scripts/mutations.py [--only NAME ...] [--keep]

Runs the unmutated tests first (they must pass), then each mutant; exits 1 if any mutant survives
or no longer applies. The copy lives in a temporary folder with its own numba cache.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
KERNEL_TESTS = "tests/test_kernels_vs_oracle.py"


class Mutation(NamedTuple):
    name: str
    files: tuple  # candidate files: the pattern must match in exactly one of them
    pattern: str  # a regular expression; every match is replaced
    replacement: str
    tests: tuple  # pytest arguments that must fail on the mutant
    count: int = 1  # how many matches the pattern must have


MUTATIONS = [
    Mutation("depthwise 3x3 inside: wrong tap", ("npmobile/kernels/depthwise.py",),
             r"(x\[i, iy \+ 1, ix \+ 1, c\] \* w\[1, )1(, c\])", r"\g<1>0\g<2>",
             (KERNEL_TESTS, "-k", "depthwise")),
    Mutation("depthwise 3x3 stride-1 runs: wrong tap", ("npmobile/kernels/depthwise.py",),
             r"(r10 \* w10 \+ r11 \* w11 \+ r12 \* w)12", r"\g<1>02",
             (KERNEL_TESTS, "-k", "depthwise")),
    Mutation("depthwise general loop: c // m -> c % m", ("npmobile/kernels/depthwise.py",),
             r"x_pix\[c // m\]", "x_pix[c % m]",
             (KERNEL_TESTS, "-k", "depthwise")),
    Mutation("conv2d im2col: the top padding taken for the left", ("npmobile/kernels/conv2d.py",),
             r"(ox \* stride - )left", r"\g<1>top",
             (KERNEL_TESTS, "-k", "conv2d and not depthwise and not pointwise"), 0),
    Mutation("global average pool: divisor h * w + 1", ("npmobile/kernels/pooling.py",),
             r"np\.float32\(h \* w\)", "np.float32(h * w + 1)",
             (KERNEL_TESTS, "-k", "pool")),
    Mutation("pointwise fused clamp: upper bound dropped",
             ("npmobile/kernels/_product.py", "npmobile/kernels/pointwise.py"),
             r"v = min\(max\(v, lo\), hi\)", "v = max(v, lo)",
             (KERNEL_TESTS, "-k", "pointwise")),
    Mutation("plan liveness: a value freed at its first reader, not its last", ("npmobile/engine.py",),
             r"last_use\.get\(name\) == i and name in slots", "last_use.get(name) >= i and name in slots",
             ("tests/test_engine.py", "-k", "buffers or own_input or chunks")),
]


def copy_repo(dest):
    """The files git tracks (as they are in the working tree), and ../shared beside the copy."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dest / "repo" / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / "repo" / f)
    shared = ROOT.parent / "shared"
    if shared.exists():
        (dest / "shared").symlink_to(shared.resolve())
    return dest / "repo"


def run_tests(repo, tests, cache):
    env = dict(os.environ, PYTHONPATH=str(repo), NUMBA_CACHE_DIR=str(cache), CI="true")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                          cwd=repo, env=env, capture_output=True, text=True)
    last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    return done.returncode, last, time.perf_counter() - start


def locate(repo, m):
    """The one file of repo in which mutation m's pattern matches as expected (LookupError if none)."""
    hits = [(repo / f, len(re.findall(m.pattern, (repo / f).read_text()))) for f in m.files if (repo / f).is_file()]
    hits = [(path, n) for path, n in hits if n]
    if len(hits) != 1 or (m.count and hits[0][1] != m.count):
        raise LookupError(f"pattern {m.pattern!r} matches {hits or 'nothing'} in {m.files} "
                          f"(expected {m.count or 'some'} match(es) in one file)")
    return hits[0][0]


def apply(repo, m):
    """Plant mutation m; returns (path, original text), or raises LookupError when it no longer applies."""
    path = locate(repo, m)
    original = path.read_text()
    path.write_text(re.sub(m.pattern, m.replacement, original))
    return path, original


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="run only the mutations whose name contains one of these")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    args = parser.parse_args(argv)
    mutations = [m for m in MUTATIONS if not args.only or any(s in m.name for s in args.only)]
    work = Path(tempfile.mkdtemp(prefix="npmobile-mutations-"))
    repo, cache = copy_repo(work), work / "numba-cache"
    failures = 0
    try:
        for tests in dict.fromkeys(m.tests for m in mutations):
            code, last, seconds = run_tests(repo, tests, cache)
            print(f"baseline {' '.join(tests)}: {last} ({seconds:.0f} s)", flush=True)
            if code != 0:
                print("the unmutated tests fail: fix them first", flush=True)
                return 1
        for m in mutations:
            try:
                path, original = apply(repo, m)
            except LookupError as e:
                print(f"NOT APPLIED  {m.name}: {e}", flush=True)
                failures += 1
                continue
            try:
                code, last, seconds = run_tests(repo, m.tests, cache)
            finally:
                path.write_text(original)
            caught = code != 0
            failures += not caught
            print(f"{'caught' if caught else 'SURVIVED':11s}  {m.name}: {last} ({seconds:.0f} s)", flush=True)
    finally:
        if args.keep:
            print(f"copy kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{len(mutations) - failures} of {len(mutations)} mutants caught")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
