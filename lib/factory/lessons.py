"""Lessons: the principles and prohibitions factory-postmortem writes, one per root cause.

A lesson is a file under intent/principles/ or intent/prohibitions/ whose front matter
names the root cause's fingerprint, the failures it was learned from (`evidence`) and how
often that root cause came back before and after the lesson landed. Its postmortem, under
intent/postmortems/, is written once; a recurrence appends a line to it. So however often
a root cause recurs, every later agent's prompt carries one lesson and one postmortem
for it, and the evidence (which agents never read: intent.layer_text leaves front matter
out) says whether the lesson works.

Lessons land without touching anyone's work: each change is one new commit made in the
object store (gitstore.commit_files), on the branch factory/lesson-<key> where <key> is
the fingerprint's hash, moved by compare-and-swap, with an issue in review (source
postmortem:<key>) that the gate judges and the merge queue (merge: auto) or a person
(merge: manual) lands. Where a lesson is:

- pending: its issue is active and its branch is not merged yet. A recurrence is one
  more commit on that branch: the evidence grows, nothing else changes.
- on main: a recurrence is a commit on main's tip, on the same branch name (recreated
  by compare-and-swap), with the lesson's issue again in review, or a new one when the
  old one is done.
- nowhere: a new lesson, written from a postmortem (postmortem.py), lands the same way.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from . import contracts, intent
from .gitstore import GitError, RefConflict, Repo
from .issues import IssueStore, make_event

SECTIONS = {"principle": "principles", "prohibition": "prohibitions"}
BRANCH_PREFIX = "factory/lesson-"
ISSUE_FINGERPRINT_PREFIX = "lesson:"
LABEL = "lesson"
MAX_ATTEMPTS = 8  # re-plans after losing a race for the lesson's branch to another writer
RECURRENCE_HEADING = "## Recurrences"


def key(fingerprint: str) -> str:
    """12 hex digits naming the root cause in refs, paths and the issue's source."""
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:12]


def branch_for(fingerprint: str) -> str:
    return BRANCH_PREFIX + key(fingerprint)


def issue_fingerprint(fingerprint: str) -> str:
    fp = ISSUE_FINGERPRINT_PREFIX + fingerprint
    if len(fp) > contracts.MAX_FINGERPRINT_CHARS:  # still one per root cause, within the issue's limit
        fp = ISSUE_FINGERPRINT_PREFIX + "sha256:" + hashlib.sha256(fingerprint.encode()).hexdigest()
    return fp


def slug(text: str, limit: int = 48) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())
    out = ""
    for w in words:
        if len(out) + len(w) + 1 > limit:
            break
        out = f"{out}-{w}" if out else w
    return out or "lesson"


# -- reading -----------------------------------------------------------------------------

@dataclass
class Lesson:
    path: str
    meta: dict
    body: str

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def kind(self) -> str:
        return "prohibition" if self.path.startswith(f"{intent.INTENT_DIR}/prohibitions/") else "principle"

    @property
    def title(self) -> str:
        for line in self.body.splitlines():
            if line.startswith("# "):
                return line[2:].strip()
        return self.path

    def text(self) -> str:
        return intent.with_front_matter(self.meta, self.body)


def lessons_in(files: dict[str, bytes]) -> list[Lesson]:
    """Every lesson among `files` (path -> bytes, as Repo.read_tree gives them): the
    principles and prohibitions whose front matter names a fingerprint. A file whose
    front matter cannot be read is no lesson (a person's file, not ours to judge)."""
    out = []
    for path in sorted(files):
        if not path.endswith(".md") or not any(path.startswith(f"{intent.INTENT_DIR}/{s}/")
                                               for s in SECTIONS.values()):
            continue
        try:
            meta, body = intent.front_matter(files[path].decode("utf-8"))
        except (intent.FrontMatterError, UnicodeDecodeError):
            continue
        if isinstance(meta.get("fingerprint"), str):
            out.append(Lesson(path, meta, body))
    return out


def find(files: dict[str, bytes], fingerprint: str) -> Lesson | None:
    for lesson in lessons_in(files):
        if lesson.fingerprint == fingerprint:
            return lesson
    return None


def evidence_of(lesson: Lesson) -> list[dict]:
    ev = lesson.meta.get("evidence")
    return [e for e in ev if isinstance(e, dict)] if isinstance(ev, list) else []


def count(lesson: Lesson, name: str) -> int:
    v = lesson.meta.get(name)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


@dataclass
class Where:
    """Where a root cause's lesson stands now, and what its next change goes on top of.
    Whatever changes is then moved only from the branch_tip read here: a writer who
    moved the branch since (say, to write this very lesson) makes the move fail."""
    lesson: Lesson | None         # None: no lesson yet
    files: dict[str, bytes]       # intent/ at `tip`
    tip: str | None               # the commit the next change goes on top of
    branch_tip: str | None        # the lesson branch's commit as read (None: no such branch)
    pending: bool                 # on its branch, not on main yet
    issue: dict | None            # the lesson's active issue, if any


def active_issue(store: IssueStore, fingerprint: str) -> dict | None:
    fp = issue_fingerprint(fingerprint)
    for i in store.all():
        if i.get("fingerprint") == fp and i["state"] in contracts.ACTIVE_STATES:
            return i
    return None


def locate(repo: Repo, store: IssueStore, fingerprint: str, main_ref: str) -> Where:
    """The root cause's lesson: pending on its branch (its issue active, the branch not
    merged), else on main, else none (lesson None)."""
    branch = branch_for(fingerprint)
    btip = repo.resolve("refs/heads/" + branch)
    main = repo.resolve(main_ref)
    issue = active_issue(store, fingerprint)
    if btip and issue and issue.get("branch") == branch and not (main and repo.is_ancestor(btip, main)):
        files = repo.read_tree(btip, intent.INTENT_DIR + "/")
        lesson = find(files, fingerprint)
        if lesson:
            return Where(lesson, files, btip, btip, True, issue)
    if main:
        files = repo.read_tree(main, intent.INTENT_DIR + "/")
        lesson = find(files, fingerprint)
        if lesson:
            return Where(lesson, files, main, btip, False, issue)
    return Where(None, {}, main, btip, False, issue)


def recurrence(repo: Repo, lesson: Lesson, started_from: str | None) -> str:
    """"after" when the commit the failed agent started from already held the lesson (it
    was in that agent's prompt), else "before"."""
    if not started_from:
        return "before"
    files = repo.read_tree(started_from, lesson.path)
    return "after" if find(files, lesson.fingerprint) else "before"


# -- changing ----------------------------------------------------------------------------

@dataclass
class NewLesson:
    """A lesson to write, with its postmortem (postmortem.py makes both)."""
    fingerprint: str
    kind: str                     # principle | prohibition
    title: str
    text: str
    check: str | None
    factual: bool
    postmortem_title: str
    postmortem_body: str          # the postmortem's sections, markdown, without front matter
    postmortem_meta: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)  # for the issue: why a check was dropped, ...


@dataclass
class Result:
    lesson: Lesson
    postmortem: str               # its path
    new_lesson: bool
    recurrence: str | None        # None for a new lesson; "before" / "after" for a recurrence
    branch: str | None
    commit: str | None            # the lesson branch's new commit (None: nothing written)
    issue: str | None             # the lesson's issue id
    seen: bool = False            # this evidence was recorded before: nothing was written


class _Replan(Exception):
    """Another writer moved the lesson's branch since it was read: look again."""


def record(repo: Repo, store: IssueStore, fingerprint: str, evidence: dict, *, main_ref: str,
           actor: str, write_new=None, started_from: str | None = None) -> Result | None:
    """Add `evidence` (a failure: run, record, issue, head, base, at) to the root cause's
    lesson; where there is none yet, call write_new() for a NewLesson and land that
    (None when write_new is None). Safe against concurrent writers: every move is a
    compare-and-swap, and a lost one looks again (another writer may have just
    written the lesson this evidence now joins)."""
    new = None
    for _ in range(MAX_ATTEMPTS):
        where = locate(repo, store, fingerprint, main_ref)
        try:
            if where.lesson is not None:
                return _add(repo, store, where, evidence, started_from, actor)
            if write_new is None:
                return None
            if new is None:
                new = write_new()  # at most once: a model's postmortem costs money
            return _create(repo, store, new, evidence, where, main_ref, actor)
        except (_Replan, RefConflict):
            continue
    raise RefConflict(f"gave up after {MAX_ATTEMPTS} write conflicts on {branch_for(fingerprint)}; try again")


def _add(repo, store, where: Where, evidence: dict, started_from, actor) -> Result:
    lesson = where.lesson
    pm_path = lesson.meta.get("postmortem") if isinstance(lesson.meta.get("postmortem"), str) else None
    branch = branch_for(lesson.fingerprint)
    known = evidence_of(lesson)
    if evidence.get("run") and any(e.get("run") == evidence["run"] for e in known):
        return Result(lesson, pm_path, False, None, branch if where.pending else None, None,
                      where.issue["id"] if where.issue else None, seen=True)
    rec = recurrence(repo, lesson, started_from)
    meta = dict(lesson.meta)
    meta["evidence"] = known + [{**evidence, "recurrence": rec}]
    name = f"recurrences_{rec}"
    meta[name] = count(lesson, name) + 1
    updated = Lesson(lesson.path, _ordered(meta), lesson.body)
    files = {lesson.path: updated.text().encode()}
    if pm_path and pm_path in where.files:
        files[pm_path] = _with_recurrence(where.files[pm_path].decode("utf-8", errors="replace"),
                                          evidence, rec).encode()
    msg = (f"Lesson: {lesson.title}: recurrence {rec} it landed (run {evidence.get('run') or '-'})\n\n"
           f"Fingerprint: {lesson.fingerprint}\n")
    commit = repo.commit_files(where.tip, files, msg)
    ref = "refs/heads/" + branch
    if where.pending:  # only the branch moves: its issue is in review already
        repo.update_refs([(ref, commit, where.branch_tip)])
        issue_id = where.issue["id"]
    else:
        comment = (f"The root cause of this lesson recurred {rec} the lesson landed: "
                   f"{_describe(evidence)}. {branch} adds this evidence to {lesson.path}.")
        issue_id = _land(repo, store, lesson, branch, commit, where.branch_tip, comment, actor,
                         body=_issue_body(updated, pm_path, []))
    return Result(updated, pm_path, False, rec, branch, commit, issue_id)


def _create(repo, store, new: NewLesson, evidence: dict, where: Where, main_ref: str, actor: str) -> Result:
    main = where.tip
    if main is None:
        raise GitError(f"'{main_ref}' is not a commit: there is no main to put the lesson on")
    files = repo.read_tree(main, intent.INTENT_DIR + "/")
    k = key(new.fingerprint)
    day = evidence["at"][:10]
    # Named by title and root cause, so that lessons pending on different branches never
    # add the same path; the longer key only where a file of another cause has the name.
    lesson_path = _free(files, f"{intent.INTENT_DIR}/{SECTIONS[new.kind]}/{slug(new.title)}", k)
    pm_path = _free(files, f"{intent.INTENT_DIR}/postmortems/{day}-{slug(new.postmortem_title)}", k)
    meta = {"fingerprint": new.fingerprint, "kind": new.kind}
    if new.kind == "prohibition":
        meta["check"] = new.check
    meta.update({"postmortem": pm_path, "factual": new.factual, "recurrences_before": 0,
                 "recurrences_after": 0, "evidence": [{**evidence, "recurrence": None}]})
    body = f"# {new.title}\n\n{new.text.strip()}\n\nLearned from a failure; see {pm_path}.\n"
    lesson = Lesson(lesson_path, meta, body)
    pm_meta = {"fingerprint": new.fingerprint, "issue": evidence.get("issue"), "run": evidence.get("run"),
               "record": evidence.get("record"), "head": evidence.get("head"), "base": evidence.get("base"),
               "lesson": lesson_path, "factual": new.factual, **new.postmortem_meta}
    pm_text = intent.with_front_matter(pm_meta, f"# Postmortem: {new.postmortem_title}\n\n"
                                                f"{new.postmortem_body.strip()}\n")
    commit = repo.commit_files(main, {lesson_path: lesson.text().encode(), pm_path: pm_text.encode()},
                               f"Lesson: {new.title}\n\nA {new.kind} learned from {_describe(evidence)}.\n"
                               f"Postmortem: {pm_path}\nFingerprint: {new.fingerprint}\n")
    branch = branch_for(new.fingerprint)
    comment = f"factory-postmortem proposes this {new.kind}, learned from {_describe(evidence)}."
    issue_id = _land(repo, store, lesson, branch, commit, where.branch_tip, comment, actor,
                     body=_issue_body(lesson, pm_path, new.notes))
    return Result(lesson, pm_path, True, None, branch, commit, issue_id)


def _free(files: dict, stem: str, k: str) -> str:
    for path in (f"{stem}-{k[:6]}.md", f"{stem}-{k}.md"):
        if path not in files:
            return path
    raise GitError(f"'{stem}-{k}.md' exists already but is no lesson of this root cause; "
                   "move it aside, then run factory-postmortem again")


def _land(repo, store: IssueStore, lesson: Lesson, branch: str, commit: str, old: str | None, comment: str,
          actor: str, body: str) -> str:
    """File the lesson's issue (or find its active one), then in one compare-and-swap put
    it in review on `branch` and move the branch from `old` to `commit`."""
    draft = contracts.validate_draft({
        "title": f"Lesson: {lesson.title}"[:contracts.MAX_TITLE_CHARS], "body": body, "kind": "worker",
        "source": f"postmortem:{key(lesson.fingerprint)}", "fingerprint": issue_fingerprint(lesson.fingerprint),
        "labels": [LABEL]})
    (issue, _), = store.file([draft], actor, dedupe=True)
    ref = "refs/heads/" + branch

    def events(cur, last):
        evs = []
        fields = {k: v for k, v in (("state", "review"), ("branch", branch)) if cur.get(k) != v}
        if fields:
            evs.append(make_event("set", actor, after=last, fields=fields))
        evs.append(make_event("comment", actor, after=evs[-1]["at"] if evs else last,
                              text=comment[:contracts.MAX_COMMENT_BYTES]))
        return evs

    def also(cur):
        if repo.resolve(ref) != old:
            raise _Replan()
        return [(ref, commit, old)]

    store.change(issue["id"], events, also=also)
    return issue["id"]


# -- text --------------------------------------------------------------------------------

LESSON_KEY_ORDER = ("fingerprint", "kind", "check", "postmortem", "factual", "recurrences_before",
                    "recurrences_after", "evidence")


def _ordered(meta: dict) -> dict:
    out = {k: meta[k] for k in LESSON_KEY_ORDER if k in meta}
    out.update({k: v for k, v in meta.items() if k not in out})
    return out


def _describe(evidence: dict) -> str:
    what = f"run {evidence['run']}" if evidence.get("run") else "a failure"
    if evidence.get("issue"):
        what += f" on issue {evidence['issue']}"
    if evidence.get("head"):
        what += f" (head {evidence['head'][:12]})"
    return what


def _with_recurrence(text: str, evidence: dict, rec: str) -> str:
    """The postmortem with one more line under its Recurrences heading."""
    line = f"- {evidence['at']}: {_describe(evidence)}, {rec} the lesson landed"
    text = text.rstrip("\n")
    if RECURRENCE_HEADING not in text:
        text += f"\n\n{RECURRENCE_HEADING}\n"
    return f"{text}\n{line}\n"


def _issue_body(lesson: Lesson, pm_path: str | None, notes: list) -> str:
    ev = evidence_of(lesson)
    lines = [f"factory-postmortem learned a {lesson.kind} from {len(ev)} failure(s) with one root cause "
             f"(fingerprint `{lesson.fingerprint}`).", "",
             f"- lesson: {lesson.path}", f"- postmortem: {pm_path}",
             f"- recurrences before it landed: {count(lesson, 'recurrences_before')}, "
             f"after: {count(lesson, 'recurrences_after')}"]
    if lesson.meta.get("check"):
        lines.append(f"- check: `{lesson.meta['check']}`")
    if lesson.meta.get("factual"):
        lines.append("- written from the run record alone (no model answered)")
    lines += [f"- note: {n}" for n in notes]
    lines += ["", "The branch changes only files under intent/. Merging it puts the lesson in every later "
                  "agent's system prompt."]
    return "\n".join(lines)
