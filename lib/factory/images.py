"""Agent image recipes and builds: what goes into the image agents run in, and how it is built.

A recipe is the config's `image` section plus the repository it belongs to. Its hash
covers everything that decides the image's content (the base, the packages, the repo's
Dockerfile when one is named, RECIPE_FORMAT for the build steps themselves), so
`ensure_image` builds only when no image carries that hash yet: build once, keep the
image, rebuild when the recipe changes. The image is tagged `NAME:HASH12` and
`NAME:latest` (or the tag the name carries) and labelled `factory.recipe=<hash>`.

Two ways to build:

- registry: `docker build` of a generated Dockerfile (`FROM base` plus apt-get), or of
  the repository's own Dockerfile. Needs a registry to pull the base from.
- offline: `debootstrap --variant=minbase` of Debian OFFLINE_SUITE from the apt mirror,
  the agent user written into the rootfs, then `docker import`. Needs root and
  debootstrap; ignores `base` (it is always Debian OFFLINE_SUITE).

`build: auto` pulls the base first (which fails at once where no registry answers) and
falls back to offline. Every image has the user `agent` (uid/gid 1000, home
/home/agent), an empty /workspace owned by it, USER 1000:1000, WORKDIR /workspace and
HOME=/tmp (git in a read-only container needs a writable HOME). Nothing of factory
itself, and no key, goes into the image: the agent loop runs on the host.

Docker is reached only through sandbox.py; debootstrap and tar are run here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from . import env, sandbox

# Bump when the build steps change what an image holds, so every recipe rebuilds once.
RECIPE_FORMAT = 1
OFFLINE_SUITE = "bookworm"
# What sandbox.exec and the agent's tools rely on, whatever the config lists.
AGENT_PACKAGES = ("bash", "ca-certificates", "coreutils", "git", "procps")
AGENT_UID = 1000
RECIPE_LABEL = "factory.recipe"
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+:~-]+)?$")


class ImageError(Exception):
    """An image could not be built; the message says what failed and what to do."""


@dataclass(frozen=True)
class Recipe:
    name: str
    base: str = "debian:bookworm-slim"
    packages: tuple[str, ...] = ()
    dockerfile: str | None = None   # relative to repo
    build: str = "auto"             # auto | registry | offline
    repo: str | None = None         # the repository the dockerfile lives in
    context: str | None = None      # the build context, relative to repo (default: repo)
    source: str = "config"          # where the recipe came from: config or devcontainer


def recipe_from_config(config: dict, repo: str | None = None) -> Recipe:
    """The recipe for a loaded config (config.load's result) of the repository at `repo`.
    factory.yaml's image.dockerfile wins; else the repo's .devcontainer/ definition where
    it has one; else the base plus packages."""
    img = config["image"]
    fields = dict(name=img["name"], base=img["base"], packages=tuple(img["packages"]),
                  dockerfile=img.get("dockerfile"), build=img.get("build", "auto"),
                  repo=os.path.abspath(repo) if repo else None)
    if not fields["dockerfile"] and repo:
        fields.update(devcontainer_fields(repo))
    recipe = Recipe(**fields)
    check_recipe(recipe)
    return recipe


DEVCONTAINER = os.path.join(".devcontainer", "devcontainer.json")


def devcontainer_fields(repo: str) -> dict:
    """What a .devcontainer/devcontainer.json says about the image: its build.dockerfile
    (with build.context, both relative to .devcontainer/) or its image, used as the base."""
    path = os.path.join(repo, DEVCONTAINER)
    try:
        with open(path, encoding="utf-8") as f:
            spec = parse_jsonc(f.read())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as e:
        raise ImageError(f"{DEVCONTAINER}: cannot read it ({e}); fix it or set image.dockerfile") from e
    if not isinstance(spec, dict):
        raise ImageError(f"{DEVCONTAINER}: must be a JSON object")
    build = spec.get("build") if isinstance(spec.get("build"), dict) else {}
    dockerfile = build.get("dockerfile") or spec.get("dockerFile")
    if dockerfile:
        folder = os.path.dirname(DEVCONTAINER)
        context = os.path.normpath(os.path.join(folder, build.get("context") or spec.get("context") or "."))
        df = os.path.normpath(os.path.join(folder, dockerfile))
        if context.startswith("..") or df.startswith(".."):
            raise ImageError(f"{DEVCONTAINER}: the build reaches outside the repository")
        return {"dockerfile": df, "context": context, "source": "devcontainer"}
    if isinstance(spec.get("image"), str):
        return {"base": spec["image"], "source": "devcontainer"}
    return {}


def parse_jsonc(text: str):
    """JSON with comments and trailing commas, as devcontainer.json is written."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("//", i):
            i = text.find("\n", i) if "\n" in text[i:] else n
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end == -1 else end + 2
        else:
            out.append(c)
            i += 1
    return json.loads(re.sub(r",(\s*[}\]])", r"\1", "".join(out)))


def check_recipe(recipe: Recipe) -> None:
    # Package names end up on a command line and in a Dockerfile: refuse anything else.
    bad = [p for p in recipe.packages if not PACKAGE_RE.match(p)]
    if bad:
        raise ImageError(f"image.packages: {', '.join(map(repr, bad))} is not a Debian package name")
    if recipe.build not in ("auto", "registry", "offline"):
        raise ImageError(f"image.build: {recipe.build!r}; it must be auto, registry or offline")
    if recipe.dockerfile and not recipe.repo:
        raise ImageError("image.dockerfile is set but no repository was given to find it in")
    if recipe.dockerfile:
        # config.py refuses '..' and absolute paths; a symlink could still lead out.
        top = os.path.realpath(recipe.repo)
        for what, rel in (("image.dockerfile", recipe.dockerfile), ("the build context", recipe.context or ".")):
            real = os.path.realpath(os.path.join(recipe.repo, rel))
            if os.path.commonpath([top, real]) != top:
                raise ImageError(f"{what}: {rel!r} leads outside the repository (a symlink?); "
                                 "give a path inside it")


def all_packages(recipe: Recipe) -> list[str]:
    return sorted(set(recipe.packages) | set(AGENT_PACKAGES))


def _dockerfile_path(recipe: Recipe) -> str:
    return os.path.join(recipe.repo, recipe.dockerfile)


def _dockerfile_bytes(recipe: Recipe) -> bytes:
    try:
        with open(_dockerfile_path(recipe), "rb") as f:
            return f.read()
    except OSError as e:
        raise ImageError(f"image.dockerfile: cannot read '{_dockerfile_path(recipe)}' ({e.strerror})") from e


def recipe_hash(recipe: Recipe) -> str:
    """sha256 (hex) over what decides the image's content. The name and the build mode
    do not: they say where the image goes and how it is made, not what it holds."""
    check_recipe(recipe)
    doc = {
        "format": RECIPE_FORMAT,
        "base": recipe.base,
        "packages": all_packages(recipe),
        "offline_suite": OFFLINE_SUITE,
        # Only the Dockerfile's own text: files it COPYs from the repo are not hashed.
        "dockerfile": hashlib.sha256(_dockerfile_bytes(recipe)).hexdigest() if recipe.dockerfile else None,
    }
    if recipe.context:  # a devcontainer build: where it builds from decides it too
        doc["dockerfile_path"] = [recipe.dockerfile, recipe.context]
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def split_name(name: str) -> tuple[str, str]:
    """(repository, tag) of an image name; the tag is 'latest' where the name has none."""
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = name.rsplit(":", 1)
        return repo, tag
    return name, "latest"


def image_tag(recipe: Recipe, digest: str | None = None) -> str:
    repository, _ = split_name(recipe.name)
    return f"{repository}:{(digest or recipe_hash(recipe))[:12]}"


def _say(msg: str) -> None:
    print(f"factory image: {msg}", file=sys.stderr, flush=True)


# -- ensure ----------------------------------------------------------------------------

def ensure_image(recipe: Recipe, *, log=_say) -> str:
    """The tag NAME:HASH12 of an image for this recipe, built only if none exists yet.

    An image that carries the recipe's label under another name (the same recipe in a
    repo with another image.name) is tagged instead of rebuilt. Builds are serialized
    with a lock file, so agents starting together build a recipe once.
    """
    digest = recipe_hash(recipe)
    tag = image_tag(recipe, digest)
    if _reuse(recipe, digest, tag):
        return tag
    with _build_lock():
        if _reuse(recipe, digest, tag):  # someone built it while we waited
            return tag
        started = time.monotonic()
        image_id = build(recipe, digest, log=log)
        _tag_all(recipe, image_id, digest)
        log(f"built {tag} ({image_id[:19]}) in {time.monotonic() - started:.0f} s")
    return tag


def rebuild(recipe: Recipe, *, log=_say) -> str:
    """Build the recipe's image even though one exists (say the base image or the Debian
    mirror moved on); returns its tag, as ensure_image does."""
    digest = recipe_hash(recipe)
    with _build_lock():
        started = time.monotonic()
        image_id = build(recipe, digest, log=log)
        _tag_all(recipe, image_id, digest)
        log(f"built {image_tag(recipe, digest)} ({image_id[:19]}) in {time.monotonic() - started:.0f} s")
    return image_tag(recipe, digest)


def _reuse(recipe: Recipe, digest: str, tag: str) -> bool:
    info = sandbox.image_info(tag)
    if info and info["labels"].get(RECIPE_LABEL) == digest:
        _tag_all(recipe, info["id"], digest)
        return True
    ids = sandbox.images_labelled(RECIPE_LABEL, digest)
    if ids:
        _tag_all(recipe, ids[0], digest)
        return True
    return False


def _tag_all(recipe: Recipe, image_id: str, digest: str) -> None:
    repository, tag = split_name(recipe.name)
    sandbox.tag_image(image_id, repository, digest[:12])
    sandbox.tag_image(image_id, repository, tag)


@contextlib.contextmanager
def _build_lock():
    # One lock for all builds on this host: builds are rare and two debootstraps at once
    # only compete for the disk. One file, so nothing piles up in the temp dir.
    path = os.path.join(tempfile.gettempdir(), "factory-image-build.lock")
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(recipe: Recipe, digest: str | None = None, *, log=_say) -> str:
    """Build the recipe's image the way its `build` says, tagged NAME:HASH12; return its
    id. ensure_image adds NAME:latest and is what callers want."""
    digest = digest or recipe_hash(recipe)
    if recipe.build == "offline":
        return build_offline(recipe, digest, log=log)
    if recipe.build == "registry":
        return build_registry(recipe, digest, log=log)
    if recipe.dockerfile:
        # A repo's Dockerfile cannot be replayed offline; its FROM may be a local image.
        return build_registry(recipe, digest, log=log)
    try:
        _need_base(recipe.base)
    except ImageError as e:
        log(f"{e}; building offline with debootstrap instead")
        return build_offline(recipe, digest, log=log)
    return build_registry(recipe, digest, log=log, base_checked=True)


# -- registry --------------------------------------------------------------------------

def _need_base(base: str) -> None:
    if sandbox.image_info(base):
        return
    try:
        sandbox.pull_image(base)
    except sandbox.SandboxError as e:
        raise ImageError(f"cannot pull base image '{base}' ({e})") from e


def generated_dockerfile(recipe: Recipe) -> str:
    pkgs = " ".join(all_packages(recipe))
    return f"""\
FROM {recipe.base}
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {pkgs} \\
 && rm -rf /var/lib/apt/lists/*
RUN (getent group {AGENT_UID} >/dev/null || groupadd -g {AGENT_UID} agent) \\
 && (getent passwd {AGENT_UID} >/dev/null || useradd -u {AGENT_UID} -g {AGENT_UID} -d /home/agent -m -s /bin/bash agent) \\
 && mkdir -p /workspace && chown {AGENT_UID}:{AGENT_UID} /workspace
ENV HOME=/tmp LANG=C.UTF-8
WORKDIR /workspace
USER {AGENT_UID}:{AGENT_UID}
"""


def build_registry(recipe: Recipe, digest: str, *, log=_say, base_checked: bool = False) -> str:
    labels = {RECIPE_LABEL: digest}
    tag = image_tag(recipe, digest)
    try:
        if recipe.dockerfile:
            log(f"docker build of {_dockerfile_path(recipe)}")
            context = os.path.join(recipe.repo, recipe.context or "")
            return sandbox.build_image(tag=tag, labels=labels, context=context,
                                       dockerfile=os.path.relpath(_dockerfile_path(recipe), context), log=log)
        if not base_checked:
            _need_base(recipe.base)
        log(f"docker build FROM {recipe.base} with {', '.join(all_packages(recipe))}")
        return sandbox.build_image(tag=tag, labels=labels,
                                   dockerfile_text=generated_dockerfile(recipe), log=log)
    except sandbox.SandboxError as e:
        raise ImageError(f"docker build of '{tag}' failed: {e}") from e


# -- offline ---------------------------------------------------------------------------

def import_changes(digest: str) -> list[str]:
    """The Dockerfile lines `docker import` applies to the debootstrapped rootfs."""
    return [
        f"USER {AGENT_UID}:{AGENT_UID}",
        "WORKDIR /workspace",
        "ENV HOME=/tmp",
        "ENV LANG=C.UTF-8",
        # An imported rootfs has no PATH; docker's default would do, but say it.
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        'CMD ["bash"]',
        f"LABEL {RECIPE_LABEL}={digest}",
    ]


def build_offline(recipe: Recipe, digest: str, *, log=_say) -> str:
    if os.geteuid() != 0:
        raise ImageError("an offline image build runs debootstrap, which needs root (run as root, "
                         "or build where a registry answers with image.build: registry)")
    if not shutil.which("debootstrap"):
        raise ImageError("no debootstrap on PATH (apt-get install -y debootstrap, or ./setup)")
    workdir = tempfile.mkdtemp(prefix="factory-image-")
    try:
        rootfs = os.path.join(workdir, "rootfs")
        pkgs = all_packages(recipe)
        log(f"debootstrap {OFFLINE_SUITE} (minbase + {', '.join(pkgs)}); about a minute")
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(pkgs)}",
              OFFLINE_SUITE, rootfs] + ([env.get("FACTORY_DEBIAN_MIRROR")]
                                         if env.get("FACTORY_DEBIAN_MIRROR") else []), log)
        _unmount_under(rootfs)  # debootstrap mounts proc/sys while it works
        add_agent_user(rootfs)
        _slim(rootfs)
        tarball = os.path.join(workdir, "rootfs.tar")
        log("tar and docker import")
        _run(["tar", "-C", rootfs, "--numeric-owner", "--xattrs", "-cf", tarball, "."], log)
        return sandbox.import_rootfs(tarball, image_tag(recipe, digest), import_changes(digest))
    except sandbox.SandboxError as e:
        raise ImageError(f"docker import failed: {e}") from e
    finally:
        remove_tree(workdir)


def _run(cmd: list[str], log) -> None:
    """Run a build step, relaying its output as progress; raise with its tail on failure."""
    tail: list[str] = []
    noisy = re.compile(r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) ")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         text=True, errors="replace")
    for line in p.stdout:
        line = line.rstrip("\n")
        tail = (tail + [line])[-20:]
        if not noisy.match(line):  # one line per package per stage is too much to read
            log(line)
    if p.wait() != 0:
        raise ImageError(f"{cmd[0]} failed (exit {p.returncode}):\n" + "\n".join(tail))


def add_agent_user(rootfs: str) -> None:
    """The user `agent` (uid/gid 1000, home /home/agent) and /workspace, written into the
    rootfs's files directly: no chroot, so nothing of the rootfs runs on the host."""
    def append(rel: str, line: str, mode: int | None = None):
        path = os.path.join(rootfs, rel)
        with open(path, "a") as f:
            f.write(line + "\n")
        if mode is not None:
            os.chmod(path, mode)

    with open(os.path.join(rootfs, "etc/passwd")) as f:
        if any(line.split(":")[2:3] == [str(AGENT_UID)] for line in f):
            return
    append("etc/passwd", f"agent:x:{AGENT_UID}:{AGENT_UID}:factory agent:/home/agent:/bin/bash")
    append("etc/group", f"agent:x:{AGENT_UID}:")
    append("etc/shadow", "agent:*:19000:0:99999:7:::", 0o640)
    if os.path.exists(os.path.join(rootfs, "etc/gshadow")):
        append("etc/gshadow", "agent:!::", 0o640)
    for rel in ("home/agent", "workspace"):
        path = os.path.join(rootfs, rel)
        os.makedirs(path, exist_ok=True)
        os.chown(path, AGENT_UID, AGENT_UID)
        os.chmod(path, 0o755)


def _slim(rootfs: str) -> None:
    # The .debs debootstrap keeps and the apt lists are a third of the rootfs and unused.
    for rel in ("var/cache/apt/archives", "var/lib/apt/lists"):
        d = os.path.join(rootfs, rel)
        for entry in os.listdir(d) if os.path.isdir(d) else ():
            p = os.path.join(d, entry)
            if os.path.isfile(p) and not os.path.islink(p) and entry != "lock":
                os.unlink(p)


def _unmount_under(path: str) -> None:
    path = os.path.realpath(path)
    with open("/proc/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    for mp in sorted((p for p in points if p == path or p.startswith(path + "/")), reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)


def remove_tree(path: str) -> None:
    """Remove a build dir: unmount what a killed debootstrap left mounted in it first, and
    never cross into another file system (a /proc left mounted must not be walked)."""
    if not os.path.exists(path):
        return
    _unmount_under(path)
    subprocess.run(["rm", "-rf", "--one-file-system", "--", path], capture_output=True)
    if os.path.exists(path):
        shutil.rmtree(path, ignore_errors=True)
