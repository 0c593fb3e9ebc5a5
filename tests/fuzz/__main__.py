"""``python -m tests.fuzz TARGET [--seconds N] [--corpus DIR]``: fuzz one target with atheris.

The run is a loop of libFuzzer child processes (``--child``): the child fuzzes with trusthook,
jwcrypto and tomllib instrumented for coverage, starting from the seed corpus in
``tests/fuzz/corpus/TARGET`` and the working corpus ``--corpus`` (where libFuzzer keeps what it
finds; a temporary directory by default: the seed corpus is never written). An exception that
is not a ``TrusthookError`` is a failure: the child saves the input under ``--artifacts`` and
goes on fuzzing; a hang or a crash of the process ends the child, and the parent starts another
for the time left. At the end the parent prints the inputs tried (libFuzzer's
``stat::number_of_executed_units``, summed) and every distinct failure, and with ``--report``
writes them as JSON (docs/fuzzing.md). Exit status 1 if anything failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).parent
CORPORA = HERE / "corpus"
DICTIONARIES = HERE / "dict"
INSTRUMENTED = ["trusthook", "jwcrypto", "tomllib", "tests.fuzz"]
MAX_LEN = 1 << 16
TIMEOUT = 20  # seconds one input may take before libFuzzer calls it a hang
_EXECUTED = re.compile(rb"stat::number_of_executed_units:\s+(\d+)")
_NEW_UNITS = re.compile(rb"stat::new_units_added:\s+(\d+)")
# which libFuzzer dictionary a target gets (tokens of its input language)
DICTIONARY = {
    "config_toml": "toml.dict",
    "server_config_toml": "toml.dict",
    "image_policy_toml": "toml.dict",
    "policy_manifest": "toml.dict",
    "tar_stream": "tar.dict",
    "unpack_layer": "tar.dict",
    "tpms_attest": None,
    "tpmt_signature": None,
    "tpm2b_public": None,
    "layer_blob": None,
    "signed_note": None,
}


def _signature(error: BaseException) -> str:
    """What tells one failure from another: the exception type and where it was raised."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if "/trusthook/" in f.filename] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    return f"{type(error).__name__} at {where}"


def _child(name: str, failures: Path, artifacts: Path, scratch: Path, libfuzzer: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=INSTRUMENTED):
        from tests.fuzz.targets import TARGETS
        from trusthook.errors import TrusthookError

    run = TARGETS[name].make(scratch)
    seen: set[str] = set()

    def one(data: bytes) -> None:
        try:
            run(data)
        except TrusthookError:
            return
        except Exception as e:  # noqa: BLE001 - a finding: record it and fuzz on
            record(_signature(e), e, data)

    def record(signature: str, e: BaseException, data: bytes) -> None:
        if signature in seen:
            return
        seen.add(signature)
        path = artifacts / f"{name}-{hashlib.sha256(data).hexdigest()[:16]}"
        path.write_bytes(data)
        found = {"signature": signature, "error": f"{e!s:.300}", "input": str(path)}
        with failures.open("a") as f:
            f.write(json.dumps(found) + "\n")
        print(f"FAILURE {signature}: {e!s:.200} ({path})", file=sys.stderr, flush=True)

    atheris.Setup([sys.argv[0], *libfuzzer], one)
    atheris.Fuzz()


def _dictionary(name: str) -> list[str]:
    file = DICTIONARY.get(name, "json.dict")
    return [f"-dict={DICTIONARIES / file}"] if file else []


def fuzz(
    name: str, seconds: int, corpus: Path, artifacts: Path, scratch: Path
) -> dict[str, object]:
    """Fuzz ``name`` for ``seconds`` in children; what was tried and what failed."""
    failures = artifacts / "failures.jsonl"
    started = time.monotonic()
    executed = new_units = children = 0
    crashes: list[str] = []
    while (left := round(seconds - (time.monotonic() - started))) > 0:
        children += 1
        command = [
            sys.executable,
            "-m",
            "tests.fuzz",
            "--child",
            name,
            "--failures",
            str(failures),
            "--artifacts",
            str(artifacts),
            "--scratch",
            str(scratch),
            "--",
            str(corpus),
            str(CORPORA / name),
            f"-max_total_time={left}",
            f"-max_len={MAX_LEN}",
            f"-timeout={TIMEOUT}",
            "-rss_limit_mb=3072",
            "-print_final_stats=1",
            f"-artifact_prefix={artifacts}/{name}-",
            *_dictionary(name),
        ]
        began = time.monotonic()
        done = subprocess.run(command, cwd=HERE.parent.parent, stderr=subprocess.PIPE, check=False)
        sys.stderr.buffer.write(done.stderr[-4000:])
        executed += sum(int(n) for n in _EXECUTED.findall(done.stderr))
        new_units += sum(int(n) for n in _NEW_UNITS.findall(done.stderr))
        if done.returncode != 0:  # a hang, an out-of-memory or a crash of the interpreter
            tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-8:]
            crashes.append(f"child exited {done.returncode}: " + " | ".join(tail))
            if time.monotonic() - began < 10:  # not a finding: the child cannot run at all
                break
    found = []
    if failures.exists():
        found = [json.loads(line) for line in failures.read_text().splitlines()]
    return {
        "target": name,
        "seconds": round(time.monotonic() - started),
        "executed": executed,
        "new_units": new_units,
        "children": children,
        "failures": found,
        "process_failures": crashes,
        "corpus": str(corpus),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("target")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--corpus", type=Path, help="working corpus (default: a temporary one)")
    parser.add_argument("--artifacts", type=Path, help="where failing inputs go")
    parser.add_argument("--scratch", type=Path, help="where unpack_layer may write")
    parser.add_argument("--report", type=Path, help="write the result as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--failures", type=Path, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    ours, libfuzzer = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    args = parser.parse_args(ours)
    if args.child:
        _child(args.target, args.failures, args.artifacts, args.scratch, libfuzzer)
        return 0
    from tests.fuzz.targets import TARGETS

    if args.target not in TARGETS:
        parser.error(f"unknown target {args.target!r}; expected one of {', '.join(TARGETS)}")
    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{args.target}-"))
    corpus = args.corpus or work / "corpus"
    artifacts = args.artifacts or work / "artifacts"
    scratch = args.scratch or work / "scratch"
    for directory in (corpus, artifacts, scratch):
        directory.mkdir(parents=True, exist_ok=True)
    result = fuzz(args.target, args.seconds, corpus, artifacts, scratch)
    print(json.dumps(result, indent=1))
    if args.report:
        args.report.write_text(json.dumps(result, indent=1) + "\n")
    return 1 if result["failures"] or result["process_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
