"""Slots: a counting semaphore with quotas per kind, a total, and resource admission.

A slot is a file locked with flock(2): the kernel releases the lock when the last
process holding it exits, however it exits, so a slot never leaks. A lease is a kind
slot plus a total slot (always taken in that order), chosen under a short admission
lock that also checks the lease's CPU and memory request fits the machine beside the
leases already held. The holder writes its lease into its slot files, so `status` can
be read with `ls` and `cat` as well as with `factory-slot status`.

    SLOTS/admit.lock                 held only while a lease is chosen
    SLOTS/<kind>.<n>                 kind slots 0..quota-1
    SLOTS/total.<n>                  total slots 0..total-1

SLOTS is $FACTORY_SLOTS_DIR, else <git dir>/factory/slots (runtime state: losing it
loses nothing).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from . import env
from .config import parse_size
from .registry import SLOT_KINDS


@dataclass
class Lease:
    kind: str
    slot: int             # the kind slot number
    total_slot: int
    cpus: float
    memory: int           # bytes
    pid: int
    since: float
    command: str = ""

    def env(self) -> dict[str, str]:
        """What the command learns of its lease."""
        return {"FACTORY_SLOT": f"{self.kind}.{self.slot}", "FACTORY_SLOT_KIND": self.kind,
                "FACTORY_SLOT_NUMBER": str(self.slot), "FACTORY_SLOT_CPUS": f"{self.cpus:g}",
                "FACTORY_SLOT_MEMORY": str(self.memory)}


class SlotError(Exception):
    pass


class NoFit(SlotError):
    """The request can never fit this machine (it would wait forever)."""


def machine() -> dict:
    """The CPUs and memory leases may take: the machine's, unless FACTORY_CPUS /
    FACTORY_MEMORY say less. `cpus_from` / `memory_from` say where each limit came from,
    for messages. SlotError when a variable is not a number or a size."""
    cpus_env = env.get("FACTORY_CPUS")
    try:
        cpus = float(cpus_env) if cpus_env else float(len(os.sched_getaffinity(0)))
    except ValueError:
        cpus = -1.0
    if cpus < 0 or cpus != cpus:  # negative or NaN
        raise SlotError(f"FACTORY_CPUS={cpus_env!r} is not a number of CPUs such as 4 or 1.5")
    mem_env = env.get("FACTORY_MEMORY")
    memory = parse_size(mem_env) if mem_env else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if not memory:
        raise SlotError(f"FACTORY_MEMORY={mem_env!r} is not a size such as 16g")
    return {"cpus": cpus, "memory": memory,
            "cpus_from": f"FACTORY_CPUS={cpus_env}" if cpus_env else "its CPUs",
            "memory_from": f"FACTORY_MEMORY={mem_env}" if mem_env else "its memory"}


def human_size(n: int) -> str:
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= unit:
            return f"{n / unit:.3g} {name}"
    return f"{n} bytes"


def check_fit(cfg: dict, kind: str) -> None:
    """Raise NoFit when a lease of `kind` can never be granted here, however many others
    end: its request is more than the machine has, or its quota is 0. factory-slot asks
    before it waits (it would wait forever), the supervisor before it claims an issue
    (the claim would be handed back, again and again). SlotError: FACTORY_CPUS or
    FACTORY_MEMORY is invalid."""
    cap = machine()
    res = cfg["resources"][kind]
    cpus, memory = float(res["cpus"]), parse_size(res["memory"])
    if memory > cap["memory"]:
        raise NoFit(f"memory: a {kind} asks for {human_size(memory)} (resources.{kind}.memory) and this "
                    f"machine allows {human_size(cap['memory'])} ({cap['memory_from']}); lower "
                    f"resources.{kind}.memory in factory.yaml")
    if cpus > cap["cpus"] + 1e-9:
        raise NoFit(f"cpus: a {kind} asks for {cpus:g} CPUs (resources.{kind}.cpus) and this machine "
                    f"allows {cap['cpus']:g} ({cap['cpus_from']}); lower resources.{kind}.cpus in factory.yaml")
    if cfg["slots"][kind] == 0:
        raise NoFit(f"slots.{kind} is 0: no {kind} can ever run (raise it in factory.yaml)")


class Slots:
    def __init__(self, root: str, cfg: dict):
        self.root = root
        self.cfg = cfg
        self.quotas = {k: cfg["slots"][k] for k in SLOT_KINDS}
        self.total = cfg["slots"]["total"]
        self.requests = {k: (float(r["cpus"]), parse_size(r["memory"])) for k, r in cfg["resources"].items()}
        os.makedirs(root, exist_ok=True)

    # -- taking a lease ------------------------------------------------------------

    def try_acquire(self, kind: str, command: str = "") -> tuple[Lease, list[int]] | None:
        """A lease and the fds that hold it, or None when no slot is free or the request
        does not fit beside the leases held now."""
        cpus, memory = self.requests[kind]
        check_fit(self.cfg, kind)
        cap = machine()
        with self._admission():
            held = self.leases()
            used_cpus = sum(lease.cpus for lease in held)
            used_mem = sum(lease.memory for lease in held)
            if used_cpus + cpus > cap["cpus"] + 1e-9 or used_mem + memory > cap["memory"]:
                return None
            kind_fd = self._lock_first_free([f"{kind}.{n}" for n in range(self.quotas[kind])])
            if kind_fd is None:
                return None
            total_fd = self._lock_first_free([f"total.{n}" for n in range(self.total)])
            if total_fd is None:
                os.close(kind_fd[0])
                return None
            lease = Lease(kind=kind, slot=int(kind_fd[1].split(".")[1]), total_slot=int(total_fd[1].split(".")[1]),
                          cpus=cpus, memory=memory, pid=os.getpid(), since=time.time(), command=command)
            record = (json.dumps(asdict(lease)) + "\n").encode()
            for fd, _ in (kind_fd, total_fd):
                os.ftruncate(fd, 0)
                os.pwrite(fd, record, 0)
            return lease, [kind_fd[0], total_fd[0]]

    def acquire(self, kind: str, command: str = "", wait: bool = True, poll_s: float = 0.05,
                max_poll_s: float = 0.5) -> tuple[Lease, list[int]] | None:
        """Wait for a lease (polling with backoff up to max_poll_s; a slot frees when a
        process dies, which no event announces to another process)."""
        delay = poll_s
        while True:
            got = self.try_acquire(kind, command)
            if got or not wait:
                return got
            time.sleep(delay)
            delay = min(delay * 2, max_poll_s)

    def _lock_first_free(self, names: list[str]) -> tuple[int, str] | None:
        for name in names:
            fd = os.open(os.path.join(self.root, name), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd, name
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
        return None

    @contextmanager
    def _admission(self):
        fd = os.open(os.path.join(self.root, "admit.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- reading -------------------------------------------------------------------

    def _held(self, name: str) -> dict | None:
        """The lease recorded in a slot file, if the slot is held now."""
        path = os.path.join(self.root, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return None  # we could lock it: nobody holds it
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
            data = os.pread(fd, 64 * 1024, 0)
            try:
                return json.loads(data)
            except ValueError:
                return {}  # held, lease not written yet
        finally:
            os.close(fd)

    def leases(self) -> list[Lease]:
        out = []
        for kind, quota in self.quotas.items():
            for n in range(quota):
                rec = self._held(f"{kind}.{n}")
                if rec:
                    out.append(Lease(**rec))
        return out

    def status(self) -> dict:
        held = self.leases()
        used_total = sum(1 for n in range(self.total) if self._held(f"total.{n}") is not None)
        cap = machine()
        return {
            "v": 1,
            "total": {"size": self.total, "used": used_total},
            "kinds": {k: {"size": q, "used": sum(1 for lease in held if lease.kind == k),
                          "leases": [asdict(lease) for lease in held if lease.kind == k]}
                      for k, q in self.quotas.items()},
            "resources": {"cpus": {"capacity": cap["cpus"], "used": round(sum(lease.cpus for lease in held), 3)},
                          "memory": {"capacity": cap["memory"], "used": sum(lease.memory for lease in held)}},
        }
