"""The agent's repository inside its container: how it is made, and how its work leaves.

The checkout is made in the container, on its /workspace tmpfs, with objects borrowed
from the host's store through a read-only mount, so nothing is copied and no host file
can change. The harvest reads the agent's work with a git dir and config of its own and
streams a bundle to a host-only file; the host checks it (descends from its base, adds
no secret) in its own repository before anything may land. No ref moves here: landing
is the issue store's compare-and-swap (spawn._settle_issue).
"""

from __future__ import annotations

from .gitstore import Repo


class HarvestRefused(Exception):
    """The agent's work cannot become a branch as it is; the message says why."""


# The agent's checkout: a repository on the /workspace tmpfs whose objects are borrowed
# from the host's store, mounted read-only (git alternates): nothing is copied, and
# nothing the agent does can reach the host's files. Only the branch ref is made. The
# harvest's exclude list goes into info/exclude, so that the agent's own `git add -A`
# leaves caches out of its commits too. Before the agent has run anything, the only
# child of the container's init is the deadline's `sleep`: its pid is printed, so the
# harvest can spare it. $1 branch, $2 base, $3 exclude list.
CHECKOUT_SCRIPT = r"""
set -eu
git init -q -b "$1" /workspace/repo
cd /workspace/repo
echo /factory/objects > .git/objects/info/alternates
printf '%s\n' "$3" >> .git/info/exclude
git update-ref "refs/heads/$1" "$2"
git reset -q --hard
for d in /proc/[0-9]*; do
  { read -r l < "$d/stat"; } 2>/dev/null || continue
  l=${l##*) }; a=($l)
  if [ "${a[1]}" = 1 ]; then echo "deadline-pid ${d#/proc/}"; fi
done
"""

# The harvest reads the agent's work with a git dir and config of its own: the agent's
# .git/config, attributes drivers, hooks, fsmonitor, pager or editor never run, and
# HOME and XDG_CONFIG_HOME point at a fresh directory so no file the agent planted is
# read as a global config. Leftover changes go into one more commit; files the
# repository ignores, and the harvest's exclude list, stay out unless the base had them.
# The bundle goes to stdout, where the host reads it; nothing is left in the container.
# First, whatever the agent left running is stopped (a `setsid` daemon escapes each
# exec's sweep), so nothing writes to the checkout or to the harvest's own files while
# the work is read: every process but the init, the deadline's sleep and this exec's.
# $1 base, $2 run id, $3 the exclude list (one pattern per line), $4 the sleep's pid.
HARVEST_SCRIPT = r"""
set -eu
base=$1
read -r l < /proc/$$/stat; l=${l##*) }; a=($l); mine=${a[3]}
for _ in 1 2 3 4 5 6 7 8 9 10; do
  if [ "$4" = all ]; then break; fi  # the sleep's pid is unknown: it cannot be told apart
  found=
  for d in /proc/[0-9]*; do
    q=${d#/proc/}
    if [ "$q" = 1 ] || [ "$q" = "$4" ]; then continue; fi
    { read -r l < "$d/stat"; } 2>/dev/null || continue
    l=${l##*) }; a=($l)
    if [ "${a[3]}" != "$mine" ] && [ "${a[0]}" != Z ]; then kill -KILL "$q" 2>/dev/null && found=1 || true; fi
  done
  if [ -z "$found" ]; then break; fi
done
h=$(mktemp -d /tmp/.factory-harvest.XXXXXXXX)
export HOME="$h" XDG_CONFIG_HOME="$h" GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null \
       GIT_LITERAL_PATHSPECS=1 GIT_OPTIONAL_LOCKS=0
git init -q --bare "$h/git"
printf '%s\n' /workspace/repo/.git/objects /factory/objects > "$h/git/objects/info/alternates"
printf '%s\n' "$3" > "$h/exclude"
g() { git --git-dir="$h/git" --work-tree=/workspace/repo -c core.excludesFile="$h/exclude" \
          -c core.attributesFile=/dev/null -c core.hooksPath=/dev/null "$@"; }
# The agent's HEAD, read as files: resolving it with git would read the agent's config.
d=/workspace/repo/.git
head=
if [ -f "$d/HEAD" ]; then
  read -r line < "$d/HEAD" || true
  case "$line" in
    "ref: "*) name=${line#ref: }
              if [ -f "$d/$name" ]; then read -r head < "$d/$name" || true
              elif [ -f "$d/packed-refs" ]; then
                while read -r oid ref; do [ "$ref" = "$name" ] && head=$oid; done < "$d/packed-refs"
              fi ;;
    *) head=$line ;;
  esac
fi
case "$head" in
  *[!0-9a-f]*|"") head=$base ;;  # not an object id: the work is what the files say
esac
g cat-file -e "$head^{commit}" 2>/dev/null || head=$base
export GIT_INDEX_FILE="$h/index"
g read-tree "$head"
g add -A
declare -A added=()
while IFS= read -r -d '' p; do added["$p"]=1; done < <(g diff --cached --name-only --no-renames --diff-filter=A -z "$base")
: > "$h/drop"
while IFS= read -r -d '' p; do
  if [ -n "${added[$p]:-}" ]; then printf '%s\0' "$p" >> "$h/drop"; fi
done < <(g ls-files -z --cached --ignored --exclude-standard)
if [ -s "$h/drop" ]; then g rm -q --cached --pathspec-from-file="$h/drop" --pathspec-file-nul; fi
tree=$(g write-tree)
if [ "$tree" != "$(g rev-parse "$head^{tree}")" ]; then
  head=$(g commit-tree "$tree" -p "$head" -m "factory: work left uncommitted by run $2")
fi
if [ "$head" = "$base" ]; then exit 0; fi
g update-ref refs/heads/result "$head"
g bundle create -q - "$base..refs/heads/result"
"""


def check_out(sb, base: str, branch: str, excludes: list[str]) -> int | None:
    """Make the checkout; return the pid of the container's deadline (None if unsure)."""
    from .agent import ToolsUnavailable
    r = sb.exec(f"bash -c {_sq(CHECKOUT_SCRIPT)} checkout {_sq(branch)} {base} {_sq(chr(10).join(excludes))}",
                timeout=300, workdir="/workspace")
    if r.exit_code != 0:
        raise ToolsUnavailable(f"could not check out {base[:12]} in the container: {r.output.strip()[-500:]}")
    pids = [line.split()[1] for line in r.output.splitlines() if line.startswith("deadline-pid ")]
    return int(pids[0]) if len(pids) == 1 and pids[0].isdigit() else None


def _sq(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def harvest(repo: Repo, sb, bundle: str, base: str, run_id: str, harvest_cfg: dict, log,
            deadline_pid: int | None = None) -> str | None:
    """Bundle what the agent left inside the container, stream the bundle to a host-only
    file and unbundle it into the host's repository: objects only, no ref moves (that
    is the landing's). Returns the work's commit, None when there is none; raises
    HarvestRefused when the work may not become a branch."""
    from .config import parse_size
    limit = parse_size(harvest_cfg["max_bytes"])
    excludes = chr(10).join(harvest_cfg["exclude"])
    spare = str(deadline_pid) if deadline_pid else "all"
    r = sb.exec_to_file(f"bash -c {_sq(HARVEST_SCRIPT)} harvest {base} {_sq(run_id)} {_sq(excludes)} {spare}",
                        bundle, max_bytes=limit, timeout=300, workdir="/workspace")
    if r.over:
        raise HarvestRefused(f"the agent's work is over harvest.max_bytes ({harvest_cfg['max_bytes']}) "
                             "as a git bundle")
    if r.exit_code != 0:
        raise HarvestRefused(f"the agent's work could not be bundled: {r.stderr.strip()[-500:] or f'exit {r.exit_code}'}")
    if r.bytes == 0:
        return None
    heads = repo.unbundle(bundle)
    commit = heads.get("refs/heads/result")
    if commit is None:
        raise HarvestRefused("the bundle carries no result")
    if not repo.is_ancestor(base, commit):
        raise HarvestRefused("the agent's work does not descend from where it started")
    found = _secrets_in(repo, base, commit)
    if found:
        raise HarvestRefused("the work adds secret-shaped strings (" + "; ".join(found[:5]) + "); "
                             "no ref was moved")
    log(f"harvest: {commit[:12]}")
    return commit


def _secrets_in(repo: Repo, base: str, commit: str) -> list[str]:
    """Where the agent's new commits add something secret-shaped, as `TYPE in PATH:LINE`."""
    from .secretscan import scan_commits
    out = []
    for f in scan_commits(repo, base, commit):
        if f["where"] == "message":
            where = "its message"
        elif f["where"] == "name":
            where = f"the name of {f['path']}"
        else:
            where = f"{f['path']}:{f['line']}"
        out.append(f"{f['type']} in {where}, commit {f['commit'][:12]}")
    return out
