"""Coverage-guided fuzzing of uwsgirouter's parsers with atheris (libFuzzer for Python).

    tools/fuzz --list                      the targets
    tools/fuzz request --minutes 5         fuzz one target; new interesting inputs go to its corpus
    tools/fuzz ini --replay [FILE ...]     run files (default: the whole corpus) through the checker
    tools/fuzz ini --add FILE ...          once fixed, move crashes into the corpus (kept for good)
    tools/fuzz subscription --minimize     shrink the stored corpus to what adds line coverage

The targets and their invariants live in ``tests/fuzz/targets.py`` so that CI replays the corpus through
the same checkers. libFuzzer runs in a child process (it exits when done) on a scratch copy of the
corpus. Its own corpus grows by the hundred, so only inputs that add line-to-line arcs (measured here,
without hit counts) are stored: a greedy set cover, each input shrunk, named by its SHA-1. A crash is
written to ``tests/fuzz/crashes/`` with a line that reproduces it; once fixed, ``--add`` keeps it as
``crash-<sha1>`` in the corpus, which ``--minimize`` never drops.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fuzz.targets import Target

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: the stored corpus of a target should stay small enough to replay in CI in well under a second
CORPUS_SOFT_LIMIT = 48
#: fixed crashes keep this prefix in the corpus, so that --minimize never drops them
CRASH_PREFIX = "crash-"
#: how long the shrinking of one new input may take
SHRINK_SECONDS = 10.0

Arc = tuple[str, int, int]


def _engine(argv: list[str]) -> None:
    """Child process: instrument the target's modules and hand control to libFuzzer (never returns)."""
    import atheris

    name, libfuzzer_args = argv[0], argv[1:]
    with atheris.instrument_imports(include=["uwsgirouter"]):
        from tests.fuzz.targets import TARGETS
    check = TARGETS[name].check
    atheris.Setup([sys.argv[0], *libfuzzer_args], check)
    atheris.Fuzz()


def _targets() -> dict[str, Target]:
    """The target table, imported late so that the engine can instrument it first."""
    from tests.fuzz.targets import TARGETS

    return dict(TARGETS)


# --- coverage measurement, for keeping the stored corpus small -------------------------------------------


def _module_files(modules: Iterable[str]) -> frozenset[str]:
    return frozenset(str(importlib.import_module(m).__file__) for m in modules)


def arcs_of(check: Callable[[bytes], None], data: bytes, files: frozenset[str]) -> frozenset[Arc] | None:
    """The line-to-line arcs ``check(data)`` runs in ``files``; None if the input breaks the invariant."""
    arcs: set[Arc] = set()

    def tracer(frame: FrameType, event: str, arg: object) -> Callable[..., Any] | None:
        filename = frame.f_code.co_filename
        if filename not in files:
            return None
        last = -frame.f_code.co_firstlineno

        def local(frame: FrameType, event: str, arg: object) -> Callable[..., Any]:
            nonlocal last
            if event == "line":
                arcs.add((filename, last, frame.f_lineno))
                last = frame.f_lineno
            elif event == "return":
                arcs.add((filename, last, -frame.f_code.co_firstlineno))
            return local

        return local

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        check(data)
    except Exception:
        return None
    finally:
        sys.settrace(previous)
    return frozenset(arcs)


def shrink(data: bytes, keeps: Callable[[bytes], bool], deadline: float) -> bytes:
    """Delete chunks (halves down to single bytes) while ``keeps`` still holds: a small ddmin."""
    chunk = max(1, len(data) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        start = 0
        while start < len(data) and time.monotonic() < deadline:
            candidate = data[:start] + data[start + chunk :]
            if keeps(candidate):
                data = candidate
            else:
                start += chunk
        chunk //= 2
    return data


def curate(target: Target, candidates: Iterable[bytes], base: Iterable[bytes]) -> list[bytes]:
    """Inputs among ``candidates`` that cover arcs ``base`` does not, each shrunk.

    Greedy set cover: the input adding the most arcs first (the smaller one on a tie), which keeps the
    stored corpus at a few dozen files where taking every input that adds anything would keep hundreds.
    """
    files = _module_files(target.modules)
    covered: set[Arc] = set()
    for data in base:
        covered |= arcs_of(target.check, data, files) or frozenset()
    measured: dict[bytes, frozenset[Arc]] = {}
    for data in set(candidates):
        arcs = arcs_of(target.check, data, files)
        if arcs is not None and not arcs <= covered:
            measured[data] = arcs
    kept: list[bytes] = []
    while measured:
        best = max(measured, key=lambda d: (len(measured[d] - covered), -len(d), d))
        new = measured.pop(best) - covered
        if not new:
            break

        def keeps(candidate: bytes, new: frozenset[Arc] = new) -> bool:
            found = arcs_of(target.check, candidate, files)
            return found is not None and new <= found

        best = shrink(best, keeps, time.monotonic() + SHRINK_SECONDS)
        covered |= arcs_of(target.check, best, files) or frozenset()
        kept.append(best)
    return kept


def _name(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _store(corpus: Path, inputs: Iterable[bytes], prefix: str = "") -> int:
    corpus.mkdir(parents=True, exist_ok=True)
    count = 0
    for data in inputs:
        path = corpus / (prefix + _name(data))
        if not path.exists():
            path.write_bytes(data)
            count += 1
    return count


# --- commands --------------------------------------------------------------------------------------------


def _write_dictionary(path: Path, tokens: Iterable[bytes]) -> None:
    """libFuzzer's dictionary format: one quoted token a line, non-printables as \\xNN."""
    lines = []
    for token in tokens:
        escaped = "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02x}" for b in token)
        lines.append(f'"{escaped}"\n')
    path.write_text("".join(lines), encoding="ascii")


@contextlib.contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    path = Path(tempfile.mkdtemp(prefix="uwsgirouter-fuzz-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def fuzz(target: Target, minutes: float, work: Path | None) -> int:
    """Run libFuzzer for ``minutes``, then keep what is new; 1 if it found a crash."""
    from tests.fuzz.targets import CRASHES_ROOT

    CRASHES_ROOT.mkdir(parents=True, exist_ok=True)
    before = set(CRASHES_ROOT.iterdir())
    with _workdir(work) as workdir:
        scratch = workdir / "corpus"
        scratch.mkdir(exist_ok=True)
        _store(scratch, target.seeds().values())
        dictionary = workdir / "tokens.dict"
        _write_dictionary(dictionary, target.tokens())
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--engine",
            target.name,
            f"-max_total_time={max(1, round(minutes * 60))}",
            f"-max_len={target.max_len}",
            f"-timeout={target.timeout}",
            "-rss_limit_mb=2048",
            f"-dict={dictionary}",
            f"-artifact_prefix={CRASHES_ROOT}/{target.name}-",
            "-print_final_stats=1",
            str(scratch),
        ]
        if target.corpus.is_dir():
            command.append(str(target.corpus))
        print(f"fuzz: {target.name} for {minutes:g} min ({len(target.corpus_files())} stored inputs)", flush=True)
        # TMPDIR: the ini target writes its cases into a temp dir; libFuzzer exits without Python's atexit.
        env = dict(os.environ, TMPDIR=str(workdir))
        result = subprocess.run(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, check=False)
        found = sorted(set(CRASHES_ROOT.iterdir()) - before)
        print(f"fuzz: libFuzzer exited with status {result.returncode}; keeping what is new", flush=True)
        existing = [p.read_bytes() for p in target.corpus_files()]
        new = curate(target, (p.read_bytes() for p in scratch.iterdir() if p.is_file()), existing)
    added = _store(target.corpus, new)
    total = len(target.corpus_files())
    print(f"fuzz: {added} new input(s) in {_relative(target.corpus)} ({total} in all)")
    if total > CORPUS_SOFT_LIMIT:
        print(f"fuzz: over {CORPUS_SOFT_LIMIT} stored inputs, minimizing")
        minimize(target)
    for crash in found:
        print(f"fuzz: CRASH saved to {_relative(crash)}")
        print(f"fuzz: reproduce with: tools/fuzz {target.name} --replay {_relative(crash)}")
        print(f"fuzz: once fixed, keep it with: tools/fuzz {target.name} --add {_relative(crash)}")
    if result.returncode != 0 and not found:
        print(f"fuzz: libFuzzer failed without saving an input (status {result.returncode})")
        return 1
    return 1 if found else 0


def replay(target: Target, paths: list[Path]) -> int:
    """Run each file through the checker uninstrumented; print what fails, with its traceback."""
    paths = paths or target.corpus_files()
    failures = 0
    for path in paths:
        try:
            target.check(path.read_bytes())
        except Exception:
            failures += 1
            print(f"FAIL {path}")
            traceback.print_exc()
        else:
            print(f"ok   {path}")
    print(f"replay: {len(paths) - failures} ok, {failures} failed")
    return 1 if failures else 0


def add(target: Target, paths: list[Path]) -> int:
    """Store fixed crashes in the corpus as they are (CI replays them from then on); they must pass now."""
    from tests.fuzz.targets import CRASHES_ROOT

    if replay(target, paths):
        print("add: fix the failures first; nothing was stored")
        return 1
    added = _store(target.corpus, [p.read_bytes() for p in paths], CRASH_PREFIX)
    for path in paths:
        if path.resolve().parent == CRASHES_ROOT:
            path.unlink()
    print(f"add: {added} new input(s) in {_relative(target.corpus)}")
    return 0


def minimize(target: Target) -> int:
    """Rebuild the stored corpus (plus the seeds) as few small inputs covering the same arcs; crashes stay."""
    stored = [p for p in target.corpus_files() if not p.name.startswith(CRASH_PREFIX)]
    crashes = [p.read_bytes() for p in target.corpus_files() if p.name.startswith(CRASH_PREFIX)]
    inputs = [p.read_bytes() for p in stored] + list(target.seeds().values())
    kept = curate(target, inputs, crashes)
    keep_names = {_name(data) for data in kept}
    for path in stored:
        if path.name not in keep_names:
            path.unlink()
    _store(target.corpus, kept)
    print(
        f"minimize: {len(stored) + len(crashes)} -> {len(target.corpus_files())} inputs in {_relative(target.corpus)}"
    )
    return 0


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--engine"]:
        _engine(argv[1:])
        return 0
    targets = _targets()
    parser = argparse.ArgumentParser(prog="tools/fuzz", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("target", nargs="?", choices=sorted(targets), help="what to fuzz")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to fuzz (default 5)")
    parser.add_argument("--work", type=Path, help="keep libFuzzer's working corpus here (default: a temp dir)")
    parser.add_argument("--replay", nargs="*", type=Path, metavar="FILE", help="check FILEs (default: the corpus)")
    parser.add_argument("--add", nargs="+", type=Path, metavar="FILE", help="store fixed crashes in the corpus")
    parser.add_argument("--minimize", action="store_true", help="shrink the stored corpus and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, target in targets.items():
            print(f"{name:13} {len(target.corpus_files()):3} inputs  {target.summary}")
        return 0
    if args.target is None:
        parser.error("name a target (see --list)")
    target = targets[args.target]
    if args.replay is not None:
        return replay(target, args.replay)
    if args.add:
        return add(target, args.add)
    if args.minimize:
        return minimize(target)
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("fuzz: atheris is not installed; run: .venv/bin/pip install -e '.[test]'", file=sys.stderr)
        return 2
    return fuzz(target, args.minutes, args.work)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
