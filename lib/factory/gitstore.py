"""The only caller of git: plumbing reads, bulk object writes and compare-and-swap refs.

Everything factory keeps lives in git objects reachable from refs under `refs/factory/`.
Objects are written with one `git fast-import` per write (however many objects), refs
are moved with one `git update-ref --stdin` transaction whose every line names the value
it expects, so a concurrent writer makes the whole transaction fail instead of losing an
update. Reads go through `for-each-ref` and `cat-file --batch`. The number of git
processes per operation is therefore constant, whatever the number of refs.

Nothing here checks out a tree, and one method touches a work tree: advance_branch, when
the branch it moves is checked out in a person's own work tree, updates that work tree
with it by git's own rule for a push to a checked-out branch (updateInstead), or moves
nothing at all.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

ZERO = "0" * 40
# The transports a fetch may use: none of them runs a program named by the URL, as
# ext:: or a remote helper (X::URL, unknown schemes) would.
SAFE_TRANSPORTS = ("file", "ssh", "https", "http", "git")
STALE_LOCK_SECONDS = 30  # a ref lock older than this was left by a killed writer


class GitError(Exception):
    """A git command failed for a reason other than a lost compare-and-swap."""


class RefConflict(Exception):
    """A compare-and-swap lost: some ref was not at the value the transaction expected."""


class NotARepository(GitError):
    pass


class WorkTreeBusy(GitError):
    """A checked-out branch cannot move: its work tree has changes, or a file in the way,
    that moving it would overwrite. Nothing was changed; the message names the work tree
    and what is in the way."""

    def __init__(self, work_tree: str, message: str):
        super().__init__(message)
        self.work_tree = work_tree


def _not_yours(path: str) -> str:
    """Why git refuses a repository that belongs to another user, and what to do."""
    import pwd
    try:
        top = os.path.abspath(path)
        while not os.path.exists(os.path.join(top, ".git")) and os.path.dirname(top) != top:
            top = os.path.dirname(top)
        uid = os.stat(top).st_uid
        try:
            owner = pwd.getpwuid(uid).pw_name
        except KeyError:
            owner = f"uid {uid}"
    except OSError:
        top, owner = path, "another user"
    me = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    return (f"'{top}' belongs to {owner}, not to you ({me}): git refuses another user's repository, "
            f"and factory would leave files in it that its owner cannot change. Run factory as its "
            f"owner (e.g. sudo -u {owner} factory ...); a member of the docker group needs no root")


class UnsafeArgument(ValueError):
    """A value from outside (a user, a config, a peer, an agent) that git could take as an
    option or that carries control characters: refused before any git process starts."""


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def check_arg(value, what: str) -> str:
    """`value` as it may reach git as a rev, remote or path; UnsafeArgument otherwise.

    git reads any argument that starts with '-' as an option (`--upload-pack=CMD` runs
    CMD), so such values are refused here as well as fenced with --end-of-options below:
    one guard for commands that honour it, both for those that do not."""
    if not isinstance(value, str) or not value:
        raise UnsafeArgument(f"{what}: must be a non-empty string")
    if value.startswith("-"):
        raise UnsafeArgument(f"{what} '{value}' starts with '-', which git would take as an option; "
                             f"name it another way (for a path: ./{value})")
    if _CONTROL_RE.search(value):
        raise UnsafeArgument(f"{what} {value!r} holds a control character (newline, NUL, ...); remove it")
    return value


def check_remote(remote) -> str:
    """A remote name, path or URL that is safe to fetch from (see check_arg). `X::ADDRESS`
    asks git for the remote helper git-remote-X (ext:: runs a shell command): refused here
    too, besides the transports `fetch` allows."""
    check_arg(remote, "remote")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*::", remote):
        raise UnsafeArgument(f"remote '{remote}' names a git transport helper (X::...), which runs a "
                             "program; give a path, a remote's name or a file://, ssh:// or https:// URL")
    return remote


@dataclass
class NewCommit:
    """A commit to write: `files` maps a path in its (flat) tree to the file's bytes.

    A parent is a commit id, or an int: the index of an earlier commit in the same batch."""

    files: dict[str, bytes]
    message: str
    parents: list[str | int] = field(default_factory=list)
    when: int | None = None  # unix seconds; now when None


class Repo:
    """A git repository addressed by its git dir; all git calls go through `run`."""

    def __init__(self, path: str | os.PathLike | None = None):
        start = os.fspath(path or os.environ.get("FACTORY_REPO") or os.getcwd())  # env.VARIABLES
        if not os.path.isdir(start):
            raise NotARepository(f"not a git repository: '{start}' is not a directory (run inside one, "
                                 "or set FACTORY_REPO or -C to one)")
        try:
            out = self.run("rev-parse", "--absolute-git-dir", "--path-format=absolute", "--git-common-dir",
                           cwd=start).decode().splitlines()
        except GitError as e:
            if "dubious ownership" in str(e):
                raise NotARepository(_not_yours(start)) from e
            raise NotARepository(f"not a git repository: '{start}' (run inside one, or set FACTORY_REPO)") from e
        self.git_dir = out[0]
        # A linked worktree has a git dir of its own; refs, objects and factory's runtime
        # state (slots, the supervisor's lock) belong to the repository: the common dir.
        self.common_dir = os.path.normpath(out[1])
        self.cwd = start

    def work_tree(self) -> str | None:
        """The top of the work tree, or None for a bare repository."""
        out = self.run("rev-parse", "--show-toplevel", cwd=self.cwd, check=False).decode().strip()
        return out or None

    # -- processes -----------------------------------------------------------------

    @staticmethod
    def run(*args: str, cwd: str | None = None, input: bytes | None = None,
            git_dir: str | None = None, check: bool = True, env: dict | None = None) -> bytes:
        cmd = ["git"]
        if git_dir:
            cmd += ["--git-dir", git_dir]
        cmd += list(args)
        full_env = dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C")
        if env:
            full_env.update(env)
        p = subprocess.run(cmd, cwd=cwd, input=input, capture_output=True, env=full_env)
        if check and p.returncode != 0:
            raise GitError(f"git {args[0]} failed: {p.stderr.decode(errors='replace').strip()}")
        return p.stdout

    def git(self, *args: str, input: bytes | None = None, check: bool = True, env: dict | None = None) -> bytes:
        return self.run(*args, input=input, git_dir=self.git_dir, check=check, env=env)

    # -- reads ---------------------------------------------------------------------

    def refs(self, pattern: str) -> dict[str, str]:
        """Map refname -> object id for refs matching a for-each-ref pattern."""
        return {name: oid for oid, _, name in self.typed_refs(pattern)}

    def typed_refs(self, pattern: str) -> list[tuple[str, str, str]]:
        """(object id, object type, refname) for refs matching a for-each-ref pattern: the
        type comes free with the listing, so a ref to a blob is seen before it is read."""
        out = self.git("for-each-ref", "--format=%(objectname) %(objecttype) %(refname)",
                       "--end-of-options", pattern).decode()
        return [tuple(line.split(" ", 2)) for line in out.splitlines()]

    def resolve(self, ref: str) -> str | None:
        """The commit `ref` names, or None (also for a value git would take as an option)."""
        try:
            check_arg(ref, "rev")
        except UnsafeArgument:
            return None
        out = self.git("rev-parse", "--verify", "-q", "--end-of-options", ref + "^{commit}",
                       check=False).decode().strip()
        return out or None

    def cat_batch(self, specs: list[str]) -> list[tuple[str, str, bytes] | None]:
        """Read many objects in one process: (oid, type, content) per spec, None if missing."""
        if not specs:
            return []
        out = self.git("cat-file", "--batch", input=("\n".join(specs) + "\n").encode())
        results, pos = [], 0
        for _ in specs:
            nl = out.index(b"\n", pos)
            header = out[pos:nl].decode()
            pos = nl + 1
            if header.endswith(" missing") or header.endswith(" ambiguous"):
                results.append(None)
                continue
            oid, kind, size = header.split(" ")
            size = int(size)
            results.append((oid, kind, out[pos:pos + size]))
            pos += size + 1  # content is followed by a newline
        return results

    def cat_batch_check(self, specs: list[str]) -> list[tuple[str, str, int] | None]:
        """(oid, type, size) per spec without reading contents; None if missing."""
        if not specs:
            return []
        out = self.git("cat-file", "--batch-check", input=("\n".join(specs) + "\n").encode()).decode()
        results = []
        for line in out.splitlines():
            parts = line.split(" ")
            if len(parts) == 3 and parts[2].isdigit():
                results.append((parts[0], parts[1], int(parts[2])))
            else:
                results.append(None)
        return results

    def rev_list(self, tips: list[str], *, max_count: int) -> dict[str, list[str]]:
        """commit -> parents for the commits reachable from tips (object ids), at most
        max_count of them; the graph only, no commit is read whole."""
        if not tips:
            return {}
        for t in tips:
            if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", t):
                raise UnsafeArgument(f"rev_list takes object ids, not {t!r}")
        out = self.git("rev-list", "--parents", f"--max-count={max_count}", "--stdin",
                       input=("\n".join(tips) + "\n").encode())
        return {ids[0]: ids[1:] for ids in (line.split() for line in out.decode().splitlines()) if ids}

    def merge_base(self, a: str, b: str) -> str | None:
        """The best common ancestor of two commits, or None when they have none."""
        check_arg(a, "rev")
        check_arg(b, "rev")
        out = self.git("merge-base", "--end-of-options", a, b, check=False).decode().strip()
        return out.split()[0] if out else None

    def log_messages(self, *revs: str) -> list[tuple[str, list[str], str]]:
        """(commit, parents, message) for every commit reachable from revs, newest first."""
        for rev in revs:
            check_arg(rev, "rev")
        out = self.git("log", "--format=%H %P%x00%B%x00", "--end-of-options", *revs, "--").decode()
        entries = []
        for chunk in out.split("\x00\n"):
            if not chunk.strip("\n\x00"):
                continue
            head, _, msg = chunk.lstrip("\n").partition("\x00")
            ids = head.split()
            entries.append((ids[0], ids[1:], msg))
        return entries

    def read_tree(self, rev: str, prefix: str) -> dict[str, bytes]:
        """Every file under `prefix` at `rev` (not the work tree): path -> content."""
        check_arg(rev, "rev")
        out = self.git("ls-tree", "-r", "-z", "--end-of-options", rev, "--", prefix, check=False)
        entries = []
        for item in out.split(b"\0"):
            if not item:
                continue
            meta, _, path = item.partition(b"\t")
            mode, kind, oid = meta.decode().split()
            if kind == "blob" and mode in ("100644", "100755"):
                entries.append((path.decode(errors="replace"), oid))
        blobs = self.cat_batch([oid for _, oid in entries])
        return {path: b[2] for (path, _), b in zip(entries, blobs) if b is not None}

    def is_ancestor(self, a: str, b: str) -> bool:
        check_arg(a, "rev")
        check_arg(b, "rev")
        p = subprocess.run(["git", "--git-dir", self.git_dir, "merge-base", "--is-ancestor",
                            "--end-of-options", a, b], capture_output=True)
        if p.returncode not in (0, 1):
            raise GitError(f"git merge-base failed: {p.stderr.decode(errors='replace').strip()}")
        return p.returncode == 0

    def merge_base(self, a: str, b: str) -> str | None:
        """The best common ancestor of two commits, or None when they share no history."""
        check_arg(a, "rev")
        check_arg(b, "rev")
        p = subprocess.run(["git", "--git-dir", self.git_dir, "merge-base", "--end-of-options", a, b],
                           capture_output=True, env=dict(os.environ, LC_ALL="C"))
        if p.returncode not in (0, 1):
            raise GitError(f"git merge-base failed: {p.stderr.decode(errors='replace').strip()}")
        return p.stdout.decode().strip() or None

    def log_patches(self, base: str, head: str) -> bytes:
        """The patches of the commits in base..head, oldest first, each introduced by a
        line "\\0<commit id>" (a patch line never starts with NUL). Only the object store
        is read: no replace objects, no external diff or textconv program (a repository's
        config could name one), no signature check; binary files are shown as text, so
        what they hold can be scanned; renames are found, so content that only moved is not
        shown as new; a merge shows what differs from every parent (--cc)."""
        return self.git("--no-replace-objects", "-c", "core.quotePath=false", "log", "--reverse",
                        "--format=%x00%H", "-p", "--cc", "-M", "--text", "--root", "--no-ext-diff",
                        "--no-textconv", "--no-color", "--no-relative", "--no-show-signature",
                        "--src-prefix=a/", "--dst-prefix=b/", "--end-of-options", f"{base}..{head}", "--")

    # -- workspaces and bundles ----------------------------------------------------
    # The host runs git in an agent's workspace only before the agent has touched it
    # (the clone). Afterwards only a bundle file crosses back, read in the host's own
    # repository: hooks, core.fsmonitor or filters planted by an agent never run here.

    def clone_for_agent(self, rev: str, dest: str, branch: str) -> str:
        """A fresh clone of `rev` at dest (objects hardlinked: fast, and read-only to the
        agent because ownership of shared files is never handed over), checked out on
        `branch`. Returns the commit it starts from."""
        base = self.resolve(rev)
        if base is None:
            raise GitError(f"'{rev}' is not a commit in {self.git_dir}")
        check_arg(branch, "branch")
        self.run("clone", "-q", "--local", "--no-checkout", "--", self.git_dir, os.path.abspath(dest))
        self.run("-C", dest, "checkout", "-q", "-B", branch, base, "--")
        self.run("-C", dest, "remote", "remove", "origin")  # the host path means nothing inside
        return base

    def unbundle(self, bundle_path: str) -> dict[str, str]:
        """Verify a bundle against this repository and store its objects (no ref moves);
        return the refs it carries (name -> commit)."""
        bundle_path = os.path.abspath(bundle_path)  # `bundle` knows no --end-of-options
        self.git("bundle", "verify", "-q", bundle_path)
        out = self.git("bundle", "unbundle", bundle_path).decode()
        heads = {}
        for line in out.splitlines():
            oid, _, name = line.partition(" ")
            if re.fullmatch(r"[0-9a-f]{40}", oid):
                heads[name] = oid
        return heads

    # -- merges and commits without a work tree -----------------------------------

    def merge_tree(self, base: str, head: str) -> tuple[str | None, list[str]]:
        """What merging head into base gives, computed in the object store alone (`git
        merge-tree --write-tree`; no checkout, no index): (tree, []) when it merges
        cleanly, (None, conflicted paths) when it does not."""
        check_arg(base, "rev")
        check_arg(head, "rev")
        p = subprocess.run(["git", "--git-dir", self.git_dir, "--no-replace-objects", "merge-tree",
                            "--write-tree", "--name-only", "-z", "--no-messages", base, head],
                           capture_output=True, env=dict(os.environ, LC_ALL="C"))
        if p.returncode not in (0, 1):
            raise GitError(f"git merge-tree failed: {p.stderr.decode(errors='replace').strip()}")
        fields = p.stdout.split(b"\0")
        tree = fields[0].decode().strip()
        if p.returncode == 0:
            return tree, []
        return None, sorted({f.decode(errors="replace") for f in fields[1:] if f})

    def commit_tree(self, tree: str, parents: list[str], message: str) -> str:
        """A commit of `tree` with these parents (object ids), by factory's own identity."""
        for oid in [tree, *parents]:
            if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", oid):
                raise UnsafeArgument(f"commit_tree takes object ids, not {oid!r}")
        ident = self._ident().decode()
        name, _, email = ident.partition(" <")
        env = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email.rstrip(">"),
               "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email.rstrip(">")}
        args = ["commit-tree", tree]
        for parent in parents:
            args += ["-p", parent]
        return self.git(*args, input=message.encode(), env=env).decode().strip()

    def commit_files(self, base: str, files: dict[str, bytes | None], message: str) -> str:
        """A new commit on top of `base` whose tree is base's with `files` written (None
        deletes a path): made with a temporary index, so no work tree is touched."""
        base = self.resolve(base) or ""
        if not base:
            raise GitError("commit_files: the base is not a commit")
        fd, index = tempfile.mkstemp(prefix="factory-index-", dir=self.git_dir)
        os.close(fd)
        os.unlink(index)  # read-tree writes it anew
        env = {"GIT_INDEX_FILE": index}
        try:
            self.git("read-tree", base, env=env)
            lines = []
            for path, data in files.items():
                check_arg(path, "path")
                if path.startswith("/") or ".." in path.split("/"):
                    raise UnsafeArgument(f"path {path!r} must be relative and stay inside the tree")
                if data is None:
                    lines.append(f"0 {ZERO}\t{path}")
                else:
                    oid = self.git("hash-object", "-w", "--stdin", input=data).decode().strip()
                    lines.append(f"100644 {oid}\t{path}")
            self.git("update-index", "--index-info", input=("\n".join(lines) + "\n").encode(), env=env)
            tree = self.git("write-tree", env=env).decode().strip()
        finally:
            try:
                os.unlink(index)
            except FileNotFoundError:
                pass
        return self.commit_tree(tree, [base], message)

    def tree_of(self, rev: str) -> str | None:
        """The tree id of a commit, or None."""
        check_arg(rev, "rev")
        out = self.git("rev-parse", "--verify", "-q", "--end-of-options", rev + "^{tree}", check=False)
        return out.decode().strip() or None

    def changed_paths(self, base: str, head: str) -> list[str]:
        """Paths that differ between two commits' trees (renames as a delete and an add)."""
        check_arg(base, "rev")
        check_arg(head, "rev")
        out = self.git("--no-replace-objects", "diff-tree", "-r", "-z", "--name-only", "--no-renames",
                       "--no-ext-diff", "--no-textconv", "--end-of-options", base, head, "--")
        return [p.decode(errors="replace") for p in out.split(b"\0") if p]

    def top_level(self, rev: str) -> list[str]:
        """The names at the top of a commit's tree (files and directories)."""
        return self.tracked_paths(rev, recursive=False)

    def tracked_paths(self, rev: str, recursive: bool = True) -> list[str]:
        """Every file path of a commit's tree (recursive), or the top level's names."""
        check_arg(rev, "rev")
        args = ["ls-tree", "-z", "--name-only"] + (["-r"] if recursive else [])
        # (no "--" after the rev: with --end-of-options and no path, ls-tree would list nothing)
        out = self.git(*args, "--end-of-options", rev, check=False)
        return [p.decode(errors="replace") for p in out.split(b"\0") if p]

    def diffstat(self, base: str, head: str) -> str:
        check_arg(base, "rev")
        check_arg(head, "rev")
        return self.git("--no-replace-objects", "diff-tree", "-r", "--stat", "--no-ext-diff", "--no-textconv",
                        "--no-color", "--end-of-options", base, head, "--").decode(errors="replace")

    # -- other clones --------------------------------------------------------------

    def _remote_config(self) -> list[str]:
        # Only transports that never run a program named by the URL, as ext:: or a remote
        # helper (X::URL, an unknown scheme) would.
        allow = [f"protocol.{p}.allow=always" for p in SAFE_TRANSPORTS]
        return ["-c", "protocol.allow=never", *[x for a in allow for x in ("-c", a)]]

    def remote_refs(self, remote: str, prefix: str) -> dict[str, str]:
        """Another clone's refs under prefix (refname -> object id), read without writing
        anything here. The remote is outside input: checked, and fenced off from options."""
        check_remote(remote)
        out = self.git(*self._remote_config(), "ls-remote", "--end-of-options", remote, prefix + "*").decode()
        refs = {}
        for line in out.splitlines():
            oid, _, name = line.partition("\t")
            if name.startswith(prefix):
                refs[name] = oid
        return refs

    def fetch_objects(self, remote: str, oids: list[str]) -> None:
        """Fetch the objects reachable from oids (tips another clone advertises) and write
        no ref and no FETCH_HEAD: until someone moves a ref to them they are unreachable
        data, which gc keeps for weeks. Received objects are fsck'ed."""
        check_remote(remote)
        if not oids:
            return
        for oid in oids:
            if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", oid):
                raise UnsafeArgument(f"fetch_objects takes object ids, not {oid!r}")
        self.git(*self._remote_config(), "-c", "transfer.fsckObjects=true",
                 "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
                 "--stdin", "--end-of-options", remote, input=("\n".join(oids) + "\n").encode())

    # -- writes --------------------------------------------------------------------

    def write_commits(self, commits: list[NewCommit]) -> list[str]:
        """Write commits (and their blobs and trees) with one fast-import; return their ids.

        No ref is left behind: the scratch branch fast-import needs is reset to nothing
        before it finishes, so the objects exist but only update_refs makes them reachable.
        """
        if not commits:
            return []
        ident = self._ident()
        scratch = f"refs/factory/tmp/{os.getpid()}-{time.monotonic_ns()}"
        chunks: list[bytes] = [b"feature done\n"]
        mark = 0
        commit_marks = []
        for c in commits:
            file_marks = {}
            for path, data in c.files.items():
                mark += 1
                file_marks[path] = mark
                chunks.append(b"blob\nmark :%d\ndata %d\n%s\n" % (mark, len(data), data))
            mark += 1
            commit_marks.append(mark)
            when = int(c.when if c.when is not None else time.time())
            msg = c.message.encode()
            chunks.append(b"reset %s\ncommit %s\nmark :%d\n" % (scratch.encode(), scratch.encode(), mark))
            chunks.append(b"author %s %d +0000\ncommitter %s %d +0000\n" % (ident, when, ident, when))
            chunks.append(b"data %d\n%s\n" % (len(msg), msg))
            for n, p in enumerate(c.parents):
                ref = b":%d" % commit_marks[p] if isinstance(p, int) else p.encode()
                chunks.append(b"%s %s\n" % (b"merge" if n else b"from", ref))
            for path, m in file_marks.items():
                chunks.append(b"M 100644 :%d %s\n" % (m, path.encode()))
            chunks.append(b"\n")
        chunks.append(b"reset %s\ndone\n" % scratch.encode())
        fd, marks_path = tempfile.mkstemp(prefix="factory-marks-", dir=self.git_dir)
        os.close(fd)
        try:
            self.git("-c", "fastimport.unpackLimit=100", "fast-import", "--quiet",
                     f"--export-marks={marks_path}", input=b"".join(chunks))
            with open(marks_path) as f:
                marks = dict(line.split() for line in f if line.strip())
        finally:
            os.unlink(marks_path)
        return [marks[f":{m}"] for m in commit_marks]

    def update_refs(self, updates: list[tuple[str, str, str | None]]) -> None:
        """Move refs atomically, all or none: (ref, new, expected old; None means must not exist).

        Raises RefConflict when any ref is not at its expected value (someone else wrote
        first): the caller re-reads and tries again.
        """
        lines = ["start"]
        for ref, new, old in updates:
            lines.append(f"update {ref} {new} {old or ZERO}")
        lines += ["prepare", "commit", ""]
        payload = "\n".join(lines).encode()
        p = subprocess.run(["git", "--git-dir", self.git_dir, "update-ref", "--stdin"],
                           input=payload, capture_output=True, env=dict(os.environ, LC_ALL="C"))
        if p.returncode == 0:
            return
        err = p.stderr.decode(errors="replace")
        if self._clear_stale_locks(err):
            raise RefConflict(err.strip())
        # git says "cannot lock ref" for every lost swap: a value other than the one
        # expected, a ref that exists (or not) against expectation, a lock held by another.
        if "cannot lock ref" in err:
            raise RefConflict(err.strip())
        raise GitError(f"git update-ref failed: {err.strip()}")

    def _clear_stale_locks(self, err: str) -> bool:
        """A writer killed while holding a ref lock leaves REF.lock behind forever; a lock
        under refs/factory/ older than STALE_LOCK_SECONDS can only be such a leftover."""
        cleared = False
        for path in re.findall(r"'([^']+\.lock)'", err):
            full = path if os.path.isabs(path) else os.path.join(self.git_dir, path)
            rel = os.path.relpath(full, self.git_dir)
            if not rel.startswith("refs/factory/"):
                continue
            try:
                if time.time() - os.path.getmtime(full) > STALE_LOCK_SECONDS:
                    os.unlink(full)
                    cleared = True
            except FileNotFoundError:
                cleared = True
        return cleared

    # -- a branch a person may have checked out -------------------------------------

    def worktrees_on(self, ref: str) -> list[str]:
        """The work trees (the main one and linked ones) that have branch `ref` (a full
        ref, refs/heads/NAME) checked out, as `git worktree list` names them. A bare
        repository's own entry has no branch; a linked work tree whose directory is gone
        is still listed, as git still counts it."""
        check_arg(ref, "ref")
        out = self.git("worktree", "list", "--porcelain", "-z").decode(errors="surrogateescape")
        trees, path = [], None
        for line in out.split("\0"):  # "worktree PATH", then its attributes; "" ends an entry
            key, _, value = line.partition(" ")
            if key == "worktree":
                path = value
            elif key == "branch" and value == ref and path is not None:
                trees.append(path)
        return trees

    def advance_branch(self, ref: str, old: str, new: str) -> None:
        """Move branch `ref` from commit `old` to commit `new` by compare-and-swap
        (RefConflict when it is not at `old`).

        Where the branch is checked out, its work tree moves with it, by git's rule for a
        push to a checked-out branch (receive.denyCurrentBranch=updateInstead): only a
        clean work tree and index are updated from old to new, and the ref moves after
        them, never ahead. WorkTreeBusy, with nothing changed, when a work tree has
        changes or an untracked file stands where the new commit puts one. These are the
        person's own work trees, so git runs in them (-C), not on an agent's files."""
        for oid in (old, new):
            if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", oid or ""):
                raise UnsafeArgument(f"advance_branch takes commit ids, not {oid!r}")
        trees = self.worktrees_on(ref)
        for tree in trees:  # every one is checked before any is touched
            self._check_tree(tree, ref, old, new)
        moved: list[str] = []
        try:
            for tree in trees:
                self._switch_tree(tree, ref, old, new)
                moved.append(tree)
            self.update_refs([(ref, new, old)])
        except BaseException:
            # The ref did not move: each work tree goes back. Unless the ref is at `new` all
            # the same (another mover of the same commit won, or the swap went through as
            # an interrupt came): then the work trees are already where it is.
            if moved and self.resolve(ref) == new:
                raise
            for tree in reversed(moved):
                p = self._in_tree(tree, "read-tree", "-u", "-m", new, old)
                if p.returncode != 0:
                    raise GitError(f"work tree {tree} was updated to {new} but {ref} could not move, and "
                                   f"putting it back failed: {_words(p)}; there, `git status` shows what "
                                   f"differs from {ref}: `git reset --keep {old}` restores it") from None
            raise

    def worktree_busy(self, ref: str) -> str | None:
        """Why branch `ref` could not move with its work tree now (a work tree that has it
        checked out is dirty or missing), or None: advance_branch's checks, without moving
        anything, so a caller can wait before it does costly work towards a move."""
        at = self.resolve(ref)
        if at is None:
            return None
        for tree in self.worktrees_on(ref):
            try:
                self._check_tree(tree, ref, at, at)
            except (WorkTreeBusy, RefConflict) as e:
                return str(e)
        return None

    def _in_tree(self, tree: str, *args: str) -> subprocess.CompletedProcess:
        """git in a person's work tree; the caller reads the exit code."""
        return subprocess.run(["git", "-C", tree, *args], capture_output=True,
                              env=dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C"))

    def _check_tree(self, tree: str, ref: str, old: str, new: str) -> None:
        """RefConflict unless `tree` is on `ref` at `old`; WorkTreeBusy unless it is clean."""
        branch = ref.removeprefix("refs/heads/")
        if not os.path.isdir(tree):
            raise WorkTreeBusy(tree, f"{branch} is checked out in work tree {tree}, which is missing; "
                                     "`git worktree prune` forgets it, then try again")
        on = self._in_tree(tree, "symbolic-ref", "-q", "HEAD").stdout.decode().strip()
        at = self._in_tree(tree, "rev-parse", "--verify", "-q", "HEAD^{commit}").stdout.decode().strip()
        if on != ref or at != old:
            raise RefConflict(f"work tree {tree} is on {on or 'a detached HEAD'} at {at or 'no commit'}, "
                              f"not on {ref} at {old}")
        # git's own up-to-date check (push_to_deploy in builtin/receive-pack.c): refresh the
        # index first, so a file only touched (same content, new mtime) is not a change.
        steps = ((("update-index", "-q", "--ignore-submodules", "--refresh"), None),
                 (("diff-files", "--quiet", "--ignore-submodules", "--"), "uncommitted changes"),
                 (("diff-index", "--quiet", "--cached", "--ignore-submodules", "HEAD", "--"), "staged changes"))
        for args, what in steps:
            p = self._in_tree(tree, *args)
            if p.returncode == 0:
                continue
            if what and p.returncode == 1:
                raise WorkTreeBusy(tree, f"work tree {tree} has {what} (git status shows them); {branch} "
                                         f"moves to {new[:12]} only once it is clean: commit or stash them")
            raise WorkTreeBusy(tree, f"work tree {tree} cannot be checked: git {args[0]}: {_words(p)}")

    def _switch_tree(self, tree: str, ref: str, old: str, new: str) -> None:
        """Update a clean work tree and its index from old to new (a two-tree read-tree:
        it refuses, writing nothing, to overwrite an untracked file or a changed one)."""
        p = self._in_tree(tree, "read-tree", "-u", "-m", old, new)
        if p.returncode != 0:
            raise WorkTreeBusy(tree, f"work tree {tree}: {_words(p)}; {ref.removeprefix('refs/heads/')} "
                                     f"moves to {new[:12]} only once nothing is in the way: move those "
                                     "files elsewhere (or commit them)")

    @staticmethod
    def _ident() -> bytes:
        # Records are factory's, not a person's: who acted is in the record itself. A fixed
        # identity also spares a process per write and works where user.name is unset.
        name = os.environ.get("GIT_COMMITTER_NAME") or "factory"
        email = os.environ.get("GIT_COMMITTER_EMAIL") or "factory@localhost"
        return f"{name} <{email}>".encode()


def _words(p: subprocess.CompletedProcess) -> str:
    """What a failed git said, on one line."""
    text = p.stderr.decode(errors="replace").strip() or f"exit {p.returncode}"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def retry_cas(fn, *, deadline_s: float = 20.0):
    """Run fn until it does not raise RefConflict, backing off with jitter between tries."""
    start = time.monotonic()
    delay = 0.002
    while True:
        try:
            return fn()
        except RefConflict:
            if time.monotonic() - start > deadline_s:
                raise
            time.sleep(delay * (0.5 + int.from_bytes(os.urandom(1), "big") / 255))
            delay = min(delay * 2, 0.1)
