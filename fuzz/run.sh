#!/usr/bin/env bash
# Runs the fuzz targets one after another, each from a copy of its seed
# corpus in a temp dir (so a run never writes into the checkout), and
# fails on the first crash, panic, hang (-timeout) or leak of memory
# (-rss_limit_mb). Usage, from anywhere:
#
#   fuzz/run.sh SECONDS [TARGET...]     # every target when none is named
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz
# --locked`). FUZZ_KEEP=DIR keeps the grown corpora and artifacts in DIR;
# FUZZ_TARGET_DIR=DIR builds there instead of fuzz/target (CI keeps its
# build outside the fresh clone, so only vaultrunner itself is rebuilt).
# Prints libFuzzer's final stats per target; docs/TESTING.md has figures.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:?usage: fuzz/run.sh SECONDS [TARGET...]}"
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
# Without ASan: vaultrunner's parsers are safe Rust (about twice the
# executions per second); debug assertions on, so an overflow panics.
flags=(-s none --debug-assertions)
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then flags+=(--target-dir "$FUZZ_TARGET_DIR"); fi
build_start=$(date +%s)
cargo +nightly fuzz build "${flags[@]}"
echo "fuzz build: $(( $(date +%s) - build_start )) s"
work="${FUZZ_KEEP:-$(mktemp -d)}"
mkdir -p "$work"
[ -n "${FUZZ_KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
    mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
    cp -R "seeds/$t/." "$work/$t/corpus/"
    case "$t" in
        cron) dict=dict/cron.dict ;;
        http_body|remote_note) dict=dict/json.dict ;;
        *) dict=dict/notes.dict ;;
    esac
    echo "== fuzz $t for ${secs}s"
    status=0
    cargo +nightly fuzz run "${flags[@]}" "$t" "$work/$t/corpus" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
        -dict="$dict" -print_final_stats=1 -artifact_prefix="$work/$t/artifacts/" \
        >"$work/$t/log" 2>&1 || status=$?
    grep -E '^(#[0-9]+.*DONE|stat::|Done [0-9]+ runs)' "$work/$t/log" || true
    echo "corpus: $(find "$work/$t/corpus" -type f | wc -l) files"
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$work/$t/log"
        for a in "$work/$t/artifacts/"*; do
            [ -f "$a" ] || continue
            echo "artifact $a (base64):"
            base64 "$a"
        done
        echo "fuzz target $t FAILED (exit $status); reproduce with:"
        echo "  cargo +nightly fuzz run ${flags[*]} $t <artifact>"
        exit 1
    fi
done
