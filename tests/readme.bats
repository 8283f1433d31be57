#!/usr/bin/env bats
# Black-box: the executables piped together as a new user would from the README.

setup() {
  export PATH="$BATS_TEST_DIRNAME/../bin:$PATH"
  export FACTORY_ACTOR=human:bats
  REPO="$(mktemp -d)"
  git init -q -b main "$REPO"
  cd "$REPO"
}

teardown() {
  rm -rf "$REPO"
}

@test "init, file from a file, list into jq" {
  run factory init
  [ "$status" -eq 0 ]
  [ -f factory.yaml ]
  printf '%s\n' '{"title": "first", "labels": ["bug"]}' '{"title": "second"}' > issues.jsonl
  run factory-issue file < issues.jsonl
  [ "$status" -eq 0 ]
  run bash -c "factory-issue list | jq -r .title"
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = "first" ]
  [ "${lines[1]}" = "second" ]
}

@test "factory issue is factory-issue, exit codes passed through" {
  run factory issue next
  [ "$status" -eq 1 ]
  echo '{"title": "x"}' | factory issue file
  run bash -c "factory issue next | jq -r .title"
  [ "$status" -eq 0 ]
  [ "$output" = "x" ]
}

@test "next | claim | update: a worker's pipeline" {
  echo '{"title": "job", "priority": 1}' | factory-issue file
  id=$(factory-issue next | factory-issue claim --by worker:1 | jq -r .id)
  [ -n "$id" ]
  run bash -c "factory-issue update $id --state review --branch factory/$id | jq -r .state"
  [ "$output" = "review" ]
  run factory-issue claim "$id"
  [ "$status" -eq 1 ]
}

@test "bad input: exit 2, the line named, no ref written" {
  printf '%s\n' '{"title": "fine"}' '{"title": }' > bad.jsonl
  run factory-issue file bad.jsonl
  [ "$status" -eq 2 ]
  [[ "$output" == *"bad.jsonl line 2: not JSON"* ]]
  [ -z "$(git for-each-ref refs/factory/)" ]
}
