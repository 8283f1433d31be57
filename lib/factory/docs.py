"""docs/commands/*.md, generated from the tools' --help so the two can never disagree.

`python -m factory.docs` rewrites them; a test fails when a page is stale or missing.
"""

from __future__ import annotations

import os
import sys

import click

from . import atomic


def tools() -> dict[str, click.Command]:
    from .registry import TOOLS
    return {t.name: t.cli() for t in TOOLS}


def _help(cmd: click.Command, name: str, parent: click.Context | None = None) -> str:
    settings = dict(cmd.context_settings, terminal_width=100, max_content_width=100)
    ctx = click.Context(cmd, info_name=name, parent=parent, **settings)
    return cmd.get_help(ctx), ctx


def render(name: str, cmd: click.Command) -> str:
    text, ctx = _help(cmd, name)
    return "\n".join([f"# {name}\n", "```", text, "```\n"] + _subcommands(cmd, ctx, name))


def _subcommands(cmd: click.Command, ctx: click.Context, path: str) -> list[str]:
    """A section per subcommand, and per subcommand of those (factory image build)."""
    out = []
    if isinstance(cmd, click.Group):
        for sub in cmd.list_commands(ctx):
            sub_cmd = cmd.get_command(ctx, sub)
            sub_text, sub_ctx = _help(sub_cmd, sub, parent=ctx)
            out += [f"## {path} {sub}\n", "```", sub_text, "```\n"] + _subcommands(sub_cmd, sub_ctx, f"{path} {sub}")
    return out


def pages(root: str) -> dict[str, str]:
    return {os.path.join(root, "docs", "commands", f"{n}.md"): render(n, c) for n, c in tools().items()}


def main() -> int:
    root = sys.argv[1] if len(sys.argv) > 1 else os.getcwd()
    for path, text in pages(root).items():
        atomic.write_text(path, text)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
