"""Schedules: one parser (croniter) for cron and the supervisor; `factory cron` and its
block in the user's crontab; the supervisor's own timetable (sense.scheduler: supervisor).

The user's real crontab is never touched: every test runs a stand-in crontab program
(FACTORY_CRONTAB) that keeps the crontab in a file of the test's own."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from datetime import datetime, timedelta

import pytest
from conftest import BIN, ROOT, run_tool

from factory import config, crontab, schedules

FAKE_CRONTAB = """#!/bin/sh
# crontab(1) as far as factory uses it; the crontab is the file $FAKE_CRONTAB_FILE
case "$1" in
  -l) [ -f "$FAKE_CRONTAB_FILE" ] || { echo "no crontab for $(id -un)" >&2; exit 1; }
      exec cat "$FAKE_CRONTAB_FILE" ;;
  -)  [ -z "$FAKE_CRONTAB_REFUSE" ] || { echo "$FAKE_CRONTAB_REFUSE" >&2; exit 1; }
      echo write >> "$FAKE_CRONTAB_FILE.writes"
      exec cat > "$FAKE_CRONTAB_FILE" ;;
  *)  echo "fake crontab: unexpected arguments: $*" >&2; exit 2 ;;
esac
"""

USERS_OWN = (b"MAILTO=ann@example.org\n"
             b"SHELL=/bin/bash\n"
             b"# m h dom mon dow command\n"
             b"\n"
             b"15 3 * * * /home/ann/backup.sh --caf\xe9  # not UTF-8, kept as it is\n")

SCHEDULED = ("sensors:\n"
             "  tests:\n"
             "    command: pytest -q\n"
             "    schedule: '*/15 * * * *'\n"
             "  docs:\n"
             "    prompt: Do the docs say what the code does?\n"
             "    schedule: null\n"
             "adversaries:\n"
             "  parser:\n"
             "    prompt: Find an input that crashes the parser.\n")


def executable(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def cron_env(tool_env, tmp_path):
    """The tools' environment with a stand-in crontab whose file is cron_env['FAKE_CRONTAB_FILE']."""
    fake = executable(tmp_path / "fake-crontab", FAKE_CRONTAB)
    return dict(tool_env, FACTORY_CRONTAB=str(fake), FAKE_CRONTAB_FILE=str(tmp_path / "crontab.txt"))


def the_crontab(env) -> bytes | None:
    try:
        with open(env["FAKE_CRONTAB_FILE"], "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def writes(env) -> int:
    try:
        with open(env["FAKE_CRONTAB_FILE"] + ".writes") as f:
            return len(f.read().split())
    except FileNotFoundError:
        return 0


def new_repo(path, factory_yaml=SCHEDULED):
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / "factory.yaml").write_text(factory_yaml)
    return path


def factory(args, repo, env):
    return run_tool([os.path.join(BIN, "factory"), *args], cwd=repo, env=env)


def block_lines(text: bytes, repo) -> list[bytes]:
    top = os.path.realpath(repo).encode()
    lines = text.split(b"\n")
    first, last = lines.index(b"# BEGIN factory " + top), lines.index(b"# END factory " + top)
    return lines[first:last + 1]


# -- schedules -------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["0 * * * *", "*/15 9-17 * * 1-5", "30 2 1,15 * *", "0 0 * jan-mar mon",
                                      "0 0 29 2 *", "@hourly", "@daily", "@midnight", "@weekly", "@monthly",
                                      "@yearly", "@annually"])
def test_schedules_cron_and_croniter_read_alike_are_taken(schedule):
    assert schedules.check(schedule) is None
    assert schedules.next_after(schedule, datetime(2026, 3, 1, 12, 0)) > datetime(2026, 3, 1, 12, 0)


@pytest.mark.parametrize("schedule,why", [
    ("hourly", "it has 1 fields, not 5"),
    ("* * * * * *", "it has 6 fields, not 5"),       # croniter's seconds: cron would read a command
    ("0 0 L * *", "its day of month field 'L'"),       # croniter's own
    ("H * * * *", "its minute field 'H'"),
    ("0 0 ? * *", "its day of month field '?'"),
    ("0 0 * * 1#2", "its day of week field '1#2'"),
    ("0 0 * mon *", "holds 'mon', which cron does not read here"),
    ("5-1 * * * *", "the range 5-1, which runs backwards"),  # croniter would wrap around
    ("61 * * * *", "out of range"),
    ("*/0 * * * *", "step '0'"),
    ("0 0 31 2 *", "never comes due"),
    ("@reboot", "runs at boot"),
    ("@HOURLY", "nicknames: @yearly"),
    ("0 * * * *\n* * * * * rm -rf ~", "control character"),
])
def test_schedules_refused_say_why(schedule, why):
    err = schedules.check(schedule)
    assert err and why in err, err


def test_latest_at_includes_its_own_minute_and_next_after_excludes_it():
    noon = datetime(2026, 3, 1, 12, 0)
    assert schedules.latest_at("0 * * * *", noon) == noon
    assert schedules.latest_at("0 * * * *", noon + timedelta(seconds=59)) == noon
    assert schedules.latest_at("0 * * * *", noon - timedelta(seconds=1)) == noon - timedelta(hours=1)
    assert schedules.next_after("0 * * * *", noon) == noon + timedelta(hours=1)
    assert schedules.due("0 * * * *", noon - timedelta(minutes=1), noon)
    assert not schedules.due("0 * * * *", noon, noon + timedelta(minutes=59))


def test_timetable_fires_each_due_time_once_and_nothing_from_before_its_start():
    cfg = config.parse(SCHEDULED)
    start = datetime(2026, 3, 1, 12, 7, 30)
    t = schedules.Timetable(cfg, start)
    assert t.due_now(start) == [], "nothing due before the start fires at the start (a restart fires nothing)"
    assert t.due_now(datetime(2026, 3, 1, 12, 14, 59)) == []
    assert t.due_now(datetime(2026, 3, 1, 12, 15, 0)) == [("sensor", "tests")]
    assert t.due_now(datetime(2026, 3, 1, 12, 15, 1)) == [], "once per due time"
    assert t.due_now(datetime(2026, 3, 1, 12, 29, 59)) == []
    assert t.next_due() == datetime(2026, 3, 1, 12, 30)
    assert t.due_now(datetime(2026, 3, 2, 0, 0, 5)) == [("sensor", "tests"), ("adversary", "parser")]
    assert "docs" not in t.entries, "schedule: null runs only by hand"


def test_timetable_after_a_long_gap_fires_once_not_a_burst():
    t = schedules.Timetable(config.parse(SCHEDULED), datetime(2026, 3, 1, 12, 0, 10))
    later = datetime(2026, 3, 4, 9, 40)  # three days asleep: hundreds of quarter hours missed
    assert t.due_now(later) == [("sensor", "tests"), ("adversary", "parser")]
    assert t.due_now(later + timedelta(seconds=30)) == []
    assert t.next_due() == datetime(2026, 3, 4, 9, 45), "goes on from the latest missed time"
    assert t.due_now(datetime(2026, 3, 4, 9, 45)) == [("sensor", "tests")]


def test_timetable_follows_a_changed_config():
    start = datetime(2026, 3, 1, 12, 0, 10)
    t = schedules.Timetable(config.parse(SCHEDULED), start)
    changed = config.parse(SCHEDULED.replace("'*/15 * * * *'", "'@hourly'")
                           + "  fuzz:\n    prompt: fuzz it\n    schedule: '*/5 * * * *'\n")
    t.update(changed, datetime(2026, 3, 1, 12, 20))
    assert set(t.entries) == {"tests", "parser", "fuzz"}
    assert t.due_now(datetime(2026, 3, 1, 12, 25)) == [("adversary", "fuzz")]
    assert t.due_now(datetime(2026, 3, 1, 13, 0)) == [("sensor", "tests"), ("adversary", "fuzz")]
    t.update(config.parse("sensors: {}\n"), datetime(2026, 3, 1, 13, 1))
    assert t.entries == {} and t.next_due() is None


# -- factory.yaml -----------------------------------------------------------------------

@pytest.mark.parametrize("text,message", [
    ("sensors:\n  tests:\n    command: pytest\n    schedule: '* * * * * *'\n",
     "line 4: sensors.tests.schedule: '* * * * * *' is not a cron schedule"),
    ("adversaries:\n  fuzz:\n    prompt: p\n    schedule: '@reboot'\n", "line 4: adversaries.fuzz.schedule: '@reboot'"),
    ("adversaries:\n  fuzz:\n    schedule: '@daily'\n", "adversaries.fuzz.prompt: is required"),
    ("adversaries:\n  fuzz:\n    prompt: p\n    target: staging\n", "line 4: adversaries.fuzz.target: is 'staging'"),
    ("sensors:\n  t:\n    command: x\n    target: prod\n", "line 4: sensors.t.target: is 'prod'"),
    ("sensors:\n  a:\n    command: x\nadversaries:\n  a:\n    prompt: p\n",
     "line 5: adversaries.a: sensors.a has this name too"),
    ("sense:\n  scheduler: anacron\n", "line 2: sense.scheduler: is 'anacron'; it must be one of: cron, supervisor"),
    ("sense:\n  min_precision: 1.5\n", "line 2: sense.min_precision: is 1.5; it must be at most 1.0"),
])
def test_bad_sense_config_names_the_key_and_line(text, message):
    with pytest.raises(config.ConfigError) as e:
        config.parse(text)
    assert message in str(e.value)


def test_sense_defaults():
    cfg = config.parse("sensors:\n  t:\n    command: x\nadversaries:\n  a:\n    prompt: p\n")
    assert cfg["sense"] == {"scheduler": "cron", "min_precision": 0.5}
    assert (cfg["sensors"]["t"]["schedule"], cfg["sensors"]["t"]["target"]) == ("@hourly", "main")
    assert (cfg["adversaries"]["a"]["schedule"], cfg["adversaries"]["a"]["target"]) == ("@daily", "main")


def test_a_bad_schedule_is_refused_by_factory_cron_naming_key_and_line(tmp_path, cron_env):
    repo = new_repo(tmp_path / "r", "sensors:\n  tests:\n    command: pytest\n    schedule: every hour\n")
    (tmp_path / "crontab.txt").write_bytes(USERS_OWN)
    for args in (["cron"], ["cron", "install"]):
        r = factory(args, repo, cron_env)
        assert r.returncode == 2, r.stderr
        assert "factory.yaml line 4: sensors.tests.schedule: 'every hour' is not a cron schedule" in r.stderr
        assert r.stdout == ""
    assert the_crontab(cron_env) == USERS_OWN and writes(cron_env) == 0


# -- the crontab block, as text ----------------------------------------------------------------

BEGIN, END = "# BEGIN factory /r", "# END factory /r"
BLOCK = f"{BEGIN}\n@daily x\n{END}\n"


def test_set_block_adds_replaces_and_removes_only_its_own_lines():
    own = "MAILTO=a\n# c\n0 1 * * * b\n"
    added = crontab.set_block(own, BEGIN, END, BLOCK)
    assert added == own + BLOCK
    assert crontab.set_block(added, BEGIN, END, BLOCK) == added
    replaced = crontab.set_block(added + "5 5 * * * after\n", BEGIN, END, f"{BEGIN}\n@hourly y\n{END}\n")
    assert replaced == own + f"{BEGIN}\n@hourly y\n{END}\n" + "5 5 * * * after\n"
    assert crontab.set_block(replaced, BEGIN, END, None) == own + "5 5 * * * after\n"
    assert crontab.set_block("", BEGIN, END, BLOCK) == BLOCK
    assert crontab.set_block("0 1 * * * no newline", BEGIN, END, BLOCK) == "0 1 * * * no newline\n" + BLOCK
    assert crontab.set_block(own, BEGIN, END, None) == own
    # another repository's markers are lines like any other
    other = "# BEGIN factory /r2\n@daily z\n# END factory /r2\n"
    assert crontab.set_block(other + BLOCK, BEGIN, END, None) == other


@pytest.mark.parametrize("text", [f"{BEGIN}\n@daily x\n", f"@daily x\n{END}\n", f"{END}\n{BEGIN}\n",
                                  f"{BLOCK}{BLOCK}"])
def test_set_block_refuses_broken_markers(text):
    with pytest.raises(crontab.BrokenBlock) as e:
        crontab.set_block(text, BEGIN, END, BLOCK)
    assert "nothing was changed" in str(e.value)


# -- factory cron, install, uninstall -------------------------------------------------------

def test_install_twice_leaves_one_block_and_uninstall_removes_exactly_it(tmp_path, cron_env):
    repo = new_repo(tmp_path / "calc")
    (tmp_path / "crontab.txt").write_bytes(USERS_OWN)
    printed = factory(["cron"], repo, cron_env)
    assert printed.returncode == 0, printed.stderr
    r = factory(["cron", "install"], repo, cron_env)
    assert r.returncode == 0, r.stderr
    once = the_crontab(cron_env)
    assert once.startswith(USERS_OWN), "every other line stays as it was, byte for byte"
    assert once[len(USERS_OWN):] == printed.stdout.encode(), "what factory cron prints is what it installs"
    assert len(block_lines(once, repo)) == 2 + 3 + 2, "2 markers, a 3-line comment, a line per schedule"
    r = factory(["cron", "install"], repo, cron_env)
    assert r.returncode == 0 and "up to date" in r.stderr, r.stderr
    assert the_crontab(cron_env) == once and writes(cron_env) == 1, "the second install wrote nothing"
    r = factory(["cron", "uninstall"], repo, cron_env)
    assert r.returncode == 0, r.stderr
    assert the_crontab(cron_env) == USERS_OWN
    r = factory(["cron", "uninstall"], repo, cron_env)
    assert r.returncode == 0 and "nothing to remove" in r.stderr
    assert writes(cron_env) == 2


def test_a_changed_schedule_replaces_the_block_in_place(tmp_path, cron_env):
    repo = new_repo(tmp_path / "calc")
    (tmp_path / "crontab.txt").write_bytes(USERS_OWN)
    assert factory(["cron", "install"], repo, cron_env).returncode == 0
    after = b"0 4 * * * /home/ann/after-factory.sh\n"
    (tmp_path / "crontab.txt").write_bytes(the_crontab(cron_env) + after)
    (repo / "factory.yaml").write_text(SCHEDULED.replace("*/15 * * * *", "0 9 * * mon-fri"))
    assert factory(["cron", "install"], repo, cron_env).returncode == 0
    text = the_crontab(cron_env)
    assert text.startswith(USERS_OWN) and text.endswith(after)
    lines = block_lines(text, repo)
    assert any(line.startswith(b"0 9 * * mon-fri cd ") for line in lines)
    assert not any(b"*/15" in line for line in lines)


def test_two_repositories_keep_a_block_each(tmp_path, cron_env):
    one, two = new_repo(tmp_path / "one"), new_repo(tmp_path / "two")
    (tmp_path / "crontab.txt").write_bytes(USERS_OWN)
    assert factory(["cron", "install"], one, cron_env).returncode == 0
    with_one = the_crontab(cron_env)
    assert factory(["cron", "install"], two, cron_env).returncode == 0
    both = the_crontab(cron_env)
    assert both.startswith(with_one) and block_lines(both, one) and block_lines(both, two)
    assert factory(["cron", "install"], one, cron_env).returncode == 0
    assert the_crontab(cron_env) == both
    assert factory(["cron", "uninstall"], one, cron_env).returncode == 0
    left = the_crontab(cron_env)
    assert left == USERS_OWN + both[len(with_one):], "two's block, as it was"
    assert factory(["cron", "uninstall"], two, cron_env).returncode == 0
    assert the_crontab(cron_env) == USERS_OWN


def test_a_user_without_a_crontab(tmp_path, cron_env):
    repo = new_repo(tmp_path / "calc")
    r = factory(["cron", "uninstall"], repo, cron_env)
    assert r.returncode == 0 and "nothing to remove" in r.stderr, r.stderr
    assert the_crontab(cron_env) is None, "nothing written"
    r = factory(["cron", "install"], repo, cron_env)
    assert r.returncode == 0, r.stderr
    text = the_crontab(cron_env)
    assert text.startswith(b"# BEGIN factory ")
    assert text.endswith(b"# END factory " + os.path.realpath(repo).encode() + b"\n")
    assert factory(["cron", "uninstall"], repo, cron_env).returncode == 0
    assert the_crontab(cron_env) == b""


@pytest.mark.parametrize("broken", [b"# BEGIN factory {top}\n@daily old\n", b"@daily old\n# END factory {top}\n"])
def test_a_broken_block_is_refused_and_nothing_changes(tmp_path, cron_env, broken):
    repo = new_repo(tmp_path / "calc")
    text = USERS_OWN + broken.replace(b"{top}", str(repo).encode())
    (tmp_path / "crontab.txt").write_bytes(text)
    for args in (["cron", "install"], ["cron", "uninstall"]):
        r = factory(args, repo, cron_env)
        assert r.returncode == 1, r.stderr
        assert "nothing was changed" in r.stderr and "crontab -e" in r.stderr
        assert the_crontab(cron_env) == text and writes(cron_env) == 0


def test_crontab_failures_change_nothing_and_exit_1(tmp_path, cron_env):
    repo = new_repo(tmp_path / "calc")
    (tmp_path / "crontab.txt").write_bytes(USERS_OWN)
    r = factory(["cron", "install"], repo, dict(cron_env, FAKE_CRONTAB_REFUSE='"-":7: bad minute'))
    assert r.returncode == 1 and "crontab refused the new crontab" in r.stderr and "bad minute" in r.stderr
    assert the_crontab(cron_env) == USERS_OWN
    r = factory(["cron", "install"], repo, dict(cron_env, FACTORY_CRONTAB=str(tmp_path / "no-such-crontab")))
    assert r.returncode == 1 and "no crontab program" in r.stderr and "./setup" in r.stderr


def test_the_line_names_the_repository_absolutely_and_keeps_the_output(tmp_path, cron_env):
    repo = new_repo(tmp_path / "my calc 100%")
    r = factory(["cron", "--log"], repo, dict(cron_env, FACTORY_STATE_DIR="state"))  # relative: made absolute
    assert r.returncode == 0, r.stderr
    assert "/dev/null" not in r.stdout
    top = os.path.realpath(repo)
    assert r.stdout.startswith(f"# BEGIN factory {top}\n")
    sensor = next(line for line in r.stdout.splitlines() if line.startswith("*/15 * * * * "))
    cron_word = lambda path: shlex.quote(path).replace("%", "\\%")  # noqa: E731
    assert f"cd {cron_word(top)} && PATH=" in sensor, "quoted for sh; % escaped for cron"
    assert f"{BIN}/factory-slot sensor -- {BIN}/factory-sense tests --file >> " in sensor
    assert sensor.endswith(f" >> {cron_word(os.path.join(top, 'state', 'cron.log'))} 2>&1")
    assert f" FACTORY_STATE_DIR={cron_word(os.path.join(top, 'state'))} " in sensor
    daily = [line for line in r.stdout.splitlines() if line.startswith("@daily ")]
    assert len(daily) == 1 and "factory-slot adversary -- " in daily[0] and "factory-sense parser --file" in daily[0]
    assert "docs" not in r.stdout, "schedule: null is not scheduled"
    listed = [json.loads(line) for line in factory(["cron", "--json", "--log"], repo, cron_env).stdout.splitlines()]
    assert [(x["kind"], x["name"], x["schedule"]) for x in listed] == [("sensor", "tests", "*/15 * * * *"),
                                                                        ("adversary", "parser", "@daily")]
    assert datetime.fromisoformat(listed[0]["next"]).minute % 15 == 0


def test_chronic_where_a_mailer_can_send_what_it_prints(tmp_path, cron_env):
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    for name in ("chronic", "sendmail"):
        executable(fakes / name, "#!/bin/sh\nexit 0\n")
    env = dict(cron_env, PATH=f"{fakes}{os.pathsep}{cron_env['PATH']}")
    repo = new_repo(tmp_path / "calc")
    r = factory(["cron"], repo, env)
    assert r.returncode == 0, r.stderr
    sensor = next(line for line in r.stdout.splitlines() if line.startswith("*/15 "))
    assert f" {fakes}/chronic {BIN}/factory-slot sensor -- " in sensor
    assert ">>" not in sensor and "/dev/null" not in sensor
    logged = factory(["cron", "--log"], repo, env).stdout
    assert f"{fakes}/chronic" not in logged and "cron.log 2>&1" in logged


def test_a_crontab_line_runs_under_a_bare_environment(tmp_path, cron_env):
    """What cron runs: the command part of the line, % processed as cron does, by sh with
    no environment but HOME and SHELL. The tools the line names are stand-ins that record
    where and how they ran."""
    tools = tmp_path / "tools"
    tools.mkdir()
    executable(tools / "factory", f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {os.path.join(ROOT, 'lib')!r})\n"
                                  "from factory.cmd_factory import main\nsys.exit(main())\n")
    executable(tools / "factory-slot", '#!/bin/sh\necho "slot $*" >> "$0.ran"\n'
                                       'while [ "$1" != -- ]; do shift; done; shift; exec "$@"\n')
    executable(tools / "factory-sense", '#!/bin/sh\necho "sense $* in $(pwd)" >> "$0.ran"\n'
                                        'echo "sensing $1"; echo "a warning" >&2\n'
                                        'command -v factory-slot >> "$0.ran"\n')
    repo = new_repo(tmp_path / "my calc 100%")
    r = run_tool([str(tools / "factory"), "cron", "install", "--log"], cwd=repo, env=cron_env)
    assert r.returncode == 0, r.stderr
    line = next(line for line in the_crontab(cron_env).decode().splitlines() if line.startswith("*/15 "))
    command = line.split(" ", 5)[5].replace("\\%", "%")
    assert "%" not in command.replace("100%", ""), "no unescaped % left for cron to turn into a newline"
    p = subprocess.run(["sh", "-c", command], env={"HOME": str(tmp_path), "SHELL": "/bin/sh"},
                       cwd="/", capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout == "" and p.stderr == "", "the output went to the log"
    assert (tools / "factory-slot.ran").read_text() == f"slot sensor -- {tools}/factory-sense tests --file\n"
    assert (tools / "factory-sense.ran").read_text() == (f"sense tests --file in {os.path.realpath(repo)}\n"
                                                         f"{tools}/factory-slot\n"), "PATH finds the tools"
    assert (repo / ".git" / "factory" / "cron.log").read_text() == "sensing tests\na warning\n"


def test_nothing_scheduled(tmp_path, cron_env):
    repo = new_repo(tmp_path / "calc")
    (tmp_path / "crontab.txt").write_bytes(USERS_OWN)
    assert factory(["cron", "install"], repo, cron_env).returncode == 0
    (repo / "factory.yaml").write_text("sensors:\n  t:\n    command: x\n    schedule: null\n")
    r = factory(["cron"], repo, cron_env)
    assert r.returncode == 0 and r.stdout == "" and "nothing is scheduled" in r.stderr
    r = factory(["cron", "install"], repo, cron_env)
    assert r.returncode == 0 and "removed the block" in r.stderr, r.stderr
    assert the_crontab(cron_env) == USERS_OWN


def test_install_is_refused_while_the_supervisor_fires_the_schedules(tmp_path, cron_env):
    repo = new_repo(tmp_path / "calc", SCHEDULED + "sense:\n  scheduler: supervisor\n")
    (tmp_path / "crontab.txt").write_bytes(USERS_OWN)
    r = factory(["cron", "install"], repo, cron_env)
    assert r.returncode == 2 and "sense.scheduler: supervisor" in r.stderr and "Nothing was changed" in r.stderr
    assert the_crontab(cron_env) == USERS_OWN and writes(cron_env) == 0
    r = factory(["cron"], repo, cron_env)
    assert r.returncode == 0 and r.stdout and "do not install them too" in r.stderr


def test_uninstall_does_not_need_a_valid_config(tmp_path, cron_env):
    repo = new_repo(tmp_path / "calc")
    (tmp_path / "crontab.txt").write_bytes(USERS_OWN)
    assert factory(["cron", "install"], repo, cron_env).returncode == 0
    (repo / "factory.yaml").write_text("merge: sometimes\n")
    assert factory(["cron", "install"], repo, cron_env).returncode == 2
    r = factory(["cron", "uninstall"], repo, cron_env)
    assert r.returncode == 0, r.stderr
    assert the_crontab(cron_env) == USERS_OWN


# -- the supervisor fires the schedules itself (sense.scheduler: supervisor) --------------------

@pytest.fixture
def fake_tools(tmp_path):
    """factory-slot and factory-sense stand-ins: each records its arguments; factory-sense
    waits until the test lets it go (it reads a FIFO), so that a run's end is the test's
    to choose, never a matter of timing."""
    tools = tmp_path / "tools"
    tools.mkdir()
    os.mkfifo(tmp_path / "go")
    executable(tools / "factory-slot", '#!/bin/sh\necho "slot $*" >> "$0.ran"\n'
                                       'while [ "$1" != -- ]; do shift; done; shift; exec "$@"\n')
    executable(tools / "factory-sense", f'#!/bin/sh\necho "sense $*" >> "$0.ran"\ncat {tmp_path / "go"} >/dev/null\n'
                                        'echo "sensed $2"\n')
    return tools


def test_the_supervisor_starts_a_due_schedule_once_and_one_run_per_name(tmp_path, fake_tools, monkeypatch):
    import io

    from factory.gitstore import Repo
    from factory.supervisor import Supervisor
    repo = new_repo(tmp_path / "calc", SCHEDULED + "sense:\n  scheduler: supervisor\n")
    monkeypatch.setenv("FACTORY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("FACTORY_CONFIG", raising=False)
    r = Repo(str(repo))
    sup = Supervisor(r, config.load(str(repo)), out=io.StringIO(), bin_dir=str(fake_tools))
    os.makedirs(sup.logs)
    start = datetime(2026, 3, 1, 12, 7)
    sup.fill_sense(start)
    assert sup.agents == [], "nothing due at the start"
    sup.fill_sense(datetime(2026, 3, 1, 12, 15))
    assert [(a.kind, a.phase, a.name) for a in sup.agents] == [("sensor", "sense", "tests")]
    sup.fill_sense(datetime(2026, 3, 1, 12, 30))  # due again while the first run goes on
    assert len(sup.agents) == 1, "one run per name at a time"
    with open(tmp_path / "go", "w"):
        pass  # let the run end
    sup.agents[0].proc.wait(timeout=30)
    sup.collect()
    assert sup.agents == []
    assert (fake_tools / "factory-slot.ran").read_text() == f"slot -q sensor -- {fake_tools}/factory-sense -q tests --file\n"
    assert (fake_tools / "factory-sense.ran").read_text() == "sense -q tests --file\n"
    assert (tmp_path / "state" / "logs" / "sense-tests.log").read_text() == "sensed tests\n"
    sup.fill_sense(datetime(2026, 3, 1, 12, 44))
    assert sup.agents == [], "12:30 was skipped, not made up"


def test_the_supervisor_leaves_schedules_to_cron_by_default(tmp_path, fake_tools, monkeypatch):
    import io

    from factory.gitstore import Repo
    from factory.supervisor import Supervisor
    repo = new_repo(tmp_path / "calc")
    monkeypatch.setenv("FACTORY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("FACTORY_CONFIG", raising=False)
    sup = Supervisor(Repo(str(repo)), config.load(str(repo)), out=io.StringIO(), bin_dir=str(fake_tools))
    sup.fill_sense(datetime(2026, 3, 1, 12, 7))
    sup.fill_sense(datetime(2026, 3, 2, 12, 7))
    assert sup.agents == [] and not (fake_tools / "factory-slot.ran").exists()


def test_factory_start_until_idle_does_not_wait_for_a_schedule(tmp_path, tool_env):
    """No Docker needed: with no issue and nothing due at the start, it starts nothing and
    exits (the engine's absence is only a warning when nothing needs it)."""
    repo = new_repo(tmp_path / "calc", "sense:\n  scheduler: supervisor\nsensors:\n  t:\n"
                                       "    command: x\n    schedule: '* * * * *'\n")
    env = dict(tool_env, ANTHROPIC_API_KEY="sk-ant-test-x", DOCKER_HOST="unix:///nonexistent/docker.sock",
               FACTORY_STATE_DIR=str(tmp_path / "state"))
    r = run_tool([os.path.join(BIN, "factory"), "start", "--until-idle"], cwd=repo, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].endswith("kernel:stopped")
    assert not [n for n in os.listdir(tmp_path / "state" / "logs") if n.startswith("sense-")]


def test_the_template_in_cron_is_what_factory_cron_writes():
    from factory import cron
    cfg = config.parse("sensors:\n  tests:\n    command: pytest -q\n    schedule: '0 * * * *'\n"
                       "adversaries:\n  parser:\n    prompt: Find an input that crashes the parser.\n")
    top, bin_dir = "/home/ann/calc", "/home/ann/calc/.venv/bin"
    lines = cron.lines(cfg, top, slot=f"{bin_dir}/factory-slot", sense=f"{bin_dir}/factory-sense",
                       path=f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", log=f"{top}/.git/factory/cron.log", chronic=None)
    with open(os.path.join(ROOT, "cron", "factory.crontab")) as f:
        assert cron.block(top, lines) in f.read()


def test_a_line_longer_than_cron_reads_is_refused(tmp_path, cron_env):
    deep = tmp_path.joinpath(*(c * 200 for c in "abcde"))  # over 999 characters by itself
    deep.mkdir(parents=True)
    repo = new_repo(deep / "calc")
    (tmp_path / "crontab.txt").write_bytes(USERS_OWN)
    for args in (["cron"], ["cron", "install"]):
        r = factory(args, repo, cron_env)
        assert r.returncode == 2, r.stderr
        assert "cron reads no more than 999" in r.stderr and "nothing was changed" in r.stderr
    assert the_crontab(cron_env) == USERS_OWN and writes(cron_env) == 0


def test_the_line_sets_a_short_path_and_flags_before_install_count(tmp_path, cron_env):
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    for name in ("chronic", "sendmail"):
        executable(fakes / name, "#!/bin/sh\nexit 0\n")
    env = dict(cron_env, PATH=f"{fakes}{os.pathsep}/nonexistent/elsewhere{os.pathsep}{cron_env['PATH']}")
    repo = new_repo(tmp_path / "calc")
    assert factory(["cron", "--log", "install"], repo, env).returncode == 0
    text = the_crontab(env).decode()
    assert text.count("cron.log 2>&1") == 2 and f"{fakes}/chronic" not in text, "factory cron --log install"
    assert "/nonexistent/elsewhere" not in text, "not the whole of this shell's PATH"
    path = text.split(" PATH=")[1].split(" ")[0].split(":")
    assert path[0] == BIN and {"/usr/local/bin", "/usr/bin", "/bin"} <= set(path) and len(path) == len(set(path))
    r = factory(["cron", "--json", "install"], repo, env)
    assert r.returncode == 2 and "--json is for printing the lines" in r.stderr


def test_the_supervisor_wakes_for_the_next_due_time_but_never_spins(tmp_path, monkeypatch):
    import io

    from factory import supervisor
    from factory.gitstore import Repo
    repo = new_repo(tmp_path / "calc")
    monkeypatch.setenv("FACTORY_STATE_DIR", str(tmp_path / "state"))
    sup = supervisor.Supervisor(Repo(str(repo)), config.load(str(repo)), out=io.StringIO())
    assert sup.sleep_for() == supervisor.POLL_S, "no timetable: the usual poll"
    now = datetime.now()
    sup.timetable = schedules.Timetable(config.parse(SCHEDULED), now)
    entry = sup.timetable.entries["tests"]
    entry.next = now + timedelta(seconds=0.5)
    assert 0 < sup.sleep_for() <= 0.5
    entry.next = now - timedelta(seconds=5)  # due, but it could not fire (the engine is down)
    assert sup.sleep_for() == supervisor.POLL_S
