"""Every example in README.md and docs/*.md runs as shown.

Each fenced ``python`` block is run as a program in a fresh process, in a scratch directory,
unless the line right before its fence says otherwise with a marker::

    <!-- doc-test: continues -->   runs after the file's previous program, as one program
    <!-- doc-test: hub -->         needs a network hub: a real one is started, and the
                                   example's port 7700 becomes its port
    <!-- doc-test: nats -->        needs a NATS cluster: a real one-node cluster is started (with
                                   the authorization service if the example says auth=True), and
                                   the example's list of nats:// servers becomes its own
    <!-- doc-test: fragment -->    part of a larger program (not runnable alone): compiled only
    <!-- doc-test: synopsis -->    a list of signatures, not Python: not run (on a text block:
                                   a usage summary, whose lines are not parsed as commands)
    <!-- doc-test: output -->      (on a text block) what a command prints, not commands

Every ``agentmesh ...``, ``agentmesh-hub ...`` and ``python -m agentmesh.hub_server ...``
command line in the docs' text and shell blocks is parsed by the command's own parser, so a
flag that does not exist (or a missing required one) fails here.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentmesh.cli_parser import build_parser
from agentmesh.hub.cli import _parser as hub_parser
from agentmesh.testing import HubProcess, subprocess_env

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
KINDS = {"run", "continues", "hub", "nats", "fragment", "synopsis", "output"}
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.S | re.M,
)
MARK = re.compile(r"<!--\s*doc-test:\s*(?P<kind>[\w-]+)\s*-->")
EXAMPLE_TIMEOUT = 120.0
COMMANDS = ("agentmesh ", "agentmesh-hub ", "python -m agentmesh.hub_server ")


@dataclass
class Block:
    where: str  # "docs/agents.md:139"
    lang: str
    kind: str
    code: str


def blocks_of(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip().splitlines()
        mark = MARK.fullmatch(before[-1].strip()) if before else None
        line = text.count("\n", 0, m.start()) + 1
        found.append(
            Block(
                where=f"{path.relative_to(ROOT)}:{line}",
                lang=m.group("lang"),
                kind=mark.group("kind") if mark else "run",
                code=textwrap.dedent(m.group("body")),
            )
        )
    return found


ALL_BLOCKS = [block for path in DOCS for block in blocks_of(path)]


def programs() -> list[Block]:
    """The runnable python examples, each with the blocks that continue it appended."""
    runnable: list[Block] = []
    last_in_file: dict[str, Block] = {}
    for block in ALL_BLOCKS:
        if block.lang != "python" or block.kind in ("fragment", "synopsis"):
            continue
        file = block.where.rsplit(":", 1)[0]
        if block.kind == "continues":
            previous = last_in_file.get(file)
            assert previous is not None, f"{block.where}: 'continues' but nothing to continue"
            previous.code += "\n" + block.code
            continue
        program = Block(block.where, block.lang, block.kind, block.code)
        runnable.append(program)
        last_in_file[file] = program
    return runnable


def test_every_marker_is_known_and_every_python_block_is_covered():
    for block in ALL_BLOCKS:
        assert block.kind in KINDS, f"{block.where}: unknown doc-test marker {block.kind!r}"
        python_only = block.kind not in ("run", "synopsis", "output")
        if python_only or block.kind == "output":
            wanted = "python" if python_only else "a text"
            assert (block.lang == "python") == python_only, f"{block.where}: not {wanted} block"
    assert len(programs()) >= 8  # (the finder still finds the examples)


@pytest.mark.parametrize("block", programs(), ids=lambda b: b.where)
def test_python_example_runs_as_shown(block, tmp_path, request):
    code = block.code
    if block.kind == "hub":
        assert "7700" in code, f"{block.where}: a hub example without the port 7700"
        hub = HubProcess(tmp_path / "test-hub.sqlite3").start()
        request.addfinalizer(hub.stop)
        code = code.replace("7700", str(hub.port))
    elif block.kind == "nats":
        pytest.importorskip("nats", reason="the NATS example needs nats-py")
        from agentmesh.nats_cluster import NatsCluster

        authorization = ""
        if "auth=True" in code:  # guarded by the authorization service, as the example says
            from agentmesh.nats_auth_config import AuthKeys, authorization_block

            authorization = authorization_block(AuthKeys.create(tmp_path / "auth-keys"))
        cluster = NatsCluster(tmp_path / "nats", nodes=1, authorization=authorization).start()
        request.addfinalizer(cluster.stop)
        if authorization:
            from agentmesh.nats_auth_process import AuthServiceProcess

            keys, log = tmp_path / "auth-keys", tmp_path / "auth.log"
            service = AuthServiceProcess(cluster.urls, keys, log)
            request.addfinalizer(service.stop)
            service.start()
        servers = re.compile(r"\[\s*\"nats://[^\]]*\]")
        assert servers.search(code), f"{block.where}: a NATS example without a server list"
        code = servers.sub(repr(cluster.urls), code, count=1)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT,
    )
    assert done.returncode == 0, f"{block.where} failed:\n{done.stderr[-3000:]}"


@pytest.mark.parametrize(
    "block",
    [b for b in ALL_BLOCKS if b.lang == "python" and b.kind == "fragment"],
    ids=lambda b: b.where,
)
def test_python_fragment_compiles(block):
    compile(block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def command_lines() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command line of the agentmesh commands in text/shell blocks."""
    found = []
    for block in ALL_BLOCKS:
        if block.lang not in ("", "text", "bash", "sh", "console"):
            continue
        if block.kind in ("synopsis", "output"):
            continue
        for line in block.code.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            for command in line.split("&&"):
                if not command.strip().startswith(COMMANDS):
                    continue
                argv = shlex.split(command, comments=True)
                if argv[:1] in (["agentmesh"], ["agentmesh-hub"]) or argv[:3] == [
                    "python",
                    "-m",
                    "agentmesh.hub_server",
                ]:
                    found.append((block.where, argv))
    return found


@pytest.mark.parametrize("where,argv", command_lines(), ids=lambda v: str(v)[:60])
def test_command_line_in_the_docs_parses(where, argv):
    if argv[0] == "agentmesh":
        args, parser = argv[1:], build_parser()
        if args[:1] == ["hub"]:  # (every flag goes to the hub's own parser)
            args, parser = args[1:], hub_parser()
    elif argv[0] == "agentmesh-hub":
        args, parser = argv[1:], hub_parser()
    else:
        args, parser = argv[3:], hub_parser()
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{where}: {shlex.join(argv)!r} does not parse (exit {exc.code})")


def test_the_command_line_check_finds_the_readme_commands():
    readme = [argv for where, argv in command_lines() if where.startswith("README.md")]
    assert any(argv[:2] == ["agentmesh", "send"] for argv in readme)
    assert any(argv[:1] == ["agentmesh-hub"] for argv in readme)
