# Shared by scripts/test and scripts/soak. Source it; it defines a function and changes nothing.
#
# The integration tests are one binary, `tests/it` (one module per area: tests/it/<area>.rs), so
# `--test <area>` is kept as a way to run one area: it becomes `--test it` and the test-name
# filter `<area>::`. A NAME filter after `--` then narrows each area to the tests whose name
# starts with NAME (`<area>::NAME`). `--test it` (the whole binary) and every other cargo or
# libtest argument pass through unchanged.

# Sets the array CARGO_TEST_ARGS to the `cargo test` arguments for "$@".
cargo_test_args() {
  local areas=() cargo=() flags=() names=() after=0 want_value=""
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
    elif [ "$a" = "--" ]; then
      after=1
    elif [ "$a" = "--test" ] && [ $# -gt 0 ]; then
      if [ "$1" = "it" ]; then cargo+=(--test it); else areas+=("$1"); fi
      shift
    elif [ "${a#--test=}" != "$a" ]; then
      if [ "${a#--test=}" = "it" ]; then cargo+=(--test it); else areas+=("${a#--test=}"); fi
    else
      cargo+=("$a")
    fi
  done
  local filters=()
  if [ ${#areas[@]} -gt 0 ]; then
    cargo+=(--test it)
    local area name
    for area in "${areas[@]}"; do
      if [ ! -f "tests/it/$area.rs" ]; then
        echo "scripts/test: no test area $area (tests/it/$area.rs)" >&2
        return 2
      fi
      if [ ${#names[@]} -eq 0 ]; then
        filters+=("$area::")
      else
        for name in "${names[@]}"; do filters+=("$area::$name"); done
      fi
    done
  else
    filters=("${names[@]}")
  fi
  CARGO_TEST_ARGS=("${cargo[@]}")
  if [ ${#filters[@]} -gt 0 ] || [ ${#flags[@]} -gt 0 ]; then
    CARGO_TEST_ARGS+=(-- "${filters[@]}" "${flags[@]}")
  fi
}
