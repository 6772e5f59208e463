"""What a reader meets first: --help, the docstrings, and a script copied alone."""

from __future__ import annotations

import ast
import functools
import hashlib
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, WAIT, Launcher

PARTNERS = {
    "server_req_repl.py": "client_req_repl.py",
    "client_req_repl.py": "server_req_repl.py",
    "server_broadcast.py": "client_broadcast.py",
    "client_broadcast.py": "server_broadcast.py",
    "server_pipeline.py": "client_pipeline.py",
    "client_pipeline.py": "server_pipeline.py",
}
# The twins stand alone as well: each is a file a reader may copy on its own.
TWINS = sorted(
    str(path.relative_to(ROOT))
    for folder in ("secure", "reliable")
    for path in (ROOT / folder).glob("*.py")
)
DEFAULT_ENDPOINTS = {
    "server_req_repl.py": ["tcp://127.0.0.1:5555"],
    "client_req_repl.py": ["tcp://127.0.0.1:5555"],
    "server_broadcast.py": ["tcp://127.0.0.1:5556"],
    "client_broadcast.py": ["tcp://127.0.0.1:5556"],
    "server_pipeline.py": ["tcp://127.0.0.1:5557", "tcp://127.0.0.1:5558"],
    "client_pipeline.py": ["tcp://127.0.0.1:5557", "tcp://127.0.0.1:5558"],
}


@pytest.mark.parametrize("script", sorted(PARTNERS))
def test_docstring_says_how_to_run_the_partner(script: str) -> None:
    docstring = ast.get_docstring(ast.parse((ROOT / script).read_text()))
    assert docstring is not None
    assert f"uv run {PARTNERS[script]}" in docstring
    for endpoint in DEFAULT_ENDPOINTS[script]:
        assert endpoint in docstring


@pytest.mark.skipif(sys.version_info < (3, 10), reason="needs sys.stdlib_module_names")
@pytest.mark.parametrize("script", sorted(PARTNERS) + TWINS)
def test_scripts_import_only_the_standard_library_and_zmq(script: str) -> None:
    tree = ast.parse((ROOT / script).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported - {"zmq", "__future__"} <= sys.stdlib_module_names


def copy_alone(script: str, elsewhere: Path) -> Path:
    """A copy of `script`, alone in a folder outside the project: the same folder for the same
    contents, in this user's cache. uv keeps an environment for each script's path, so a new
    folder at every run would leave one more environment in uv's cache each time."""
    contents = (ROOT / script).read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = cache / "zeromq-patterns-tests" / hashlib.sha256(contents).hexdigest()[:16]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = elsewhere  # No such folder to be had (a read-only home): a new one, as before.
    copy = folder / Path(script).name
    if not copy.exists():
        # Two runs of the suite at once may both get here: each renames a whole copy into place.
        partial = folder / f"{copy.name}.{os.getpid()}.partial"
        partial.write_bytes(contents)
        os.replace(partial, copy)
    return copy


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not installed")
@pytest.mark.parametrize("script", sorted(PARTNERS) + TWINS)
def test_a_script_copied_alone_runs_with_uv_run_and_its_help_names_the_default_endpoints(
    tmp_path: Path, script: str
) -> None:
    # The inline metadata (PEP 723) brings pyzmq with it, outside this project.
    copy = copy_alone(script, elsewhere=tmp_path)
    result = subprocess.run(
        ["uv", "run", "--quiet", copy.name, "--help"],
        cwd=copy.parent,
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: "), result.stdout
    help_text = " ".join(result.stdout.split())
    for endpoint in DEFAULT_ENDPOINTS[Path(script).name]:
        assert endpoint in help_text


@pytest.mark.parametrize(
    ("script", "arguments", "complaint"),
    [
        ("client_req_repl.py", ["--timeout", "-1"], "--timeout"),
        ("client_req_repl.py", ["--timeout", "0"], "--timeout"),
        ("client_req_repl.py", ["--timeout", "nan"], "--timeout"),
        ("client_broadcast.py", ["--timeout", "-5"], "--timeout"),
        # Our publisher drops a subscriber whose subscription is over 4 KiB: refused at once.
        ("client_broadcast.py", ["--topic", "T" * 4001], "--topic is longer than 4,000 bytes"),
        # Bytes, not characters: 2,001 of them, each two bytes in UTF-8.
        ("client_broadcast.py", ["--topic", "é" * 2001], "--topic is longer than 4,000 bytes"),
        ("server_broadcast.py", ["--interval", "-1"], "--interval"),
        ("server_broadcast.py", ["--interval", "1e10"], "--interval"),
        ("client_broadcast.py", ["--count", "0"], "--count"),
        ("server_broadcast.py", ["--count", "0"], "--count"),
        ("server_pipeline.py", ["--timeout", "0"], "--timeout"),
        ("server_pipeline.py", ["--tasks", "0"], "--tasks"),
        ("server_pipeline.py", ["--workers", "-2"], "--workers"),
        ("server_pipeline.py", ["v" * 201], "NAME is 201 characters long"),
        ("client_pipeline.py", ["w" * 201], "NAME is 201 characters long"),
        ("server_pipeline.py", ["--tasks", "2000000"], "--tasks must be 1 to 1,000,000"),
    ],
)
def test_a_value_that_makes_no_sense_is_refused_with_the_usage(
    launch: Launcher, script: str, arguments: list[str], complaint: str
) -> None:
    process = launch.script(script, *arguments)

    assert process.wait() == 2, process.describe()
    assert process.lines["stderr"][0].startswith("usage: ")
    assert complaint in process.lines["stderr"][-1]
    assert "Traceback" not in process.stderr


# Defined in several scripts, and different on purpose: each script's own entry and options; the
# subscriber's Connection also says why nothing came, where the worker's only says if it is up.
DIFFERENT_ON_PURPOSE = {"main", "parse_arguments", "Connection"}
# Constants the copies depend on; the others (endpoints, size caps) differ on purpose.
SHARED_CONSTANTS = {"PLAIN_DATA_OPCODES", "STOP_SIGNALS", "HANDSHAKE_FAILED"}


@pytest.mark.parametrize("script", sorted(PARTNERS))
def test_helpers_copied_between_scripts_are_identical(script: str) -> None:
    # Each script stands alone, so shared helpers are copies: one fix must reach them all.
    here = top_level_definitions(ROOT / script)
    for other in sorted(set(PARTNERS) - {script}):
        there = top_level_definitions(ROOT / other)
        for name in sorted(set(here) & set(there) - DIFFERENT_ON_PURPOSE):
            assert here[name] == there[name], f"{name} differs between {script} and {other}"


def test_the_copies_checked_are_those_the_scripts_share() -> None:
    # A helper renamed in one script only would drop out of the check above without a word.
    shared = {
        name
        for script, other in itertools.combinations(sorted(PARTNERS), 2)
        for name in set(top_level_definitions(ROOT / script))
        & set(top_level_definitions(ROOT / other))
    }
    assert shared - DIFFERENT_ON_PURPOSE >= {
        "stop",
        "set_listen_backlog_and_keepalive",
        "PLAIN_DATA_OPCODES",
        "STOP_SIGNALS",
    }


@functools.cache
def top_level_definitions(path: Path) -> dict[str, str]:
    """Each top-level function and class of a script, by name, as its source without its
    docstring (which names the script's own peers); each shared constant as its value."""
    source = path.read_text()
    lines = source.splitlines()
    definitions = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            # Whole lines: a top-level statement starts at column 0 and ends its last line.
            numbers = range(node.lineno, (node.end_lineno or node.lineno) + 1)
            docstring: range = range(0)
            if ast.get_docstring(node) is not None:
                first = node.body[0]
                docstring = range(first.lineno, (first.end_lineno or first.lineno) + 1)
            kept = [lines[number - 1] for number in numbers if number not in docstring]
            definitions[node.name] = "\n".join(kept)
        elif (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in SHARED_CONSTANTS
        ):
            # Its value, whatever its layout: a set of names may be wrapped to fit a listing.
            try:
                value = repr(sorted(ast.literal_eval(node.value)))
            except ValueError:
                value = ast.dump(node.value)
            definitions[node.targets[0].id] = value
    return definitions
