"""Every command in the README's "Using it" section runs as written after ``make run``.

The test stands in for ``make run`` in a private ``$HSEARCH_HOME``: it fills the ``fashion-mnist``
collection the way the Makefile's ``run`` target does (``ingest fashion-mnist:test``, ``build -k 8 -l 3``)
but with ``--limit 200`` instead of 10k images, to stay fast. Then, from the checkout's root, each line
of the section's ``bash`` blocks runs verbatim: ``.venv/bin/hsearch ...`` lines in this process through
``plugin.cli.main`` (argv split by shlex; loading torch once keeps the test well under a minute), other
lines through bash. Only lines carrying the ``# slow:`` marker are skipped, so a new command is tested
by default. The ``python`` blocks are executed too.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLOW = "# slow:"


def using_it_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block in the "## Using it" section."""
    m = re.search(r"^## Using it\n(.*?)(?=^## )", text, re.S | re.M)
    assert m, 'README.md has no "## Using it" section'
    return re.findall(r"^```(\w+)\n(.*?)^```", m.group(1), re.S | re.M)


def bash_commands(blocks) -> list[str]:
    return [line.strip() for lang, body in blocks if lang == "bash" for line in body.splitlines()
            if line.strip() and not line.strip().startswith("#")]


@pytest.fixture
def after_make_run(tmp_path, monkeypatch):
    """A private $HSEARCH_HOME holding a small `make run` collection; the cwd is the checkout."""
    from plugin.cli import main

    home = tmp_path / "home"
    shared = Path(os.environ["HSEARCH_HOME"]) / "cache" / "embeddings"  # content-addressed: safe to share
    shared.mkdir(parents=True, exist_ok=True)
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "embeddings").symlink_to(shared)
    monkeypatch.setenv("HSEARCH_HOME", str(home))
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.chdir(REPO)
    assert main(["ingest", "fashion-mnist:test", "--limit", "200", "--collection", "fashion-mnist", "-q"]) == 0
    assert main(["build", "--collection", "fashion-mnist", "-k", "8", "-l", "3", "--if-missing"]) == 0
    return home


def test_readme_commands_run_as_written(after_make_run, capsys):
    from plugin.cli import main

    blocks = using_it_blocks((REPO / "README.md").read_text())
    commands = bash_commands(blocks)
    run = [c for c in commands if SLOW not in c]
    assert len(run) >= 6 and len(commands) - len(run) == sum(SLOW in c for c in commands)
    for line in run:
        argv = shlex.split(line, comments=True)
        capsys.readouterr()
        if argv[0] == ".venv/bin/hsearch":
            code = main(argv[1:])
            out = capsys.readouterr()
            assert code == 0, f"{line}\n{out.err}"
            assert "error" not in out.err.lower(), f"{line}\n{out.err}"
        else:
            res = subprocess.run(["bash", "-c", line], cwd=REPO, env=os.environ.copy(), capture_output=True,
                                 text=True, timeout=300)
            assert res.returncode == 0, f"{line}\n{res.stderr}"
    snippets = [body for lang, body in blocks if lang == "python"]
    assert snippets
    for body in snippets:
        exec(compile(body, "README.md", "exec"), {"__name__": "readme"})


def test_the_readme_id_example_is_fashion_mnist_test_0(after_make_run, capsys):
    """The literal id in the README is the one search prints for fashion-mnist:test:0."""
    from plugin.cli import main

    line = next(c for c in bash_commands(using_it_blocks((REPO / "README.md").read_text())) if "--id" in c)
    readme_id = shlex.split(line, comments=True)[-1]
    capsys.readouterr()
    assert main(shlex.split(line, comments=True)[1:] + ["-k", "1"]) == 0
    row = [r.split() for r in capsys.readouterr().out.splitlines() if r.strip()[:1].isdigit()][0]
    assert row[2] == readme_id and row[-1] == "fashion-mnist:test:0"


def test_slow_marker_is_the_only_skip():
    text = "## Using it\n```bash\n.venv/bin/hsearch info   # fine\n.venv/bin/hsearch bench hkm  # slow: long\n```\n## Next\n"
    cmds = bash_commands(using_it_blocks(text))
    assert [c for c in cmds if SLOW not in c] == [".venv/bin/hsearch info   # fine"]
