"""Repo.advance_branch: a branch moves by compare-and-swap, and where it is checked out its
work tree moves with it by git's updateInstead rule, or nothing moves at all."""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest

from factory.gitstore import RefConflict, Repo, WorkTreeBusy

MAIN = "refs/heads/main"


def git(repo, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def tree_bytes(top) -> dict[str, bytes]:
    """Every file of a work tree (not .git, a directory or, in a linked one, a file) with its bytes."""
    out = {}
    for d, dirs, files in os.walk(top):
        dirs[:] = [x for x in dirs if x != ".git"]
        for name in files:
            if d == str(top) and name == ".git":
                continue
            path = os.path.join(d, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, top)] = f.read()
    return out


def state(repo, top=None) -> tuple:
    """What must not change when a move is refused: the refs, the index's entries, the files."""
    top = top or repo
    return git(repo, "for-each-ref"), git(top, "ls-files", "-s"), tree_bytes(top)


@pytest.fixture
def ab(tmp_path):
    """A repository on main at commit A (a.txt, keep.txt, clean), and commit B on branch
    `next`: a.txt changed, b.txt added. Returns (repo, A, B)."""
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    (repo / "a.txt").write_text("one\n")
    (repo / "keep.txt").write_text("keep\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "A")
    a = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-qb", "next")
    (repo / "a.txt").write_text("two\n")
    (repo / "b.txt").write_text("new file\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "B")
    b = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")
    assert git(repo, "status", "--porcelain") == ""
    return repo, a, b


# -- a branch nobody has checked out ---------------------------------------------------

def test_a_branch_not_checked_out_moves_and_a_lost_swap_moves_nothing(ab):
    repo, a, b = ab
    git(repo, "branch", "side", a)
    r = Repo(repo)
    assert r.worktrees_on("refs/heads/side") == []
    before = tree_bytes(repo)
    r.advance_branch("refs/heads/side", a, b)
    assert git(repo, "rev-parse", "side") == b
    assert tree_bytes(repo) == before and git(repo, "rev-parse", "main") == a  # main's work tree untouched

    with pytest.raises(RefConflict):
        r.advance_branch("refs/heads/side", a, b)  # it is at b now, not a
    assert git(repo, "rev-parse", "side") == b


def test_a_bare_repository_has_no_work_tree_on_any_branch(ab, tmp_path):
    repo, a, b = ab
    bare = tmp_path / "bare.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
    r = Repo(bare)
    assert r.worktrees_on(MAIN) == []
    r.advance_branch(MAIN, a, b)
    assert git(bare, "rev-parse", "main") == b


# -- a checked-out branch ----------------------------------------------------------------

def test_a_checked_out_clean_branch_moves_with_its_work_tree(ab):
    repo, a, b = ab
    r = Repo(repo)
    assert r.worktrees_on(MAIN) == [str(repo)]
    r.advance_branch(MAIN, a, b)
    assert git(repo, "rev-parse", "HEAD") == b and git(repo, "symbolic-ref", "HEAD") == MAIN
    assert git(repo, "status", "--porcelain") == ""
    assert tree_bytes(repo) == {"a.txt": b"two\n", "b.txt": b"new file\n", "keep.txt": b"keep\n"}


def test_a_file_only_touched_is_not_a_change(ab):
    """git's rule refreshes the index first: a new mtime with the same content is clean."""
    repo, a, b = ab
    os.utime(repo / "keep.txt", (1_000_000_000, 1_000_000_000))
    Repo(repo).advance_branch(MAIN, a, b)
    assert git(repo, "rev-parse", "HEAD") == b and git(repo, "status", "--porcelain") == ""


def test_a_checked_out_branch_not_at_old_is_a_conflict_and_nothing_moves(ab):
    repo, a, b = ab
    before = state(repo)
    with pytest.raises(RefConflict):
        Repo(repo).advance_branch(MAIN, b, a)  # main is at a, not b
    assert state(repo) == before


@pytest.mark.parametrize("path", ["a.txt", "keep.txt"])  # one the move changes, one it does not
def test_a_changed_tracked_file_keeps_ref_and_files_as_they_are(ab, path):
    repo, a, b = ab
    (repo / path).write_text("my own edit\n")
    before = state(repo)
    with pytest.raises(WorkTreeBusy) as e:
        Repo(repo).advance_branch(MAIN, a, b)
    assert str(repo) in str(e.value) and "uncommitted changes" in str(e.value)
    assert e.value.work_tree == str(repo)
    assert state(repo) == before
    assert git(repo, "rev-parse", "main") == a


def test_a_staged_change_keeps_ref_and_files_as_they_are(ab):
    repo, a, b = ab
    (repo / "keep.txt").write_text("staged edit\n")
    git(repo, "add", "keep.txt")
    before = state(repo)
    with pytest.raises(WorkTreeBusy) as e:
        Repo(repo).advance_branch(MAIN, a, b)
    assert str(repo) in str(e.value) and "staged changes" in str(e.value)
    assert state(repo) == before


def test_an_untracked_file_in_the_way_is_left_alone(ab):
    repo, a, b = ab
    (repo / "b.txt").write_text("mine, not yet added\n")  # B adds b.txt
    before = state(repo)
    with pytest.raises(WorkTreeBusy) as e:
        Repo(repo).advance_branch(MAIN, a, b)
    assert str(repo) in str(e.value) and "b.txt" in str(e.value), str(e.value)
    assert state(repo) == before
    assert (repo / "b.txt").read_bytes() == b"mine, not yet added\n"


def test_a_branch_checked_out_in_a_linked_work_tree_moves_that_one(ab, tmp_path):
    repo, a, b = ab
    git(repo, "branch", "feature", a)
    linked = tmp_path / "linked"
    git(repo, "worktree", "add", "-q", str(linked), "feature")
    main_before = state(repo)
    r = Repo(repo)
    assert r.worktrees_on("refs/heads/feature") == [str(linked)]
    r.advance_branch("refs/heads/feature", a, b)
    assert git(linked, "rev-parse", "HEAD") == b and git(linked, "status", "--porcelain") == ""
    assert tree_bytes(linked) == {"a.txt": b"two\n", "b.txt": b"new file\n", "keep.txt": b"keep\n"}
    # the main work tree, on main, is as it was (but for the ref that moved)
    assert state(repo)[1:] == main_before[1:] and git(repo, "rev-parse", "HEAD") == a
    # and from the linked work tree's own git dir the main work tree is found too
    assert Repo(linked).worktrees_on(MAIN) == [str(repo)]


def test_a_dirty_linked_work_tree_holds_its_branch(ab, tmp_path):
    repo, a, b = ab
    git(repo, "branch", "feature", a)
    linked = tmp_path / "linked"
    git(repo, "worktree", "add", "-q", str(linked), "feature")
    (linked / "a.txt").write_text("edit in the linked tree\n")
    before = state(repo, linked)
    with pytest.raises(WorkTreeBusy) as e:
        Repo(repo).advance_branch("refs/heads/feature", a, b)
    assert str(linked) in str(e.value)
    assert state(repo, linked) == before


def test_a_linked_work_tree_whose_directory_is_gone_holds_its_branch(ab, tmp_path):
    repo, a, b = ab
    git(repo, "branch", "feature", a)
    linked = tmp_path / "linked"
    git(repo, "worktree", "add", "-q", str(linked), "feature")
    subprocess.run(["rm", "-rf", str(linked)], check=True)
    with pytest.raises(WorkTreeBusy) as e:
        Repo(repo).advance_branch("refs/heads/feature", a, b)
    assert "git worktree prune" in str(e.value)
    assert git(repo, "rev-parse", "feature") == a


# -- the swap lost after the work tree moved ----------------------------------------------

def test_a_swap_lost_after_the_work_tree_moved_puts_the_work_tree_back(ab, monkeypatch):
    repo, a, b = ab
    r = Repo(repo)
    seen = []

    def lose(updates):
        seen.append(tree_bytes(repo))  # the work tree has moved by now
        raise RefConflict("another writer held the lock")
    monkeypatch.setattr(r, "update_refs", lose)
    with pytest.raises(RefConflict):
        r.advance_branch(MAIN, a, b)
    assert seen and seen[0]["a.txt"] == b"two\n"
    assert git(repo, "rev-parse", "main") == a
    assert git(repo, "status", "--porcelain") == ""
    assert tree_bytes(repo) == {"a.txt": b"one\n", "keep.txt": b"keep\n"}


def test_a_swap_lost_to_the_same_move_leaves_the_work_tree_where_the_branch_is(ab, monkeypatch):
    """Two movers of one branch to one commit: the loser must not take the work tree back
    from under the winner's ref."""
    repo, a, b = ab
    r = Repo(repo)
    real = r.update_refs

    def beaten(updates):
        git(repo, "update-ref", MAIN, b, a)  # the other mover wins first
        real(updates)
    monkeypatch.setattr(r, "update_refs", beaten)
    with pytest.raises(RefConflict):
        r.advance_branch(MAIN, a, b)
    assert git(repo, "rev-parse", "HEAD") == b and git(repo, "status", "--porcelain") == ""


# -- as a normal user ------------------------------------------------------------------------

def test_a_normal_user_moves_their_own_checked_out_branch(normal_user):
    from normaluser import UID, _python, chown_tree
    top = tempfile.mkdtemp(prefix="factory-advance-")
    try:
        os.chmod(top, 0o755)
        repo = os.path.join(top, "repo")
        git(top, "init", "-q", "-b", "main", repo)
        with open(os.path.join(repo, "a.txt"), "w") as f:
            f.write("one\n")
        git(repo, "add", ".")
        git(repo, "commit", "-qm", "A")
        a = git(repo, "rev-parse", "HEAD")
        git(repo, "checkout", "-qb", "next")
        with open(os.path.join(repo, "a.txt"), "w") as f:
            f.write("two\n")
        git(repo, "commit", "-qam", "B")
        b = git(repo, "rev-parse", "HEAD")
        git(repo, "checkout", "-q", "main")
        chown_tree(top)
        code = ("from factory.gitstore import Repo\n"
                f"Repo('.').advance_branch('{MAIN}', '{a}', '{b}')\n")
        p = normal_user.run([_python(), "-c", code], cwd=repo)
        assert p.returncode == 0, p.stderr
        # looked at before any git runs here as root (git status would rewrite the index)
        foreign = [os.path.join(t, n) for t, ds, fs in os.walk(top) for n in ds + fs
                   if os.lstat(os.path.join(t, n)).st_uid != UID]
        assert foreign == [], "everything the move wrote belongs to the user"
        with open(os.path.join(repo, "a.txt")) as f:
            assert f.read() == "two\n"
        as_root = ["-c", f"safe.directory={repo}"]
        assert git(repo, *as_root, "rev-parse", "HEAD") == b
        assert git(repo, *as_root, "status", "--porcelain") == ""
    finally:
        subprocess.run(["rm", "-rf", top])
