"""When things are due: the cron schedules of sensors and adversaries.

One parser for both schedulers, system cron (`factory cron`) and the supervisor
(`sense.scheduler: supervisor`): croniter, a maintained library. A schedule is what both
cron and croniter read the same way: five fields of numbers, `*`, ranges, lists, steps
and month or weekday names, or a nickname (@hourly, @daily, @midnight, @weekly,
@monthly, @yearly, @annually). croniter's extensions that cron would misread (a sixth
field for seconds, L, W, #, ?, H) are refused, and so is @reboot, which has no time.

Times are the machine's local wall clock, as cron reads it: naive datetimes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

NICKNAMES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
FIELDS = ("minute", "hour", "day of month", "month", "day of week")
HINT = "is not a cron schedule such as '0 * * * *' or @daily"


class ScheduleError(ValueError):
    pass


def check(schedule) -> str | None:
    """Why `schedule` is not a schedule that cron and croniter read alike, or None."""
    if not isinstance(schedule, str) or not schedule.strip():
        return f"{schedule!r} {HINT}"
    if re.search(r"[\x00-\x1f\x7f]", schedule):  # a newline would end the crontab line
        return f"{schedule!r} holds a control character (newline, tab, ...); give one such as '0 * * * *' or @daily"
    text = schedule.strip()
    if text.startswith("@"):
        if text == "@reboot":
            return "'@reboot' runs at boot, which the supervisor cannot follow; give a time such as @daily"
        if text not in NICKNAMES:
            return f"{schedule!r} {HINT} (nicknames: {', '.join(NICKNAMES)})"
    else:
        fields = text.split()
        if len(fields) != 5:
            return f"{schedule!r} {HINT}: it has {len(fields)} fields, not 5 ({', '.join(FIELDS)})"
        for n, part in enumerate(fields):
            why = _field_problem(n, part)
            if why:
                return f"{schedule!r} {HINT}: its {FIELDS[n]} field {part!r} {why}"
    from croniter import CroniterBadDateError, CroniterError, croniter
    try:
        croniter(text, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:  # croniter looked years ahead and found no such day
        return f"{schedule!r} never comes due (no such date)"
    except CroniterError as e:
        detail = str(e).removeprefix(f"[{text}] ").replace("is not acceptable, ", "")
        return f"{schedule!r} {HINT} (croniter: {detail})"
    return None


def _field_problem(n: int, part: str) -> str | None:
    """What in one field cron would reject or read otherwise than croniter, if anything."""
    names = MONTHS if n == 3 else WEEKDAYS if n == 4 else ()
    if not re.fullmatch(r"[0-9A-Za-z*,/-]+", part):
        return "holds a character cron does not read (L, W, #, ? and H are croniter's own)"
    for word in re.findall(r"[A-Za-z]+", part):
        if word.lower() not in names:
            return f"holds {word!r}, which cron does not read here"
    for a, b in re.findall(r"(\w+)-(\w+)", part):
        # croniter wraps a backward range around; cron refuses it
        value = lambda w: int(w) if w.isdigit() else names.index(w.lower()) + (n == 3)  # noqa: E731
        if value(a) > value(b):
            return f"has the range {a}-{b}, which runs backwards"
    return None


def parse(schedule: str) -> str:
    """The schedule, stripped; ScheduleError if it is not one (see check)."""
    err = check(schedule)
    if err:
        raise ScheduleError(err)
    return schedule.strip()


def next_after(schedule: str, t: datetime) -> datetime:
    """The first time strictly after `t` at which `schedule` is due."""
    from croniter import croniter
    return croniter(parse(schedule), t).get_next(datetime)


def latest_at(schedule: str, t: datetime) -> datetime:
    """The last time at or before `t` at which `schedule` is due."""
    from croniter import croniter
    # Due times fall on whole minutes, and croniter's get_prev is strictly before its
    # start: from the next whole minute, it includes t's own minute.
    start = t.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return croniter(parse(schedule), start).get_prev(datetime)


def due(schedule: str, last_fired: datetime, now: datetime) -> bool:
    """Whether `schedule` has come due after `last_fired`, by `now`."""
    return latest_at(schedule, now) > last_fired


# -- what is scheduled -------------------------------------------------------------------

SCHEDULED_KINDS = (("sensors", "sensor"), ("adversaries", "adversary"))


def scheduled(cfg: dict) -> list[tuple[str, str, str]]:
    """(kind, name, schedule) of every sensor and adversary with a schedule, in the
    config's order of sections, names sorted. `schedule: null` runs only by hand."""
    out = []
    for section, kind in SCHEDULED_KINDS:
        for name, entry in sorted((cfg.get(section) or {}).items()):
            if entry.get("schedule"):
                out.append((kind, name, entry["schedule"]))
    return out


# -- the supervisor's cron -----------------------------------------------------------------

@dataclass
class Entry:
    kind: str
    schedule: str
    last: datetime      # the due time it last fired for (or the time it was first seen)
    next: datetime      # the first due time after `last`


class Timetable:
    """Which schedules are due, for `sense.scheduler: supervisor`. Kept in memory only:
    like cron, it fires at due times that pass while it runs, never for those before.

    Each schedule fires at most once per due time. After a gap (the machine slept, the
    config was invalid for a while) only the latest due time that was missed fires, once:
    never a burst. Give it the time explicitly; nothing here reads the clock."""

    def __init__(self, cfg: dict, start: datetime):
        self.entries: dict[str, Entry] = {}
        self.update(cfg, start)

    def update(self, cfg: dict, now: datetime) -> None:
        """Follow a changed config: a new or rescheduled entry starts from `now`; an
        unchanged one keeps what it has fired; a removed one goes."""
        entries = {}
        for kind, name, schedule in scheduled(cfg):
            old = self.entries.get(name)
            if old and old.kind == kind and old.schedule == schedule:
                entries[name] = old
            else:
                entries[name] = Entry(kind, schedule, now, next_after(schedule, now))
        self.entries = entries

    def due_now(self, now: datetime) -> list[tuple[str, str]]:
        """(kind, name) of each schedule due by `now` that has not fired for that time;
        each is marked as fired."""
        out = []
        for name, e in self.entries.items():
            if now >= e.next:
                e.last = latest_at(e.schedule, now)  # the latest missed time only
                e.next = next_after(e.schedule, e.last)
                out.append((e.kind, name))
        return out

    def next_due(self) -> datetime | None:
        """When the next schedule comes due, if any is kept."""
        return min((e.next for e in self.entries.values()), default=None)
