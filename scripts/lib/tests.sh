# Shared by scripts/test and scripts/soak. Source it; it defines functions and changes nothing.
#
# The integration tests are one binary, `tests/it`, with one module per area
# (tests/it/<area>.rs). `--test <area>` is kept as a way to run one area: it becomes `--test it`
# and the test-name filter `<area>::`; a NAME filter after `--` narrows each area to its tests
# whose name starts with NAME (`<area>::NAME`). Areas run one after another, as when each was
# its own binary: an area's tests run in parallel, never beside another area's (the reliability
# areas load the machine, and several time what they measure). `--test it` and every other
# cargo or libtest argument pass through unchanged.

# Runs `cargo test --locked --no-fail-fast` for "$@" as described above; with no arguments,
# every test: unit, binary and example targets, doc tests, then each area. Returns the first
# failing status (every part still runs).
run_tests() {
  local areas=() cargo=() flags=() names=() after=0 want_value="" plain=1
  while [ $# -gt 0 ]; do
    local a=$1
    shift
    if [ "$after" = 1 ]; then
      if [ -n "$want_value" ]; then
        flags+=("$a")
        want_value=""
      elif [ "$a" = "--skip" ] || [ "$a" = "--test-threads" ] || [ "$a" = "--format" ] \
        || [ "$a" = "--color" ] || [ "$a" = "-Z" ] || [ "$a" = "--logfile" ]; then
        flags+=("$a")
        want_value=1
      elif [ "${a#-}" != "$a" ]; then
        flags+=("$a")
      else
        names+=("$a")
      fi
      plain=0
    elif [ "$a" = "--" ]; then
      after=1
    elif [ "$a" = "--test" ] && [ $# -gt 0 ]; then
      if [ "$1" = "it" ]; then cargo+=(--test it); else areas+=("$1"); fi
      shift
      plain=0
    elif [ "${a#--test=}" != "$a" ]; then
      if [ "${a#--test=}" = "it" ]; then cargo+=(--test it); else areas+=("${a#--test=}"); fi
      plain=0
    else
      cargo+=("$a")
      plain=0
    fi
  done
  local status=0 area name
  if [ "$plain" = 1 ]; then
    cargo test --locked --no-fail-fast --lib --bins --examples || status=$?
    cargo test --locked --doc || { local rc=$?; [ "$status" != 0 ] || status=$rc; }
    for area in tests/it/*.rs; do
      area=$(basename "$area" .rs)
      [ "$area" = main ] && continue
      areas+=("$area")
    done
  fi
  if [ ${#areas[@]} -eq 0 ]; then
    local rest=()
    if [ ${#names[@]} -gt 0 ] || [ ${#flags[@]} -gt 0 ]; then rest=(-- "${names[@]}" "${flags[@]}"); fi
    cargo test --locked --no-fail-fast "${cargo[@]}" "${rest[@]}" || status=$?
    return $status
  fi
  for area in "${areas[@]}"; do
    if [ ! -f "tests/it/$area.rs" ]; then
      echo "no test area $area (tests/it/$area.rs)" >&2
      return 2
    fi
  done
  for area in "${areas[@]}"; do
    local filters=()
    if [ ${#names[@]} -eq 0 ]; then
      filters=("$area::")
    else
      for name in "${names[@]}"; do filters+=("$area::$name"); done
    fi
    echo "==> tests/it/$area.rs"
    cargo test --locked --no-fail-fast "${cargo[@]}" --test it -- "${filters[@]}" "${flags[@]}" \
      || { local rc=$?; [ "$status" != 0 ] || status=$rc; }
  done
  return $status
}
