"""The agent's tools against a real container, driven through Agent._call as the loop
drives them: the editor (paths, views, edits, line endings, bytes that are not UTF-8,
malformed input) and the bash tool's restart. One container serves the whole module;
each case has files of its own, written and read back through the sandbox's own file
calls, so a case costs a few execs."""

from __future__ import annotations

import os
import secrets

import pytest

from factory import config, images, sandbox
from factory.agent import Agent, Budgets, ContainerGone
from factory.sandbox import Sandbox

RUN = f"t{os.getpid()}-{secrets.token_hex(3)}"
TEST_RECIPE = images.Recipe(name="factory-test-agent", base=config.DEFAULTS["image"]["base"],
                            packages=tuple(config.DEFAULTS["image"]["packages"]), build="auto")
EDIT = "str_replace_based_edit_tool"


@pytest.fixture(scope="module")
def box():
    """(sandbox, sandbox): one container for the module, with an empty /workspace/repo."""
    sb = Sandbox.start(images.ensure_image(TEST_RECIPE), labels={"factory.test": RUN}, cpus=1.0,
                       memory="256m", pids=64, tmp_size="16m", disk="64m", deadline_s=300)
    try:
        sb.exec("mkdir -p /workspace/repo", timeout=10)
        yield sb, sb
    finally:
        sb.remove()
        assert not sandbox.list_containers({"factory.test": RUN}), "a container was left behind"


@pytest.fixture(scope="module")
def agent(box):
    return Agent(model=None, sandbox=box[0], kind="worker", system=[],
                 budgets=Budgets(turns=10, tokens=10**6, cost_usd=1.0, wall_seconds=600))


def put(sb, rel, data: bytes):
    """A file in the repository as the agent would find it (the agent's own)."""
    sb.write_file("/workspace/repo/" + rel, data)


def host(sb, rel) -> bytes | None:
    """The file's bytes as they are in the container, None when there is none."""
    try:
        return sb.read_file("/workspace/repo/" + rel)
    except FileNotFoundError:
        return None


def call(agent, input, name=EDIT) -> tuple[str, bool]:
    r = agent._call({"id": "toolu_" + secrets.token_hex(6), "name": name, "input": input})
    return r["content"], r.get("is_error", False)


def case(id, input, *, files=None, ok=True, has=(), lacks=(), after=None, equals=None):
    """One call on fresh files: `files` {repo path: bytes} before, `after` {repo path:
    bytes or None (absent)} after, and what the result text must hold (`has`), must not
    (`lacks`) or must be exactly (`equals`)."""
    return pytest.param(files or {}, input, ok, has, lacks, after or {}, equals, id=id)


TEN = b"".join(b"line %d\n" % i for i in range(1, 11))
NUMBERED_3 = "     1\tone\n     2\ttwo\n     3\tthree"

CASES = [
    # -- paths ---------------------------------------------------------------------
    case("relative-path", {"command": "view", "path": "rel.txt"}, files={"rel.txt": b"hello\n"},
         equals="     1\thello"),
    case("dot-slash-path", {"command": "str_replace", "path": "./dot.txt", "old_str": "a", "new_str": "b"},
         files={"dot.txt": b"a\n"}, after={"dot.txt": b"b\n"}, has=["/workspace/repo/dot.txt"]),
    case("subdir-relative", {"command": "create", "path": "pkg/../pkg/mod.py", "file_text": "x = 1\n"},
         after={"pkg/mod.py": b"x = 1\n"}, has=["Created /workspace/repo/pkg/mod.py (1 line)"]),
    case("absolute-path", {"command": "view", "path": "/workspace/repo/abs.txt"}, files={"abs.txt": b"abs\n"},
         equals="     1\tabs"),
    case("dotdot-inside-workspace", {"command": "create", "path": "../beside.txt", "file_text": "b\n"},
         has=["Created /workspace/beside.txt"]),
    case("dotdot-escapes", {"command": "view", "path": "../../etc/passwd"}, ok=False,
         has=["resolves to /etc/passwd", "outside /workspace and /tmp",
              "relative paths are taken from /workspace/repo"]),
    case("absolute-dotdot-escapes", {"command": "create", "path": "/workspace/repo/../../etc/x", "file_text": "x"},
         ok=False, has=["outside /workspace and /tmp"]),
    case("absolute-outside", {"command": "view", "path": "/etc/passwd"}, ok=False,
         has=["outside /workspace and /tmp", "did you mean /workspace/repo/etc/passwd?"]),
    case("tilde", {"command": "view", "path": "~/notes.txt"}, ok=False, has=["`~` is not expanded", "/workspace/repo"]),
    case("path-an-int", {"command": "view", "path": 3}, ok=False, has=["`path` must be a string", "got a number: 3"]),
    case("path-missing", {"command": "view"}, ok=False, has=["`path` is missing"]),
    case("path-does-not-exist", {"command": "view", "path": "nope/none.py"}, ok=False,
         has=["/workspace/repo/nope/none.py does not exist", "View /workspace/repo/nope"]),

    case("repo-path-given-relative-again", {"command": "view", "path": "workspace/repo/rel.txt"}, ok=False,
         has=["did you mean /workspace/repo/rel.txt?"]),
    case("workspace-taken-for-repo", {"command": "view", "path": "/workspace/calc.py"}, ok=False,
         has=["did you mean /workspace/repo/calc.py?"]),

    # -- view ----------------------------------------------------------------------
    case("view-directory", {"command": "view", "path": "listing"},
         files={"listing/a.py": b"", "listing/sub/b.py": b"", "listing/sub/deep/c.py": b"", "listing/.git/HEAD": b""},
         equals="/workspace/repo/listing/: files and directories up to 2 levels deep (.git left out):\n"
                "/workspace/repo/listing/a.py\n/workspace/repo/listing/sub/\n"
                "/workspace/repo/listing/sub/b.py\n/workspace/repo/listing/sub/deep/"),
    case("view-file-numbered", {"command": "view", "path": "v1.txt"}, files={"v1.txt": b"one\ntwo\nthree\n"},
         equals=NUMBERED_3),
    case("view-range-to-end", {"command": "view", "path": "v2.txt", "view_range": [2, -1]},
         files={"v2.txt": b"one\ntwo\nthree\n"}, equals="     2\ttwo\n     3\tthree"),
    case("view-range-past-end", {"command": "view", "path": "v3.txt", "view_range": [5, 9]},
         files={"v3.txt": b"one\ntwo\nthree\n"}, ok=False, has=["has 3 lines", "between 1 and 3"]),
    case("view-range-end-clamped", {"command": "view", "path": "v4.txt", "view_range": [2, 10]},
         files={"v4.txt": b"one\ntwo\nthree\n"}, equals="     2\ttwo\n     3\tthree\n[the file ends at line 3]"),
    case("view-range-reversed", {"command": "view", "path": "v5.txt", "view_range": [3, 1]},
         files={"v5.txt": b"one\ntwo\nthree\n"}, ok=False, has=["reversed", "-1"]),
    case("view-range-zero", {"command": "view", "path": "v6.txt", "view_range": [0, 2]},
         files={"v6.txt": b"one\n"}, ok=False, has=["count from 1"]),
    case("view-range-a-string", {"command": "view", "path": "v7.txt", "view_range": "1,2"},
         files={"v7.txt": b"one\n"}, ok=False,
         has=["`view_range` must be a list of two whole numbers [first, last]", "got a string: '1,2'"]),
    case("view-range-on-directory", {"command": "view", "path": "vdir", "view_range": [1, 2]},
         files={"vdir/f": b""}, ok=False, has=["is a directory", "view_range applies to files"]),
    case("view-empty-file", {"command": "view", "path": "empty.txt"}, files={"empty.txt": b""},
         has=["is empty (0 lines)"]),
    case("view-binary", {"command": "view", "path": "bin.dat"}, files={"bin.dat": b"\x7fELF\0\0\x01"}, ok=False,
         has=["looks binary", "bash"]),

    # -- str_replace ---------------------------------------------------------------
    case("replace-no-match", {"command": "str_replace", "path": "r1.py", "old_str": "return a * b", "new_str": "x"},
         files={"r1.py": b"def f(a, b):\n    return a - b\n"}, ok=False,
         has=["old_str was not found in /workspace/repo/r1.py", "nothing changed", "View the file"],
         after={"r1.py": b"def f(a, b):\n    return a - b\n"}),
    case("replace-whitespace-near-miss", {"command": "str_replace", "path": "r2.py",
                                          "old_str": "  return a - b", "new_str": "  return a + b"},
         files={"r2.py": b"def f(a, b):\n\treturn a - b\n"}, ok=False,
         has=["differs only in whitespace", "near line 2"]),
    case("replace-line-numbers-pasted", {"command": "str_replace", "path": "r3.py",
                                         "old_str": "     2\treturn 1", "new_str": "x"},
         files={"r3.py": b"def f():\n    return 1\n"}, ok=False, has=["line numbers of a view"]),
    case("replace-several", {"command": "str_replace", "path": "r4.py", "old_str": "x = 1", "new_str": "x = 2"},
         files={"r4.py": b"x = 1\nx = 1\ny\nx = 1\n"}, ok=False,
         has=["occurs 3 times", "lines 1, 2, 4", "more of the surrounding lines"],
         after={"r4.py": b"x = 1\nx = 1\ny\nx = 1\n"}),
    case("replace-empty-old", {"command": "str_replace", "path": "r5.py", "old_str": "", "new_str": "x"},
         files={"r5.py": b"a\n"}, ok=False, has=["`old_str` is empty", "insert", "create"]),
    case("replace-old-missing", {"command": "str_replace", "path": "r6.py", "new_str": "x"},
         files={"r6.py": b"a\n"}, ok=False, has=["str_replace needs `old_str`"]),
    case("replace-new-an-int", {"command": "str_replace", "path": "r7.py", "old_str": "a", "new_str": 7},
         files={"r7.py": b"a\n"}, ok=False, has=["`new_str` must be a string", "got a number: 7"],
         after={"r7.py": b"a\n"}),
    case("replace-new-missing-deletes", {"command": "str_replace", "path": "r8.py", "old_str": "DELETE ME\n"},
         files={"r8.py": b"a\nDELETE ME\nb\n"}, after={"r8.py": b"a\nb\n"}, has=["     2\tb"]),
    case("replace-shows-snippet", {"command": "str_replace", "path": "r9.txt", "old_str": "line 6\n",
                                   "new_str": "SIX\nsix and a half\n"},
         files={"r9.txt": TEN},
         has=["Edited /workspace/repo/r9.txt. Lines 2-11", "     2\tline 2", "     6\tSIX", "     7\tsix and a half",
              "    11\tline 10"], lacks=["     1\tline 1"]),
    case("replace-on-directory", {"command": "str_replace", "path": "rdir", "old_str": "a", "new_str": "b"},
         files={"rdir/f": b"a\n"}, ok=False, has=["/workspace/repo/rdir is a directory"]),
    case("replace-missing-file", {"command": "str_replace", "path": "nope.py", "old_str": "a", "new_str": "b"},
         ok=False, has=["does not exist"], after={"nope.py": None}),

    # -- create --------------------------------------------------------------------
    case("create-over-existing", {"command": "create", "path": "c1.txt", "file_text": "new\ntext\n"},
         files={"c1.txt": b"old\n"}, after={"c1.txt": b"new\ntext\n"},
         has=["Overwrote /workspace/repo/c1.txt", "4 bytes"]),
    case("create-makes-parents", {"command": "create", "path": "c2/deeper/still/new.txt", "file_text": "n"},
         after={"c2/deeper/still/new.txt": b"n"}, has=["Created"]),
    case("create-no-text", {"command": "create", "path": "c3.txt"}, ok=False,
         has=["create needs `file_text`"], after={"c3.txt": None}),
    case("create-on-directory", {"command": "create", "path": "c4", "file_text": "x"}, files={"c4/f": b"f\n"},
         ok=False, has=["/workspace/repo/c4 is a directory"], after={"c4/f": b"f\n"}),

    # -- insert --------------------------------------------------------------------
    case("insert-at-top", {"command": "insert", "path": "i1.txt", "insert_line": 0, "insert_text": "zero\n"},
         files={"i1.txt": b"one\ntwo\n"}, after={"i1.txt": b"zero\none\ntwo\n"}, has=["     1\tzero"]),
    case("insert-at-end", {"command": "insert", "path": "i2.txt", "insert_line": 2, "insert_text": "three"},
         files={"i2.txt": b"one\ntwo\n"}, after={"i2.txt": b"one\ntwo\nthree\n"}, has=["     3\tthree"]),
    case("insert-in-middle-several-lines", {"command": "insert", "path": "i3.txt", "insert_line": 1,
                                            "insert_text": "a\nb\n"},
         files={"i3.txt": b"one\ntwo\n"}, after={"i3.txt": b"one\na\nb\ntwo\n"}),
    case("insert-past-end", {"command": "insert", "path": "i4.txt", "insert_line": 7, "insert_text": "x"},
         files={"i4.txt": b"one\ntwo\nthree\n"}, ok=False, has=["has 3 lines", "use 0", "3 to insert after the last"]),
    case("insert-new-str-alias", {"command": "insert", "path": "i5.txt", "insert_line": 1, "new_str": "mid\n"},
         files={"i5.txt": b"one\ntwo\n"}, after={"i5.txt": b"one\nmid\ntwo\n"}),
    case("insert-line-a-string", {"command": "insert", "path": "i6.txt", "insert_line": "1", "insert_text": "x"},
         files={"i6.txt": b"one\n"}, ok=False, has=["`insert_line` must be a whole number", "got a string: '1'"]),
    case("insert-no-text", {"command": "insert", "path": "i7.txt", "insert_line": 1},
         files={"i7.txt": b"one\n"}, ok=False, has=["insert needs `insert_text` (or `new_str`)"]),
    case("insert-no-line", {"command": "insert", "path": "i8.txt", "insert_text": "x"},
         files={"i8.txt": b"one\n"}, ok=False, has=["insert needs `insert_line`"]),
    case("insert-keeps-no-final-newline", {"command": "insert", "path": "i9.txt", "insert_line": 2,
                                           "insert_text": "c\n"},
         files={"i9.txt": b"a\nb"}, after={"i9.txt": b"a\nb\nc"}),
    case("insert-into-empty-file", {"command": "insert", "path": "i10.txt", "insert_line": 0, "insert_text": "x\n"},
         files={"i10.txt": b""}, after={"i10.txt": b"x\n"}),

    # -- bytes: tabs, line endings, final newline, not UTF-8 -----------------------
    case("tabs-kept", {"command": "str_replace", "path": "t1.py", "old_str": "\treturn 1", "new_str": "\treturn 2"},
         files={"t1.py": b"def f():\n\treturn 1\n\tpass\n"}, after={"t1.py": b"def f():\n\treturn 2\n\tpass\n"},
         has=["     2\t\treturn 2"]),
    case("crlf-matched-with-lf", {"command": "str_replace", "path": "w1.txt", "old_str": "a\nb", "new_str": "A\nB\nB2"},
         files={"w1.txt": b"a\r\nb\r\nc\r\n"}, after={"w1.txt": b"A\r\nB\r\nB2\r\nc\r\n"}, has=["CRLF"],
         lacks=["\r"]),
    case("crlf-view", {"command": "view", "path": "w2.txt"}, files={"w2.txt": b"one\r\ntwo\r\nthree\r\n"},
         has=[NUMBERED_3 + "\n[the file has CRLF line endings"], lacks=["\r"]),
    case("crlf-insert", {"command": "insert", "path": "w3.txt", "insert_line": 1, "insert_text": "mid\n"},
         files={"w3.txt": b"one\r\ntwo\r\n"}, after={"w3.txt": b"one\r\nmid\r\ntwo\r\n"}),
    case("mixed-endings-exact", {"command": "str_replace", "path": "w4.txt", "old_str": "a\nb", "new_str": "x"},
         files={"w4.txt": b"a\r\nb\nc\n"}, ok=False, has=["mixes CRLF and LF"], after={"w4.txt": b"a\r\nb\nc\n"}),
    case("no-final-newline-kept", {"command": "str_replace", "path": "n1.py", "old_str": "x = 1", "new_str": "x = 2"},
         files={"n1.py": b"y = 0\nx = 1"}, after={"n1.py": b"y = 0\nx = 2"}),
    case("latin1-edit-keeps-bytes", {"command": "str_replace", "path": "l1.txt", "old_str": "name = 1",
                                     "new_str": "name = 2"},
         files={"l1.txt": b"caf\xe9 cr\xe8me\nname = 1\n"}, after={"l1.txt": b"caf\xe9 cr\xe8me\nname = 2\n"},
         has=["caf\ufffd cr\ufffdme", "not valid UTF-8"]),
    case("latin1-view", {"command": "view", "path": "l2.txt"}, files={"l2.txt": b"na\xefve\n"},
         has=["     1\tna\ufffdve", "not valid UTF-8"]),

    # -- malformed calls -----------------------------------------------------------
    case("unknown-command", {"command": "delete", "path": "x"}, ok=False,
         has=["unknown command 'delete'", "view, create, str_replace, insert"]),
    case("undo-edit", {"command": "undo_edit", "path": "x"}, ok=False, has=["undo_edit is not part", "git checkout"]),
    case("command-missing", {"path": "x"}, ok=False, has=["`command` is missing"]),
    case("input-not-an-object", ["view", "x"], ok=False, has=["must be an object"]),
]


@pytest.mark.docker
@pytest.mark.parametrize("files, input, ok, has, lacks, after, equals", CASES)
def test_editor(box, agent, files, input, ok, has, lacks, after, equals):
    ws = box[1]
    for rel, data in files.items():
        put(ws, rel, data)
    text, is_error = call(agent, input)
    assert is_error == (not ok), text
    if equals is not None:
        assert text == equals
    for s in has:
        assert s in text, f"{s!r} not in:\n{text}"
    for s in lacks:
        assert s not in text, f"{s!r} in:\n{text}"
    for rel, data in after.items():
        assert host(ws, rel) == data, rel


@pytest.mark.docker
def test_dotdot_inside_the_workspace_lands_there(box, agent):
    # The table's case says it was created; this one looks where it went.
    call(agent, {"command": "create", "path": "../beside2.txt", "file_text": "b\n"})
    assert box[0].read_file("/workspace/beside2.txt") == b"b\n"


@pytest.mark.docker
def test_tmp_paths_work_and_an_edit_keeps_the_mode(box, agent):
    assert call(agent, {"command": "create", "path": "/tmp/e/x.sh", "file_text": "echo one\n"}) == \
        ("Created /tmp/e/x.sh (1 line).", False)
    assert call(agent, {"command": "view", "path": "/tmp/e/x.sh"}) == ("     1\techo one", False)
    box[0].exec("chmod 755 /tmp/e/x.sh", timeout=10)
    call(agent, {"command": "str_replace", "path": "/tmp/e/x.sh", "old_str": "one", "new_str": "two"})
    r = box[0].exec("/tmp/e/x.sh; stat -c %a /tmp/e/x.sh", timeout=10)
    assert r.output.split() == ["two", "755"]


@pytest.mark.docker
def test_a_large_view_is_cut_with_a_way_to_the_rest(box, agent):
    put(box[1], "big.txt", b"".join(b"%05d\n" % i for i in range(1, 2501)))
    text, is_error = call(agent, {"command": "view", "path": "big.txt"})
    assert not is_error and text.endswith("[showing lines 1-2000 of 2500; view_range [2001, -1] shows more]")
    text, _ = call(agent, {"command": "view", "path": "big.txt", "view_range": [2001, -1]})
    assert text.startswith("  2001\t02001") and text.endswith("  2500\t02500")


@pytest.mark.docker
@pytest.mark.parametrize("input, ok, has", [
    pytest.param({"restart": True}, True, ["restarted", "fresh bash"], id="restart"),
    pytest.param({"restart": True, "command": "pwd"}, True, ["restarted", "/workspace/repo"], id="restart-and-run"),
    pytest.param({}, False, ["bash needs `command`", "restart: true"], id="no-command"),
    pytest.param({"command": 42}, False, ["`command` must be a string", "got int: 42"], id="command-an-int"),
    pytest.param({"command": "  "}, False, ["`command` is empty"], id="command-empty"),
])
def test_bash_tool_input(agent, input, ok, has):
    text, is_error = call(agent, input, name="bash")
    assert is_error == (not ok), text
    for s in has:
        assert s in text, f"{s!r} not in:\n{text}"


@pytest.mark.docker
def test_restart_brings_the_shell_back_to_the_repository(agent):
    assert call(agent, {"command": "cd /tmp"}, name="bash") == ("(no output)", False)
    assert call(agent, {"command": "pwd"}, name="bash")[0] == "/tmp"
    call(agent, {"restart": True}, name="bash")
    assert call(agent, {"command": "pwd"}, name="bash")[0] == "/workspace/repo"


@pytest.mark.docker
def test_an_unknown_tool_names_the_tools(agent):
    assert call(agent, {"command": "ls"}, name="shell") == \
        ("there is no tool named 'shell'; the tools are bash, str_replace_based_edit_tool", True)


class _Broken:
    """A sandbox whose every call fails in a way factory did not foresee."""

    def read_file(self, *a, **k):
        raise RuntimeError("disk on fire")

    exec = write_file = read_file


class _Gone:
    def read_file(self, *a, **k):
        raise sandbox.SandboxGone("container abc has stopped")


def test_a_tool_failure_of_factorys_own_is_an_error_result_not_a_crash():
    a = Agent(model=None, sandbox=_Broken(), kind="worker", system=[],
              budgets=Budgets(turns=1, tokens=1, cost_usd=1, wall_seconds=60))
    text, is_error = call(a, {"command": "view", "path": "x.py"})
    assert is_error and "RuntimeError: disk on fire" in text and "not a fault of your call" in text


def test_a_lost_container_still_ends_the_run():
    a = Agent(model=None, sandbox=_Gone(), kind="worker", system=[],
              budgets=Budgets(turns=1, tokens=1, cost_usd=1, wall_seconds=60))
    with pytest.raises(ContainerGone):
        call(a, {"command": "view", "path": "x.py"})
