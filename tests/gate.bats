#!/usr/bin/env bats
# Black-box: the gate's pipe as a person types it, on a real Docker engine.
#   factory-issue list --state review | factory-gate | factory-postmortem --failed-only

setup() {
  if ! docker info >/dev/null 2>&1; then
    [ -z "${CI:-}" ] || { echo "no Docker engine answers, and under CI one must" >&2; return 1; }
    skip "no Docker engine answers (run scripts/ensure-docker)"
  fi
  export PATH="$BATS_TEST_DIRNAME/../bin:$PATH"
  export FACTORY_ACTOR=human:bats GIT_AUTHOR_NAME=b GIT_AUTHOR_EMAIL=b@b GIT_COMMITTER_NAME=b GIT_COMMITTER_EMAIL=b@b
  unset ANTHROPIC_API_KEY  # no model answers: the postmortem is the factual one
  REPO="$(mktemp -d)"
  git init -q -b main "$REPO"
  cd "$REPO"
  printf 'def add(a, b):\n    return a - b\n' > calc.py
  printf 'import unittest\nfrom calc import add\n\n\nclass T(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n' > test_calc.py
  printf 'gate:\n  checks: ["python3 -m unittest -q test_calc"]\nbudgets:\n  retry_backoff_seconds: 0\n' > factory.yaml
  git add -A && git commit -qm "calc with a bug"
}

teardown() {
  cd / && rm -rf "$REPO"
}

# An issue in review whose branch claims a fix that changes nothing that matters.
false_claim() {
  id=$(echo '{"title": "add() subtracts"}' | factory-issue file | jq -r .id)
  git checkout -qb "factory/$id"
  echo "# fixed, honestly ($1)" >> calc.py && git commit -qam "fix add"
  git checkout -q main
  factory-issue update "$id" --state review --branch "factory/$id" >/dev/null
  echo "$id"
}

@test "review | gate | postmortem: a false claim is refused, on its issue, and becomes one lesson" {
  id=$(false_claim 1)
  run bash -c "factory-issue list --state review | factory-gate -q | factory-postmortem -q --failed-only"
  [ "$status" -eq 0 ]
  [ "$(echo "$output" | jq -r .kind)" = "postmortem" ]
  [ "$(echo "$output" | jq -r .new_lesson)" = "true" ]
  lesson=$(echo "$output" | jq -r .lesson)
  branch=$(echo "$output" | jq -r .branch)
  [ "$(factory-issue show "$id" | jq -r .state)" = "open" ]
  factory-issue show "$id" | jq -r '.comments[-1].text' | grep -q "AssertionError"
  git show "$branch:$lesson" | grep -q "python3 -m unittest -q test_calc"
  [ "$(git show main:calc.py)" = "$(printf 'def add(a, b):\n    return a - b')" ]
  [ -z "$(git status --porcelain)" ]

  # The same root cause again: no second lesson, a second piece of evidence.
  git checkout -q "factory/$id"
  echo "# fixed again" >> calc.py && git commit -qam "fix add, again"
  git checkout -q main
  factory-issue update "$id" --state review >/dev/null
  # (the lesson's own issue is in review too: main still fails its test, so the gate refuses
  # it as well, and it waits in review, uncharged, passed through by factory-postmortem)
  run bash -c "factory-issue list --state review | factory-gate -q | factory-postmortem -q --failed-only \
               | jq -r 'select(.kind == \"postmortem\") | .new_lesson'"
  [ "$status" -eq 0 ]
  [ "$output" = "false" ]
  lesson_issue=$(factory-issue list --state review | jq -r 'select(.source | startswith("postmortem:")) | .id')
  [ "$(factory-issue show "$lesson_issue" | jq -r '.attempts')" = "0" ]
  run bash -c "factory report --json | jq -r 'select(.lesson == \"$lesson\") | .evidence | length'"
  [ "$output" = "2" ]
}

@test "review | gate | postmortem: a passing branch passes through untouched" {
  id=$(echo '{"title": "add() subtracts"}' | factory-issue file | jq -r .id)
  git checkout -qb "factory/$id"
  sed -i 's/a - b/a + b/' calc.py && git commit -qam "add adds"
  git checkout -q main
  factory-issue update "$id" --state review --branch "factory/$id" >/dev/null
  run bash -c "factory-issue list --state review | factory-gate -q | factory-postmortem -q --failed-only | jq -r .verdict"
  [ "$status" -eq 0 ]
  [ "$output" = "pass" ]
  [ "$(factory-issue show "$id" | jq -r .state)" = "review" ]
  [ -z "$(git for-each-ref 'refs/heads/factory/lesson-*')" ]
}
