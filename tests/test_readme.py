"""The README's listings are the code itself: each pattern function as its script has it, and each
of the post's snippets as the post has it."""

from __future__ import annotations

import ast
import re

import pytest

from conftest import ROOT

README = (ROOT / "README.md").read_text()
CODE_LISTING = re.compile(r"<!-- code: (\S+) (\w+) -->\n```python\n(.*?)```\n", re.DOTALL)
POST_LISTING = re.compile(r"<!-- post: (\S+) -->\n```python\n(.*?)```\n", re.DOTALL)
SCRIPTS = sorted(path.name for path in ROOT.glob("*.py"))
# The post as the team received it, beside the repository: CI's clone has it there too.
BLOG_POST = ROOT.parent / "shared" / "blog-post.txt"
# One screen: about 40 lines.
SCREEN_LINES = 45


def function_source(script: str, name: str) -> str:
    source = (ROOT / script).read_text()
    node = next(
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef) and node.name == name
    )
    return "\n".join(source.splitlines()[node.lineno - 1 : node.end_lineno]) + "\n"


def test_the_readme_lists_one_pattern_function_and_one_post_snippet_per_script() -> None:
    assert sorted(script for script, _, _ in CODE_LISTING.findall(README)) == SCRIPTS
    assert sorted(script for script, _ in POST_LISTING.findall(README)) == SCRIPTS


@pytest.mark.parametrize("script,name,listed", CODE_LISTING.findall(README))
def test_each_listing_is_the_scripts_code(script: str, name: str, listed: str) -> None:
    assert listed == function_source(script, name), f"README's {name} differs from {script}'s"


@pytest.mark.parametrize("script,name,listed", CODE_LISTING.findall(README))
def test_each_pattern_function_fits_on_one_screen(script: str, name: str, listed: str) -> None:
    assert len(listed.splitlines()) <= SCREEN_LINES


@pytest.mark.skipif(not BLOG_POST.exists(), reason=f"the post is not at {BLOG_POST}")
@pytest.mark.parametrize("script,listed", POST_LISTING.findall(README))
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


def test_the_readme_opens_with_a_table_of_contents_that_matches_its_sections() -> None:
    headings = re.findall(r"^## (.+)$", README, re.MULTILINE)
    contents = README.split("\n## ", 1)[0]
    listed = re.findall(r"^\s*- \[(.+?)\]\(#([\w-]+)\)$", contents, re.MULTILINE)
    assert [title for title, _ in listed] == headings
    for title, anchor in listed:
        assert anchor == github_anchor(title)


def github_anchor(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
