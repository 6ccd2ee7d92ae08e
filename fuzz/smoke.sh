#!/usr/bin/env bash
# Fuzz smoke test: runs every cargo-fuzz target for N seconds (default 10) from the committed seed
# corpus, after replaying its known reproducers (fuzz/artifacts-known/<target>-*), then the atheris
# harness of the hub frame codec (target name hub_frames; skipped when atheris is not installed).
# New corpus entries go to a temporary directory, so the committed corpus is not touched.
#
#   fuzz/smoke.sh            # 10 s per target
#   fuzz/smoke.sh 60         # 60 s per target
#   fuzz/smoke.sh 10 envelope_decode bundle_decode   # only these targets
#
# Needs cargo-fuzz (cargo install cargo-fuzz). On a stable toolchain the nightly-only flags are
# unlocked with RUSTC_BOOTSTRAP=1 (set here unless already set). Exit status: non-zero as soon as
# a target fails (crash, leak, timeout, OOM); the reproducer is left in fuzz/artifacts/<target>/.
# Run from anywhere; meant for one core (one libFuzzer process at a time).
set -euo pipefail

SECS="${1:-10}"
shift || true
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE/.."
export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"

if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
else
    TARGETS=(envelope_decode group_open bundle_decode keyfile_load session_import unseal_live_session payload_decode succession_decode hub_frames)
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/agentmesh-fuzz-smoke.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

cargo fuzz build  # all targets; `cargo fuzz run` below reuses the build
for t in "${TARGETS[@]}"; do
    mkdir -p "$WORK/$t"
    if [ "$t" = hub_frames ]; then
        # The atheris harness of the hub's frame codec (Python); skipped without atheris.
        if ! python3 -c 'import atheris' 2>/dev/null; then
            echo "== $t: skipped (pip install atheris)"
            continue
        fi
        echo "== $t: ${SECS}s"
        mkdir -p fuzz/artifacts/hub_frames
        python3 fuzz/python/fuzz_hub_frames.py "$WORK/$t" fuzz/python/corpus \
            -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 \
            -artifact_prefix=fuzz/artifacts/hub_frames/ 2>"$WORK/$t.log" \
            || { tail -n 60 "$WORK/$t.log"; echo "FAIL: $t"; exit 1; }
        grep -E '^Done' "$WORK/$t.log" | tail -n 1 || true
        continue
    fi
    # Known reproducers must keep passing (fixed bugs stay fixed, known findings stay tolerated).
    known=(fuzz/artifacts-known/"$t"-*)
    if [ -e "${known[0]}" ]; then
        cargo fuzz run "$t" "${known[@]}" 2>"$WORK/$t.known.log" \
            || { tail -n 60 "$WORK/$t.known.log"; echo "FAIL: $t (known reproducer)"; exit 1; }
    fi
    echo "== $t: ${SECS}s"
    cargo fuzz run "$t" "$WORK/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 \
        2>"$WORK/$t.log" || { tail -n 60 "$WORK/$t.log"; echo "FAIL: $t"; exit 1; }
    grep -E '^(Done|stat::number_of_executed_units|#[0-9]+ +DONE)' "$WORK/$t.log" | tail -n 2 || true
done
echo "fuzz smoke: all ${#TARGETS[@]} targets clean (${SECS}s each)"
