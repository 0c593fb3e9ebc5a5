"""The fuzz targets' short run (docs/fuzzing.md): every target replays its whole corpus (seeds
and the regression inputs of bugs the fuzzers found), then Hypothesis mutates the corpus for a
moment. A target may fail only with a ``TrusthookError``; the long runs are ``python -m
tests.fuzz TARGET`` with atheris."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.__main__ import CORPORA, DICTIONARIES, DICTIONARY, main
from tests.fuzz.targets import TARGETS, run_input

MUTATIONS_PER_TARGET = 300
SLOW = {"jwe": 80, "ocicrypt_layer": 80, "http_body": 100, "release_envelope": 150}


def corpus(name: str) -> list[Path]:
    directory = CORPORA / name
    return sorted(directory.iterdir()) if directory.is_dir() else []


def test_every_target_has_a_corpus_and_every_corpus_a_target() -> None:
    assert sorted(p.name for p in CORPORA.iterdir()) == sorted(TARGETS)
    for name in TARGETS:
        assert corpus(name), f"no seeds for {name}: run python -m tests.fuzz.seeds"
    for name in {f for f in DICTIONARY.values() if f} | {"json.dict"}:
        assert (DICTIONARIES / name).is_file()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_the_corpus_replays(name: str, tmp_path: Path) -> None:
    run = TARGETS[name].make(tmp_path)
    for path in corpus(name):
        try:
            run_input(run, path.read_bytes())
        except Exception as e:
            raise AssertionError(f"{name}: {path.name} fails with {type(e).__name__}") from e


@st.composite
def _mutated(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    """A seed with a few byte-level edits, as libFuzzer's mutators make them."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(("flip", "set", "insert", "delete", "repeat", "cut")))
        if edit == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "set" and at < len(data):
            data[at] = draw(st.sampled_from((0, 0x7F, 0x80, 0xFF, ord('"'), ord("\\"), ord("9"))))
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif edit == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 64))] * draw(st.integers(1, 4))
        elif edit == "cut":
            del data[at:]
    return bytes(data)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_mutated_corpus_raises_only_our_errors(name: str, tmp_path: Path) -> None:
    run = TARGETS[name].make(tmp_path)
    seeds = tuple(p.read_bytes() for p in corpus(name))

    @settings(
        max_examples=SLOW.get(name, MUTATIONS_PER_TARGET),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.one_of(_mutated(seeds), st.binary(max_size=256)))
    def check(data: bytes) -> None:
        run_input(run, data)

    check()


def test_the_atheris_runner_fuzzes_a_target(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    dirs = [f"--{d}={tmp_path / d}" for d in ("corpus", "artifacts", "scratch")]
    assert main(["oci_state", "--seconds", "1", "--report", str(report), *dirs]) == 0
    assert json.loads(report.read_text())["executed"] > 0
