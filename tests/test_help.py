"""Every executable and verb documents itself: input, output, exit codes, examples; the
docs pages are generated from that help and must match it."""

from __future__ import annotations

import os

import pytest
from conftest import BIN, ROOT, run_tool

from factory import docs

EXECUTABLES = sorted(n for n in os.listdir(BIN) if n.startswith("factory") and os.access(os.path.join(BIN, n), os.X_OK))


def verbs(tool):
    """Each subcommand's words, subcommands of subcommands too (["image", "build"])."""
    def walk(cmd, path):
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            yield path + [name]
            yield from walk(sub, path + [name])
    return list(walk(docs.tools()[tool], []))


def test_every_executable_is_a_documented_tool():
    assert set(EXECUTABLES) == set(docs.tools()), "bin/ and factory.docs.tools() list the same tools"


@pytest.mark.parametrize("tool", EXECUTABLES)
def test_help_documents_exit_codes_and_examples(tool, tool_env, tmp_path):
    for args in [[tool, "--help"]] + [[tool, *v, "--help"] for v in verbs(tool)]:
        r = run_tool(args, cwd=tmp_path, env=tool_env)
        assert r.returncode == 0, (args, r.stderr)
        assert "Exit codes:" in r.stdout, args
        examples = r.stdout.split("Examples:")[-1]
        assert "Examples:" in r.stdout and tool in examples, args


@pytest.mark.parametrize("tool", EXECUTABLES)
def test_help_does_not_import_the_sdks(tool):
    """--help must stay fast: it never loads the anthropic or docker SDKs."""
    import subprocess
    import sys
    code = (f"import sys; sys.argv=['{tool}', '--help']; sys.path.insert(0, {os.path.join(ROOT, 'lib')!r});"
            "from factory import docs; cmd = docs.tools()[sys.argv[0]];"
            "import contextlib, io;"
            "f = io.StringIO();"
            "exec('with contextlib.redirect_stdout(f):\\n try: cmd.main(standalone_mode=False)\\n except SystemExit: pass');"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('anthropic', 'docker', 'jq')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_docs_pages_match_the_help():
    stale = []
    for path, text in docs.pages(ROOT).items():
        if not os.path.exists(path) or open(path).read() != text:
            stale.append(os.path.relpath(path, ROOT))
    assert not stale, f"regenerate with `just docs`: {stale}"


def test_factory_runs_factory_verb_and_passes_its_exit_code(git_repo, tool_env):
    r = run_tool(["factory", "issue", "next"], cwd=git_repo, env=tool_env)
    assert r.returncode == 1 and "no ready issue" in r.stderr  # factory-issue's own "no"
    r = run_tool(["factory", "issue", "list", "--state", "bogus"], cwd=git_repo, env=tool_env)
    assert r.returncode == 2
    r = run_tool(["factory", "no-such-verb"], cwd=git_repo, env=tool_env)
    assert r.returncode == 127 and "not a factory command" in r.stderr


@pytest.mark.parametrize("stdin", ["not json", '{"kind": "worker"}', '{"kind": "worker", "issue": {"id": "abc"}}',
                                   '{"title": "x", "id": "0123456789ab"}'])
def test_refused_spawn_input_never_loads_the_sdks(stdin, tmp_path):
    """Bad input (the last: a good task outside a repository) is answered before anything
    heavy is imported or any engine is asked."""
    import subprocess
    import sys
    code = (f"import sys, io; sys.path.insert(0, {os.path.join(ROOT, 'lib')!r});"
            f"sys.stdin = io.TextIOWrapper(io.BytesIO({stdin.encode()!r}));"
            "sys.stdin.isatty = lambda: False;"
            "from factory import cmd_spawn; sys.argv = ['factory-spawn'];"
            "rc = cmd_spawn.main();"
            "print(rc, sorted({m.split('.')[0] for m in sys.modules} & {'anthropic', 'docker'}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env=dict(os.environ, ANTHROPIC_API_KEY="sk-ant-test-x"))
    assert r.stdout.strip().splitlines()[-1] == "2 []", r.stdout + r.stderr


def test_every_registered_tool_is_installed_shimmed_and_documented():
    """Adding a tool is a line in registry.TOOLS; this names what else it needs."""
    import tomllib
    from factory import registry
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    for t in registry.TOOLS:
        assert scripts.get(t.name) == f"factory.{t.module}:main", f"pyproject [project.scripts] lacks {t.name}"
        assert t.name in EXECUTABLES, f"bin/{t.name} is missing"
        with open(os.path.join(BIN, t.name)) as f:
            assert f"from factory.{t.module} import main" in f.read(), f"bin/{t.name} runs another module"
        assert os.path.exists(os.path.join(ROOT, "docs", "commands", f"{t.name}.md")), f"no docs page for {t.name}"
    assert set(scripts) == {t.name for t in registry.TOOLS}, "pyproject installs a tool the registry lacks"


def test_every_factory_variable_is_named_once_and_documented():
    import re
    from factory import env
    read = set()
    lib = os.path.join(ROOT, "lib", "factory")
    for name in os.listdir(lib):
        if name.endswith(".py"):
            with open(os.path.join(lib, name)) as f:
                read |= set(re.findall(r"\b(FACTORY_[A-Z_]+)\b", f.read()))
    set_by_slot = {v for v in read if v.startswith("FACTORY_SLOT_")}  # factory-slot sets these
    known = set(env.VARIABLES) | set(env.SET_FOR_CHECKS)
    assert read - set_by_slot <= known, f"read but not in env.VARIABLES: {read - known}"
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert [v for v in known if f"`{v}`" not in readme] == [], "README must name every variable"
