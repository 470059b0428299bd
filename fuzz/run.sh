#!/usr/bin/env bash
# Fuzzes kpersist's parsers of outside input with cargo fuzz (libFuzzer), each target for a
# fixed time, and prints per target: executions, exec/s, corpus size, crashes.
#
#   fuzz/run.sh                       every target for 300 s
#   fuzz/run.sh --seconds 20          the short run CI does
#   fuzz/run.sh --seconds 60 index    one target
#   fuzz/run.sh --sanitizer none ...  without AddressSanitizer (faster; Rust code is memory-safe)
#
# Needs no nightly toolchain: RUSTC_BOOTSTRAP=1 lets the installed one take the -Z flags
# cargo fuzz passes. cargo-fuzz is installed from crates.io once into $TOOLS. The growing
# corpus and any crash inputs live in $FUZZ_WORK, seeded from kmod/tests/fixtures and
# fuzz/seeds; a crash input is kept in $FUZZ_WORK/artifacts/<target>/ and the run exits 1.
set -euo pipefail

seconds=300
sanitizer=address
targets=()
while (($#)); do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --sanitizer) sanitizer="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${KPERSIST_CACHE:-/var/cache/kpersist}"
TOOLS="${TOOLS:-$cache/tools}"
FUZZ_WORK="${FUZZ_WORK:-$cache/fuzz}"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$cache/target-fuzz}"
export RUSTC_BOOTSTRAP=1
export PATH="$TOOLS/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz into $TOOLS" >&2
    env -u CARGO_TARGET_DIR cargo install cargo-fuzz --locked --root "$TOOLS" >&2
fi

cd "$root"
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo fuzz list)
fi

# Seeds: the real modules for the ELF reader, a real index, and kernel notes holding a
# GNU build id (namesz 4, descsz 20, type 3, "GNU\0", 20 bytes of id).
seed() {
    local target="$1" dir="$FUZZ_WORK/corpus/$1"
    mkdir -p "$dir" "$FUZZ_WORK/artifacts/$target"
    case "$target" in
        modinfo) cp kmod/tests/fixtures/*.ko "$dir/" ;;
        index) cp fuzz/seeds/index/*.json "$dir/" ;;
        signed_index)
            for f in fuzz/seeds/index/*.json; do
                { cat "$f"; printf '\0%s\n' "$(head -c 64 /dev/zero | base64 -w0)"; } \
                    >"$dir/$(basename "$f").signed"
            done ;;
        kernel_notes)
            { printf '\004\0\0\0\024\0\0\0\003\0\0\0GNU\0'
              printf '\x01\x23\x45\x67\x89\xab\xcd\xef%.0s' 1 2
              printf '\x01\x23\x45\x67'; } >"$dir/build-id.notes"
            printf '6.1.0-56-amd64\n' >"$dir/osrelease" ;;
    esac
}

echo "building ${#targets[@]} fuzz targets (sanitizer: $sanitizer)" >&2
for target in "${targets[@]}"; do
    cargo fuzz build --sanitizer "$sanitizer" "$target" >&2
done

failed=0
rows=()
for target in "${targets[@]}"; do
    seed "$target"
    corpus="$FUZZ_WORK/corpus/$target"
    artifacts="$FUZZ_WORK/artifacts/$target"
    log="$FUZZ_WORK/$target.log"
    echo "fuzzing $target for ${seconds}s (log: $log)" >&2
    status=0
    cargo fuzz run --sanitizer "$sanitizer" "$target" "$corpus" -- \
        -max_total_time="$seconds" -print_final_stats=1 -max_len=65536 -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?
    stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
    runs="$(stat number_of_executed_units)"
    rate="$(stat average_exec_per_sec)"
    files="$(find "$corpus" -type f | wc -l)"
    crashes="$(find "$artifacts" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) | wc -l)"
    if ((status != 0)) || ((crashes > 0)); then
        failed=1
        echo "$target: libFuzzer exited $status; see $log and $artifacts" >&2
    fi
    rows+=("| $target | $seconds | ${runs:-?} | ${rate:-?} | $files | $crashes |")
done

echo "| target | seconds | executions | exec/s | corpus files | crashes |"
echo "| --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
exit "$failed"
