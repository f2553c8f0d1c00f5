#!/usr/bin/env bash
# Fuzzes Herald's parsers: runs every cargo-fuzz target in fuzz/ for a bounded time,
# one after another, and exits non-zero if any target crashed, naming the input.
#
#   scripts/fuzz.sh [seconds-per-target]        (default 300)
#   FUZZ_TARGETS="subjects rpc" scripts/fuzz.sh 60   # only some targets
#
# Needs a nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz
# when it is missing. Each target starts from its committed corpus (fuzz/corpus/<target>)
# and writes the new inputs it finds to fuzz/target/new-corpus/<target>, so a run leaves
# the repository as it was. Crashing inputs go to fuzz/artifacts/<target>/; replay one
# with `cd fuzz && cargo +nightly fuzz run -s none <target> <file>`.
#
# The committed corpus is kept small (edge coverage only); to fold a run's finds into it:
#   cd fuzz && B=target/x86_64-unknown-linux-gnu/release && mkdir merged &&
#   $B/<target> -set_cover_merge=1 -use_counters=0 merged corpus/<target> \
#     target/new-corpus/<target> && rm -r corpus/<target> && mv merged corpus/<target>
#
# FUZZ_SANITIZER (default `none`) picks cargo-fuzz's sanitizer: the project's own code
# has no unsafe code, so AddressSanitizer mostly costs speed; `address` is there for
# dependencies' sake.
set -euo pipefail

seconds=${1:-300}
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds == 0)); then
  echo "usage: $0 [seconds-per-target]   (a whole number above 0; default 300)" >&2
  exit 2
fi
sanitizer=${FUZZ_SANITIZER:-none}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo/fuzz"

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: cargo fuzz needs a nightly toolchain: rustup toolchain install nightly" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

read -r -a targets <<<"${FUZZ_TARGETS:-$(cargo +nightly fuzz list | tr '\n' ' ')}"
echo "fuzz.sh: building ${targets[*]} (sanitizer: $sanitizer)"
cargo +nightly fuzz build -s "$sanitizer"

crashed=()
for target in "${targets[@]}"; do
  dict=dicts/json.dict
  [[ $target == subjects ]] && dict=dicts/subjects.dict
  new_corpus=target/new-corpus/$target
  artifacts=artifacts/$target
  mkdir -p "$new_corpus" "$artifacts" "corpus/$target"
  marker=$(mktemp)
  echo "fuzz.sh: fuzzing $target for ${seconds}s"
  TIMEFORMAT="fuzz.sh: $target took %R s (CPU %U s user, %S s system)"
  status=0
  # The whole log goes to a file; the terminal gets the start, the end and any crash.
  time (
    cargo +nightly fuzz run -s "$sanitizer" "$target" "$new_corpus" "corpus/$target" -- \
      -max_total_time="$seconds" -timeout=30 -dict="$dict" -print_final_stats=1 \
      -artifact_prefix="$artifacts/" 2>&1 | tee "target/fuzz-$target.log" |
      grep --line-buffered -E '^(#[0-9]+[[:space:]]+(INITED|DONE)|stat::(number_of_executed_units|peak_rss_mb)|==[0-9]+== ERROR|thread .* panicked|SUMMARY|Test unit written|Done [0-9]+ runs)'
    exit "${PIPESTATUS[0]}"
  ) || status=$?
  found=$(find "$artifacts" -type f -newer "$marker" | sort)
  rm -f "$marker"
  if ((status != 0)) || [[ -n $found ]]; then
    crashed+=("$target")
    echo "fuzz.sh: $target FAILED (exit $status); full log: fuzz/target/fuzz-$target.log" >&2
    for file in $found; do
      echo "fuzz.sh:   crashing input: fuzz/$file" >&2
      echo "fuzz.sh:   replay: (cd fuzz && cargo +nightly fuzz run -s $sanitizer $target $file)" >&2
    done
  fi
done

if ((${#crashed[@]})); then
  echo "fuzz.sh: crashes in: ${crashed[*]}" >&2
  exit 1
fi
echo "fuzz.sh: no crash in ${targets[*]} (${seconds}s each)"
