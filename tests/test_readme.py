"""The READMEs tell the truth about the code: each listing is its script's own code and runs when
pasted into an empty file, each diff is the twin's real difference from its original, and the
budgets that keep the examples short hold."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, Endpoints, Launcher

READMES = {
    name: (ROOT / name).read_text()
    for name in ("README.md", "secure/README.md", "reliable/README.md")
}
LISTING = re.compile(r"<!-- listing: (\S+) (\w+) -->\n```python\n(.*?)```\n", re.DOTALL)
POST_SNIPPET = re.compile(r"<!-- post: (\S+) -->\n```python\n(.*?)```\n", re.DOTALL)
DIFF = re.compile(r"<!-- diff: (\S+) (\S+) -->\n```diff\n(.*?)```\n", re.DOTALL)
LISTINGS = LISTING.findall(READMES["README.md"])
DIFFS = [diff for text in READMES.values() for diff in DIFF.findall(text)]
# The post as the team received it, kept beside the repository (CI's clone has it there too).
BLOG_POST = ROOT.parent / "shared" / "blog-post.txt"
PAIRS = {
    "request-reply": ("server_req_repl.py", "client_req_repl.py"),
    "publish-subscribe": ("server_broadcast.py", "client_broadcast.py"),
    "pipeline": ("server_pipeline.py", "client_pipeline.py"),
}
SCRIPTS = [script for pair in PAIRS.values() for script in pair]
TWINS = sorted(
    str(path.relative_to(ROOT))
    for path in ROOT.glob("*/*.py")
    if path.parent.name in ("secure", "reliable")
)


def definitions(source: str) -> dict[str, ast.stmt]:
    """The top-level functions, classes and constants of a module, by name."""
    found: dict[str, ast.stmt] = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found[node.name] = node
        elif isinstance(node, ast.Assign):
            found.update(
                (target.id, node) for target in node.targets if isinstance(target, ast.Name)
            )
    return found


def listing_of(script: str, function: str) -> str:
    """`function` and every definition of `script` that it uses, as the README lists them: in
    the file's order, each with the comment lines above it, one blank line between them."""
    source = (ROOT / script).read_text()
    lines = source.splitlines()
    defined = definitions(source)
    used, waiting = set(), [function]
    while waiting:
        name = waiting.pop()
        if name not in used:
            used.add(name)
            waiting += [
                node.id
                for node in ast.walk(defined[name])
                if isinstance(node, ast.Name) and node.id in defined
            ]
    blocks = []
    for node in sorted(
        {id(defined[name]): defined[name] for name in used}.values(), key=lambda node: node.lineno
    ):
        first = node.lineno - 1
        while lines[first - 1].lstrip().startswith("#"):
            first -= 1
        blocks.append("\n".join(lines[first : node.end_lineno]))
    constants = [block for block in blocks if not block.lstrip("#").startswith(("def ", "class "))]
    return "\n\n".join(["\n".join(constants), *blocks[len(constants) :]]) + "\n"


def imports_used(script: str, code: str) -> str:
    """The import lines of `script` that `code` needs: what a reader pastes above a listing."""
    names = {node.id for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Name)}
    source = (ROOT / script).read_text()
    lines = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound = {(alias.asname or alias.name).split(".")[0] for alias in node.names}
            if bound & names:
                lines.append(ast.get_source_segment(source, node))
    return "\n".join(line for line in lines if line) + "\n"


def test_each_pattern_has_one_listing_from_its_pair() -> None:
    listed = [script for script, _, _ in LISTINGS]
    assert len(listed) == len(PAIRS)
    for pair in PAIRS.values():
        assert len(set(pair) & set(listed)) == 1, pair


@pytest.mark.parametrize(("script", "function", "listed"), LISTINGS)
def test_each_listing_is_its_scripts_code(script: str, function: str, listed: str) -> None:
    assert listed == listing_of(script, function), (
        f"README.md's listing of {script} differs from the script; it should read:\n"
        + listing_of(script, function)
    )


@pytest.mark.parametrize(("script", "function", "listed"), LISTINGS)
def test_each_listing_is_short_and_shows_every_zeromq_call_of_its_side(
    script: str, function: str, listed: str
) -> None:
    assert len(listed.splitlines()) <= (220 if script == "server_pipeline.py" else 90)
    assert re.search(r"\.socket\(zmq\.(REQ|REP|PUB|SUB|PUSH|PULL)\)", listed)
    assert re.search(r"\.(bind|connect)\(", listed)
    assert re.search(r"\.send(_string|_multipart)?\(", listed)
    assert re.search(r"\.(recv|recv_multipart|recv_string|poll)\(", listed) or "PUB" in listed


@pytest.mark.parametrize(("script", "function", "listed"), LISTINGS)
def test_each_listing_pasted_under_its_imports_has_no_undefined_name(
    tmp_path: Path, script: str, function: str, listed: str
) -> None:
    pasted = tmp_path / "pasted.py"
    pasted.write_text(imports_used(script, listed) + "\n" + listed)
    ruff = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--no-cache",
            "--isolated",
            "--select",
            "F",
            str(pasted),
        ],
        capture_output=True,
        text=True,
    )
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr


# How each listed function is called in a file of its own, and the partner that shows it works.
RUNS = {
    "server_req_repl.py": (
        "serve(argparse.Namespace(bind={tasks!r}))",
        ["client_req_repl.py", "--connect", "{tasks}"],
        r"^Received reply b'STOP\*'$",
    ),
    "server_broadcast.py": (
        "publish(argparse.Namespace(bind={tasks!r}, interval=0.05, count=None))",
        ["client_broadcast.py", "--connect", "{tasks}", "--count", "2"],
        r"^TIME\w{3} ",
    ),
    "client_pipeline.py": (
        "work(argparse.Namespace(name='pasted', connect={tasks!r}, results={results!r}))",
        [
            "server_pipeline.py",
            "--workers",
            "1",
            "--tasks",
            "3",
            "--bind",
            "{tasks}",
            "--results",
            "{results}",
        ],
        r"^  'pasted': 3 tasks$",
    ),
}


@pytest.mark.parametrize(("script", "function", "listed"), LISTINGS)
def test_each_listing_pasted_into_a_file_of_its_own_runs_against_its_partner(
    launch: Launcher, endpoints: Endpoints, tmp_path: Path, script: str, function: str, listed: str
) -> None:
    names = {"tasks": endpoints.ipc("tasks"), "results": endpoints.ipc("results")}
    call, partner, expected = RUNS[script]
    pasted = tmp_path / "pasted.py"
    pasted.write_text(
        imports_used(script, listed)
        + "import argparse\n\n"
        + listed
        + "\n"
        + call.format(**names)
        + "\n"
    )
    listed_process = launch.start([sys.executable, str(pasted)])

    partner_process = launch.script(
        partner[0], *(argument.format(**names) for argument in partner[1:])
    )

    assert partner_process.wait() == 0, partner_process.describe() + listed_process.describe()
    partner_process.expect(expected)


@pytest.mark.skipif(not BLOG_POST.exists(), reason="the blog post's text is not beside this clone")
@pytest.mark.parametrize(("script", "listed"), POST_SNIPPET.findall(READMES["README.md"]))
def test_each_post_snippet_is_the_posts_own(script: str, listed: str) -> None:
    # The post as published lost its indentation: compare the lines without it.
    post = [line.strip() for line in BLOG_POST.read_text().splitlines()]
    snippet = [line.strip() for line in listed.splitlines()]
    start = post.index(f"{label(script)} ({script}):") + 1
    assert post[start : start + len(snippet)] == snippet
    # The snippet is the whole of it: the post's next line is prose or the next heading.
    assert not post[start + len(snippet)].startswith(("s.", "r.", "print", "import"))


def label(script: str) -> str:
    """How the post introduces each script's snippet."""
    return {
        "server_req_repl.py": "Server",
        "client_req_repl.py": "Client",
        "server_broadcast.py": "Publisher",
        "client_broadcast.py": "Subscriber",
        "server_pipeline.py": "Ventilator",
        "client_pipeline.py": "Worker",
    }[script]


def test_every_listing_sits_beside_the_posts_snippet_of_the_same_script() -> None:
    snippets = [script for script, _ in POST_SNIPPET.findall(READMES["README.md"])]
    assert snippets == [script for script, _, _ in LISTINGS]


def unified_diff(original: str, twin: str) -> str:
    result = subprocess.run(
        ["diff", "-u", original, twin], cwd=ROOT, capture_output=True, text=True
    )
    body = result.stdout.splitlines()[2:]
    return "\n".join([f"--- {original}", f"+++ {twin}", *body]) + "\n"


@pytest.mark.parametrize(("original", "twin", "shown"), DIFFS)
def test_each_diff_shown_is_the_twins_real_difference(original: str, twin: str, shown: str) -> None:
    assert shown == unified_diff(original, twin), (
        f"the diff of {twin} shown differs from the files; it should read:\n"
        + unified_diff(original, twin)
    )


def test_each_twin_is_shown_as_a_diff_in_its_folders_readme() -> None:
    for twin in TWINS:
        folder = twin.split("/")[0]
        shown = [diff_twin for _, diff_twin, _ in DIFF.findall(READMES[f"{folder}/README.md"])]
        assert twin in shown, f"{folder}/README.md shows no diff of {twin}"


@pytest.mark.parametrize("twin", TWINS)
def test_each_twin_says_what_it_adds_and_differs_only_by_a_short_diff(twin: str) -> None:
    original = twin.split("/")[1]
    docstring = ast.get_docstring(ast.parse((ROOT / twin).read_text()))
    assert docstring is not None and docstring.startswith(f"Like ../{original}, plus ")
    changed = [
        line for line in unified_diff(original, twin).splitlines()[2:] if line[:1] in ("+", "-")
    ]
    assert len(changed) <= (90 if twin == "reliable/server_pipeline.py" else 60), len(changed)


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_script_reads_in_a_minute(script: str) -> None:
    lines = len((ROOT / script).read_text().splitlines())
    assert lines <= (320 if script == "server_pipeline.py" else 180), lines


def test_the_readme_is_a_guide_not_a_manual() -> None:
    assert len(READMES["README.md"].splitlines()) <= 600


def test_argparse_is_what_the_pasted_listings_call() -> None:
    # The calls in RUNS build the Namespace that main() would pass; this keeps their fields true.
    for script, (call, _, _) in RUNS.items():
        fields = set(re.findall(r"(\w+)=", call))
        source = (ROOT / script).read_text()
        for field in fields:
            assert f'"--{field}"' in source or f'"{field}"' in source, (script, field)
