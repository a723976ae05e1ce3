# Every recipe is a plain cargo command: without `just`, run the line under it.

# Play a scenario: just demo pipe, just demo fifo --fast -v
demo NAME *ARGS:
    cargo run --release -p ipckit-demos -- {{NAME}} {{ARGS}}

# The whole test suite (what the README and CI run)
test:
    cargo test --workspace

# Benchmarks, each mechanism beside its floor and its peers, with ratios printed
bench *ARGS:
    cargo bench -p ipckit-benches {{ARGS}}

# Every mechanism on the same workloads, in paired rounds: writes docs/comparison.md and
# its charts (a quiet machine, under 10 minutes). `just compare --smoke`: a quick check, to a temp dir
compare *ARGS:
    cargo bench -p ipckit-benches --bench compare -- {{ARGS}}

# Formatting and lints, as CI checks them
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings

# API documentation
doc:
    cargo doc --workspace --no-deps --open

# What CI runs on a clean clone
ci:
    .ci/run
