"""factory-issue: the git-native issue store's command line (arguments, JSON in and out)."""

from __future__ import annotations

import sys

import click

from . import contracts
from .cli import (CONTEXT_SETTINGS, EXIT_CODES_HELP, EXIT_NO, BadInput, Failed, emit, pretty_option,
                  quiet_option, read_json_lines, repo_option, run_main, say, stdin_is_data)
from .peerdata import MAX_CLOCK_SKEW_SECONDS, MAX_ISSUE_COMMITS

TOOL = "factory-issue"

ISSUE_KEY_ORDER = ("v", "id", "title", "state", "kind", "priority", "labels", "source", "trust",
                   "fingerprint", "attempts", "branch", "claimed_by", "claim_token", "lease", "runs", "depends_on",
                   "not_before", "created", "updated", "body", "comments", "history")


def _store():
    # Imported here so that --help and refused input never pay for git or the store.
    from .gitstore import GitError, NotARepository, Repo
    from .issues import IssueStore
    try:
        return IssueStore(Repo(), warn=lambda m: say(TOOL, m))
    except NotARepository as e:
        raise BadInput(TOOL, str(e))
    except GitError as e:
        raise Failed(TOOL, str(e))


def _ordered(issue: dict) -> dict:
    out = {k: issue[k] for k in ISSUE_KEY_ORDER if k in issue}
    out.update({k: v for k, v in issue.items() if k not in out})
    return out


def _print_issues(issues, pretty: bool):
    if not pretty:
        for i in issues:
            emit(_ordered(i))
        return
    for i in issues:
        labels = ",".join(i["labels"])
        click.echo(f"{i['id']}  {i['state']:<7}  P{i['priority']}  {i['kind']:<9}  {i['title']}"
                   + (f"  [{labels}]" if labels else ""))


def _guard(fn):
    """Turn store errors into the tool's exit codes and messages."""
    from functools import wraps

    @wraps(fn)
    def wrapper(*args, **kwargs):
        from .gitstore import GitError, RefConflict, UnsafeArgument
        from .issues import DamagedIssue, NoSuchIssue, NotClaimable
        try:
            return fn(*args, **kwargs)
        except contracts.ContractError as e:
            raise BadInput(TOOL, f"{e}; nothing was written")
        except UnsafeArgument as e:
            raise BadInput(TOOL, f"{e}; nothing was written")
        except NoSuchIssue as e:
            raise BadInput(TOOL, str(e))
        except (NotClaimable, DamagedIssue) as e:
            raise Failed(TOOL, str(e))
        except RefConflict as e:
            raise Failed(TOOL, f"gave up after repeated write conflicts ({e}); try again")
        except GitError as e:
            raise Failed(TOOL, str(e))
    return wrapper


def _actor(by):
    from .issues import default_actor
    return by or default_actor()


def _lease(store):
    """The lease of a claim made here: held by the process that ran this tool (the
    supervisor, or your shell) until factory-spawn takes it over, and never longer than
    a run's wall budget and a margin (see leases.py)."""
    import os
    from . import config, leases
    try:
        wall = config.load(store.repo.work_tree() or store.repo.git_dir)["budgets"]["wall_seconds"]
    except Exception:  # a config that cannot be read must not stop a claim: the default
        wall = config.DEFAULTS["budgets"]["wall_seconds"]
    return leases.new(wall, pid=os.getppid())


def _ids_from_stdin():
    """Issue ids from JSON lines on stdin: `factory-issue next | factory-issue claim`."""
    ids = []
    for n, obj in read_json_lines(TOOL, sys.stdin, max_line_bytes=contracts.MAX_LINE_BYTES):
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise BadInput(TOOL, f"stdin line {n}: needs an \"id\" field; nothing was written")
        ids.append(obj["id"])
    return ids


def _target_ids(ids):
    if ids:
        return list(ids)
    if stdin_is_data():
        got = _ids_from_stdin()
        if got:
            return got
    raise BadInput(TOOL, "no issue id given (pass ids, or pipe issues in as JSON lines)")


@click.group(context_settings=CONTEXT_SETTINGS, epilog=f"""{EXIT_CODES_HELP}

\b
Examples:
  echo '{{"title": "the parser drops trailing commas", "labels": ["bug"]}}' | factory-issue file
  factory-issue list --state open | jq -r .title
  factory-issue next --kind worker
  factory-issue claim 7f3a && factory-issue update 7f3a --state review --branch factory/7f3a
""")
@click.version_option(package_name="factory", prog_name=TOOL)
def cli():
    """The issue store: issues live under refs/factory/issues/ in the repository, written
    with git plumbing and compare-and-swap, never through a checkout.

    Every verb prints issues as JSON Lines on stdout (one object per line, with at least
    id, title and state; see docs/contracts.md for the whole shape) and messages on stderr.
    An id may be shortened to any unique prefix.
    """


@cli.command("file", context_settings=CONTEXT_SETTINGS, epilog=f"""
\b
Input: one JSON object per line, UTF-8, nested at most {contracts.MAX_JSON_DEPTH} deep. Fields: title
(required, one line, at most {contracts.MAX_TITLE_CHARS} characters, no control characters), body (at most
{contracts.MAX_BODY_BYTES // 1024} KiB; tab, newline and carriage return are its only control characters), labels (list), priority
(0 most urgent .. 4, default 2), fingerprint, source (human, sensor:NAME, adversary:NAME,
peer:NAME), trust (trusted, untrusted; default trusted, but untrusted for peer:NAME),
kind (worker, sensor, adversary; who takes it), depends_on (list of issue ids). Fields
the store sets (id, state, ...) are ignored, so `factory-issue show X | factory-issue
file` copies an issue. An issue from peer:NAME may be trusted only if factory.yaml's
peers.NAME.trust is trusted: trust comes from the config, not from the issue.
Output: one issue per input line, in order.

\b
--dedupe is atomic: an active issue (open, claimed, review) holds its fingerprint as the
ref refs/factory/fingerprints/<sha256 of it>, created in the same transaction that files
the issue and deleted in the one that ends its activity, so of many concurrent filers of
one fingerprint exactly one files. Issues without such a ref (filed by an older factory)
are still found in the listing, and then get their ref.

{EXIT_CODES_HELP}

\b
Examples:
  echo '{{"title": "flaky test in test_io.py", "priority": 1}}' | factory-issue file
  factory-issue file issues.jsonl
  factory-sense tests | factory-issue file --dedupe
""")
@click.argument("files", nargs=-1, type=click.File("rb"))
@click.option("--dedupe", is_flag=True,
              help="Do not file an issue whose fingerprint matches an open, claimed or in-review "
                   "issue (or an earlier line); print that issue instead. Atomic: concurrent "
                   "filers of one fingerprint file it once.")
@click.option("--by", metavar="ACTOR", help="Who files (default: env FACTORY_ACTOR, else human:$USER).")
@repo_option
@pretty_option
@quiet_option
@_guard
def file_cmd(files, dedupe, by, pretty, quiet):
    """File issues read as JSON lines from FILES or stdin, all or none."""
    sources = list(files)
    if not sources:
        if not stdin_is_data():
            raise BadInput(TOOL, "no input: pipe JSON lines in, or name a file (try: factory-issue file --help)")
        sources = [sys.stdin]
    drafts = []
    for src in sources:
        name = "stdin" if src is sys.stdin or getattr(src, "name", "-") in ("-", "<stdin>") else src.name
        for n, obj in read_json_lines(TOOL, src, max_line_bytes=contracts.MAX_LINE_BYTES, name=name):
            try:
                drafts.append(contracts.validate_draft(obj))
            except contracts.ContractError as e:
                raise BadInput(TOOL, f"{name} line {n}: {e}; nothing was written")
    if not drafts:
        raise BadInput(TOOL, "no issues in the input; nothing was written")
    store = _store()
    _check_peer_trust(store.repo, drafts)
    results = store.file(drafts, _actor(by), dedupe=dedupe)
    skipped = sum(1 for _, filed in results if not filed)
    _print_issues([i for i, _ in results], pretty)
    if not quiet:
        say(TOOL, f"filed {len(results) - skipped} issue(s)" + (f", {skipped} duplicate(s) not filed" if skipped else ""))


def _check_peer_trust(repo, drafts):
    """An issue from peer:NAME is trusted only if factory.yaml says so of that peer: a
    draft cannot vouch for itself."""
    claims = [(n, d) for n, d in enumerate(drafts, 1) if d["source"].startswith("peer:") and d["trust"] == "trusted"]
    if not claims:
        return
    from .cli import load_config
    peers = load_config(TOOL, repo)["peers"]
    for n, d in claims:
        name = d["source"][len("peer:"):]
        if peers.get(name, {}).get("trust") != "trusted":
            raise BadInput(TOOL, f"issue {n} ({d['title'][:60]!r}): source {d['source']} claims trust: trusted, "
                                 f"but trust comes from factory.yaml's peers.{name}.trust, which is "
                                 f"{peers[name]['trust'] if name in peers else 'not set'}; file it as "
                                 "untrusted (or set that peer trusted); nothing was written")


def _filter_options(f):
    f = click.option("--where", metavar="JQ", help="Keep issues for which this jq expression is neither false nor null.")(f)
    f = click.option("--kind", type=click.Choice(contracts.KINDS), help="Keep issues for this kind of agent.")(f)
    f = click.option("--source", metavar="SOURCE", help="Keep issues from this source; 'sensor:*' matches every sensor.")(f)
    f = click.option("--label", "labels", multiple=True, metavar="LABEL", help="Keep issues with this label (repeat: all of them).")(f)
    return f


def _filtered(issues, labels=(), source=None, kind=None, where=None, states=()):
    import fnmatch
    if states:
        issues = [i for i in issues if i["state"] in states]
    if labels:
        issues = [i for i in issues if all(lbl in i["labels"] for lbl in labels)]
    if source:
        issues = [i for i in issues if fnmatch.fnmatchcase(i["source"], source)]
    if kind:
        issues = [i for i in issues if i["kind"] == kind]
    if where:
        import jq
        try:
            prog = jq.compile(where)
        except ValueError as e:
            raise BadInput(TOOL, f"--where: not a jq expression: {e}")
        kept = []
        for i in issues:
            try:
                r = prog.input_value(i).first()
            except (ValueError, StopIteration):
                r = None
            if r is not None and r is not False:
                kept.append(i)
        issues = kept
    return issues


@cli.command("list", context_settings=CONTEXT_SETTINGS, epilog=f"""
\b
Output: the matching issues, oldest first, one per line.

{EXIT_CODES_HELP}

\b
Examples:
  factory-issue list | jq .
  factory-issue list --state open --label bug
  factory-issue list --source 'sensor:*' --where '.priority <= 1'
  factory-issue list --where '.labels | index("bug")' | jq -r .id
""")
@click.option("--state", "states", multiple=True, type=click.Choice(contracts.STATES),
              help="Keep issues in this state (repeat for several; default: every state).")
@_filter_options
@click.option("--limit", type=click.IntRange(min=1), help="Print at most this many.")
@repo_option
@pretty_option
@_guard
def list_cmd(states, labels, source, kind, where, limit, pretty):
    """List issues."""
    issues = _filtered(_store().all(), labels, source, kind, where, states)
    _print_issues(issues[:limit] if limit else issues, pretty)


@cli.command("show", context_settings=CONTEXT_SETTINGS, epilog=f"""
\b
Output: each issue with its `history`: every event (filed, claim, set, labels,
comment, runs) with its time and actor, in the order they took effect.

{EXIT_CODES_HELP}

\b
Examples:
  factory-issue show 7f3a
  factory-issue show 7f3a --pretty
  factory-issue next | factory-issue show
""")
@click.argument("ids", nargs=-1)
@click.option("--no-history", is_flag=True, help="Leave out the history of events.")
@repo_option
@pretty_option
@_guard
def show_cmd(ids, no_history, pretty):
    """Show issues whole, by id or unique prefix (or ids piped in as JSON lines)."""
    from .issues import DamagedIssue
    store = _store()
    damaged = 0
    for issue_id in _target_ids(ids):
        try:
            issue = store.get(issue_id)
        except DamagedIssue as e:
            say(TOOL, str(e))  # the rest are still shown
            damaged += 1
            continue
        if not no_history:
            issue["history"] = store.history(issue["id"])
        emit(_ordered(issue), pretty=pretty)
    return EXIT_NO if damaged else 0


@cli.command("next", context_settings=CONTEXT_SETTINGS, epilog="""
\b
Ready means: open, every issue in depends_on done or closed, and not_before passed.
Most urgent first (priority 0 before 4), oldest first among equals. With --claim, the
issue is claimed atomically: of many `next --claim` at once, each gets a different issue.

\b
Exit codes:
  0  an issue was printed
  1  no issue is ready (nothing printed)
  2  usage or bad input

\b
Examples:
  factory-issue next
  factory-issue next --kind worker --claim --by worker:1
  factory-issue next | factory-spawn
""")
@_filter_options
@click.option("--claim", is_flag=True, help="Claim the issue before printing it.")
@click.option("--by", metavar="ACTOR", help="Who claims (default: env FACTORY_ACTOR, else human:$USER).")
@repo_option
@pretty_option
@_guard
def next_cmd(labels, source, kind, where, claim, by, pretty):
    """Print the highest-priority ready issue."""
    from .issues import NotClaimable
    store = _store()
    for issue in store.ready(_filtered(store.all(), labels, source, kind, where)):
        if claim:
            try:
                issue = store.claim(issue["id"], _actor(by), lease=_lease(store))
            except NotClaimable:
                continue  # another claimer won this one; take the next
        _print_issues([issue], pretty)
        return 0
    say(TOOL, "no ready issue")
    return EXIT_NO


@cli.command("claim", context_settings=CONTEXT_SETTINGS, epilog="""
\b
Atomic: of any number of claimers racing for one issue, exactly one wins.
Output: the claimed issue. The claim carries a token (a run under it lands once) and a
lease held by the process that ran this command (your shell, or the supervisor) until
factory-spawn takes it over: once its holder is gone, or after the wall budget and a
margin, the next factory-spawn or `factory start` puts the issue back, uncounted.

\b
Exit codes:
  0  claimed
  1  lost: the issue is not open (claimed by someone else, or finished)
  2  usage or bad input (no such issue)

\b
Examples:
  factory-issue claim 7f3a --by worker:1
  factory-issue next | factory-issue claim
""")
@click.argument("ids", nargs=-1)
@click.option("--by", metavar="ACTOR", help="Who claims (default: env FACTORY_ACTOR, else human:$USER).")
@repo_option
@pretty_option
@_guard
def claim_cmd(ids, by, pretty):
    """Claim open issues (ids, or issues piped in as JSON lines)."""
    store = _store()
    for issue_id in _target_ids(ids):
        _print_issues([store.claim(issue_id, _actor(by), lease=_lease(store))], pretty)


@cli.command("update", context_settings=CONTEXT_SETTINGS, epilog=f"""
\b
With an ID, the options say what changes. Without one, reads patches as JSON lines:
{{"id": ..., FIELD: VALUE, ...}} where FIELD is one of {", ".join(contracts.PATCH_FIELDS)},
or add_labels / remove_labels / add_runs (lists). All patches are checked before any is written.
A branch must be a git branch name (git check-ref-format --branch: no '..', spaces,
control characters, ~ ^ : ? * [ \\, no part starting with '.' or ending in '.lock').
Output: each issue as it stands after the change.

{EXIT_CODES_HELP}

\b
Examples:
  factory-issue update 7f3a --state review --branch factory/7f3a
  factory-issue update 7f3a --label needs-human --unlabel bug --priority 0
  echo '{{"id": "7f3a", "state": "open", "attempts": 1}}' | factory-issue update
""")
@click.argument("issue_id", required=False)
@click.option("--title")
@click.option("--body")
@click.option("--state", type=click.Choice(contracts.STATES))
@click.option("--priority", type=int)
@click.option("--kind", type=click.Choice(contracts.KINDS))
@click.option("--trust", type=click.Choice(contracts.TRUST_LEVELS))
@click.option("--branch")
@click.option("--fingerprint")
@click.option("--not-before", metavar="TIME", help="Not ready before this ISO 8601 time.")
@click.option("--label", "add_labels", multiple=True, help="Add a label (repeatable).")
@click.option("--unlabel", "remove_labels", multiple=True, help="Remove a label (repeatable).")
@click.option("--by", metavar="ACTOR", help="Who changes it (default: env FACTORY_ACTOR, else human:$USER).")
@repo_option
@pretty_option
@_guard
def update_cmd(issue_id, by, pretty, **opts):
    """Change issues."""
    if issue_id:
        raw = {k: v for k, v in opts.items() if v not in (None, ())}
        for k in ("add_labels", "remove_labels"):
            if k in raw:
                raw[k] = list(raw[k])
        if not raw:
            raise BadInput(TOOL, "nothing to change (try: factory-issue update --help)")
        patches = [(issue_id, contracts.validate_patch(raw))]
    else:
        if any(v not in (None, ()) for v in opts.values()):
            raise BadInput(TOOL, "options need an issue id (or pipe patches in as JSON lines)")
        if not stdin_is_data():
            raise BadInput(TOOL, "no issue id given and nothing piped in (try: factory-issue update --help)")
        patches = []
        for n, obj in read_json_lines(TOOL, sys.stdin, max_line_bytes=contracts.MAX_LINE_BYTES):
            if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
                raise BadInput(TOOL, f"stdin line {n}: needs an \"id\" field; nothing was written")
            try:
                patches.append((obj["id"], contracts.validate_patch(obj)))
            except contracts.ContractError as e:
                raise BadInput(TOOL, f"stdin line {n}: {e}; nothing was written")
        if not patches:
            raise BadInput(TOOL, "no patches in the input; nothing was written")
    store = _store()
    resolved = [(store.get(i)["id"], p) for i, p in patches]  # every id exists before any write
    for i, p in resolved:
        _print_issues([store.update(i, p, _actor(by))], pretty)


@cli.command("comment", context_settings=CONTEXT_SETTINGS, epilog=f"""
\b
Comments are kept whole and in order, however many writers comment at once.
Output: the issue after the comment.

{EXIT_CODES_HELP}

\b
Examples:
  factory-issue comment 7f3a -m "reproduced on main"
  pytest 2>&1 | tail -50 | factory-issue comment 7f3a
""")
@click.argument("issue_id")
@click.option("-m", "--message", help="The comment (default: read from stdin).")
@click.option("--by", metavar="ACTOR", help="Who comments (default: env FACTORY_ACTOR, else human:$USER).")
@repo_option
@pretty_option
@_guard
def comment_cmd(issue_id, message, by, pretty):
    """Add a comment to an issue."""
    if message is None:
        if not stdin_is_data():
            raise BadInput(TOOL, "no comment: give -m TEXT or pipe the text in")
        from .cli import read_text
        message = read_text(TOOL, sys.stdin, max_bytes=contracts.MAX_COMMENT_BYTES, what="the comment on stdin")
    text = contracts.validate_comment(message)
    _print_issues([_store().comment(issue_id, text, _actor(by))], pretty)


@cli.command("close", context_settings=CONTEXT_SETTINGS, epilog=f"""
\b
Output: each issue after the change. Closing a closed issue changes nothing.

{EXIT_CODES_HELP}

\b
Examples:
  factory-issue close 7f3a --reason "duplicate of 91bc"
  factory-issue close 7f3a --as done
  factory-issue list --label wontfix | factory-issue close
""")
@click.argument("ids", nargs=-1)
@click.option("--reason", help="Recorded as a comment.")
@click.option("--as", "state", type=click.Choice(["closed", "done", "failed"]), default="closed",
              show_default=True, help="The final state.")
@click.option("--by", metavar="ACTOR", help="Who closes (default: env FACTORY_ACTOR, else human:$USER).")
@repo_option
@pretty_option
@_guard
def close_cmd(ids, reason, state, by, pretty):
    """Close issues (ids, or issues piped in as JSON lines)."""
    if reason is not None:
        contracts.validate_comment(reason)
    store = _store()
    resolved = [store.get(i)["id"] for i in _target_ids(ids)]  # all exist before any write
    for issue_id in resolved:
        _print_issues([store.close(issue_id, _actor(by), reason=reason, state=state)], pretty)


@cli.command("pull", context_settings=CONTEXT_SETTINGS, epilog=f"""
\b
Fetches the objects of the other clone's refs/factory/issues/* under no ref at all (not
even FETCH_HEAD) and checks every issue's whole history before any ref moves: the
ref is an issue id and points at a commit; each commit carries one well-formed event for
that issue (with the limits `file` has); the history starts with its one filed event;
event times never go backwards and are at most {MAX_CLOCK_SKEW_SECONDS} s in the future;
at most {MAX_ISSUE_COMMITS} commits; the issue.json at the tip is the fold of the events.
A bad issue is skipped and reported; all good issues then move in one transaction, so
an interrupted pull moves nothing.

\b
What arrives is untrusted unless --trusted is given (or REMOTE is a peer that factory.yaml
marks trusted): an issue whose new events change trust or source is refused; a new
issue is taken in with our own event setting trust: untrusted and source: peer:NAME
(NAME: the peer's name, else the last part of REMOTE); a trusted issue of ours that it
changed gets our event setting trust: untrusted. Only a trusted pull brings trust.
An issue both sides changed keeps both sides' events (comments, labels, fields; for one
field set on both sides, the later change wins). Only refs/factory/ is written.

\b
REMOTE: a git remote's name, a path, a URL (file://, ssh://, https://, host:path), or the
name of a peer in factory.yaml (its url and trust are used). It may not start with '-'.

\b
Output: one line per issue: {{"id", "title", "state", "merge": new|up-to-date|fast-forward|merged}};
one line per skipped ref: {{"ok": false, "ref", "error"}} (also said on stderr).

\b
Exit codes:
  0  done: every issue was merged or already up to date
  1  some refs were skipped (the good ones were merged), or the fetch failed
  2  usage or bad input (a REMOTE that starts with '-', a bad factory.yaml); nothing was written

\b
Examples:
  factory-issue pull origin
  factory-issue pull --trusted /path/to/my/other/clone
  factory-issue pull libfoo | jq -c 'select(.ok == false)'
  factory-issue pull /path/to/other/clone | jq -r 'select(.merge == "merged") | .id'
""")
@click.argument("remote")
@click.option("--trusted", is_flag=True,
              help="The remote is a clone of this repository's own people: take trust and source "
                   "changes as they come.")
@click.option("--by", metavar="ACTOR", help="Who marks new issues from an untrusted remote "
                                             "(default: env FACTORY_ACTOR, else human:$USER).")
@repo_option
@_guard
def pull_cmd(remote, trusted, by):
    """Merge the issues of another clone (a remote name, path or URL, or a peer) into this one."""
    from .gitstore import check_remote
    check_remote(remote)  # before anything else: such a value never reaches git
    store = _store()
    url, peer = remote, None
    if contracts.SOURCE_RE.match(f"peer:{remote}"):  # could name a peer in factory.yaml
        from .cli import load_config
        peers = load_config(TOOL, store.repo)["peers"]
        if remote in peers:
            url, peer = _peer_url(remote, peers[remote]), remote
            trusted = trusted or peers[remote]["trust"] == "trusted"
    result = store.pull(url, trusted=trusted, peer=peer, actor=_actor(by))
    for issue, how in result.merged:
        emit({"id": issue["id"], "title": issue["title"], "state": issue["state"], "merge": how})
    for ref, error in result.rejected:
        say(TOOL, f"skipped {ref}: {error}")
        emit({"ok": False, "ref": ref, "error": error})
    if result.rejected:
        say(TOOL, f"skipped {len(result.rejected)} issue(s) from {remote}; took the other "
                  f"{len(result.merged)} (fix or remove the skipped refs there, then pull again)")
        return EXIT_NO
    return 0


def _peer_url(name, peer):
    if peer["url"].startswith("github:"):
        if peer["type"] == "github":
            raise BadInput(TOOL, f"peer {name} is a GitHub peer (type: github); its issues come "
                                 "through the GitHub API, which pull does not speak yet")
        return f"https://github.com/{peer['url'][len('github:'):]}.git"
    return peer["url"]


def main() -> int:
    return run_main(cli, TOOL)


if __name__ == "__main__":
    sys.exit(main())
