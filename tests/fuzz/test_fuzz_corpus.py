"""The fuzzers' findings, replayed deterministically in CI (a few seconds in all).

Every file under ``corpus/<target>/`` goes through the same invariant checker ``tools/fuzz`` uses, so a
crash that was fixed and whose input was kept stays fixed. A short derandomized hypothesis pass mutates
the corpus a little, to catch a change that breaks an input next to a stored one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings, strategies as st

from tests.fuzz.targets import TARGETS, Target

FUZZ_TOOL = Path(__file__).resolve().parents[2] / "tools" / "fuzz.py"
CASES = [(target, path) for target in TARGETS.values() for path in target.corpus_files()]


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("uwsgirouter_fuzz_tool", FUZZ_TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("target", "path"), CASES, ids=[f"{t.name}/{p.name[:12]}" for t, p in CASES])
def test_corpus_input_keeps_the_invariant(target: Target, path: Path) -> None:
    target.check(path.read_bytes())


@pytest.mark.parametrize("target", TARGETS.values(), ids=list(TARGETS))
def test_corpus_is_small_and_named_by_content(target: Target) -> None:
    tool = _load_tool()
    files = target.corpus_files()
    assert 0 < len(files) <= tool.CORPUS_SOFT_LIMIT
    for path in files:
        data = path.read_bytes()
        assert len(data) <= target.max_len
        assert path.name.removeprefix(tool.CRASH_PREFIX) == hashlib.sha1(data).hexdigest()


@pytest.mark.parametrize("target", TARGETS.values(), ids=list(TARGETS))
def test_seeds_keep_the_invariant(target: Target) -> None:
    for data in target.seeds().values():
        target.check(data)


def _mutated(corpus: list[bytes]) -> st.SearchStrategy[bytes]:
    """A corpus input with a few bytes replaced, inserted or deleted."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(corpus)))
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, len(data)))
            action = draw(st.sampled_from(["replace", "insert", "delete"]))
            byte = draw(st.integers(0, 255))
            if action == "insert" or not data:
                data.insert(pos, byte)
            elif action == "replace":
                data[min(pos, len(data) - 1)] = byte
            else:
                del data[min(pos, len(data) - 1)]
        return bytes(data)

    return mutate()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", TARGETS.values(), ids=list(TARGETS))
def test_mutated_corpus_keeps_the_invariant(target: Target) -> None:
    corpus = [p.read_bytes() for p in target.corpus_files()] or [b""]

    @settings(max_examples=60, derandomize=True, deadline=None, database=None)
    @given(_mutated(corpus))
    def check(data: bytes) -> None:
        target.check(data)

    check()


def test_minimiser_keeps_one_input_per_new_behaviour() -> None:
    tool = _load_tool()
    target = TARGETS["subscription"]
    valid = next(p.read_bytes() for p in sorted(Path(__file__).parents[1].glob("protocol/data/valid/*minimal.bin")))
    kept = tool.curate(target, [valid, valid + b"", b"\x00" * 3, b"\x00" * 2], [])
    # The two short inputs take the same path: one is kept, shrunk to nothing; the valid one is kept too.
    assert b"" in kept and len(kept) == 2


def test_shrink_deletes_what_is_not_needed() -> None:
    tool = _load_tool()
    assert tool.shrink(b"xxAxxBxx", lambda d: b"A" in d and b"B" in d, float("inf")) == b"AB"


def test_list_names_every_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert _load_tool().main(["--list"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == list(TARGETS)
