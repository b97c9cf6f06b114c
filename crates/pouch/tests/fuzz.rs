//! Every fuzz target in `fuzz/` runs briefly (libFuzzer, a few seconds each)
//! on its corpus: the committed seeds and any `crash-*` input found once,
//! so a crash found once stays fixed, and a target that no longer builds or
//! crashes at once fails the test suite. The long runs (10 million
//! executions or 30 minutes each) are in docs/SECURITY.md.
//!
//! Needs the nightly toolchain and cargo-fuzz (`.ci/run` installs
//! cargo-fuzz; `cargo install cargo-fuzz` on a developer's machine).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Seconds each target runs beyond its corpus.
const SECONDS_PER_TARGET: u32 = 5;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The targets fuzz/Cargo.toml declares, so a new one is run without
/// editing this test.
fn targets() -> Vec<String> {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(value) = line.strip_prefix("name = ") {
            names.push(value.trim_matches('"').to_string());
        }
    }
    names
}

/// `cargo +nightly fuzz …` in fuzz/, without the variables this test's own
/// cargo set (they would pin the stable toolchain and this workspace).
fn cargo_fuzz() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly").arg("fuzz").current_dir(fuzz_dir());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("CARGO") && key != "CARGO_HOME")
            || key.starts_with("RUSTUP_TOOLCHAIN")
            || key == "RUSTC"
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
        {
            cmd.env_remove(key);
        }
    }
    cmd
}

#[test]
fn every_fuzz_target_runs_on_its_corpus_without_a_finding() {
    let targets = targets();
    assert!(targets.len() >= 6, "fuzz targets: {targets:?}");
    let probe = cargo_fuzz().arg("--version").output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "cargo-fuzz on the nightly toolchain is needed: 'rustup toolchain install nightly' and 'cargo install cargo-fuzz' ({probe:?})"
    );
    let build = cargo_fuzz().args(["build", "-O"]).output().unwrap();
    assert!(
        build.status.success(),
        "the fuzz targets do not build:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    for target in targets {
        let corpus = fuzz_dir().join("corpus").join(&target);
        // The committed inputs only (seed-*, crash-*): a developer's local
        // corpus of thousands would not even be read in the time given.
        // New inputs go to this scratch directory, not into the repository.
        let scratch =
            std::env::temp_dir().join(format!("pouch-fuzz-{target}-{}", std::process::id()));
        let inputs = scratch.join("corpus");
        std::fs::create_dir_all(&inputs).unwrap();
        let mut seeds = 0u64;
        for entry in std::fs::read_dir(&corpus)
            .unwrap_or_else(|e| panic!("{}: {e}", corpus.display()))
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("seed-") || name.starts_with("crash-") {
                std::fs::copy(entry.path(), inputs.join(&name)).unwrap();
                seeds += 1;
            }
        }
        assert!(seeds > 0, "{target} has no seed in {}", corpus.display());
        let run = cargo_fuzz()
            .args(["run", "-O", &target])
            .arg(&inputs)
            .arg("--")
            .arg(format!("-max_total_time={SECONDS_PER_TARGET}"))
            .arg("-rss_limit_mb=2048")
            // A hang fails in seconds, not libFuzzer's 20 minutes; inputs up
            // to 64 KiB reach the receivers' size limits.
            .arg("-timeout=10")
            .arg("-max_len=65536")
            .arg(format!("-artifact_prefix={}/", scratch.display()))
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&run.stderr);
        if !run.status.success() {
            // Keep what libFuzzer wrote (crash-, timeout-, oom-…) beside the
            // seeds, so that the fix can be tested and the input committed.
            for entry in std::fs::read_dir(&scratch).unwrap().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if ["crash-", "timeout-", "oom-", "leak-", "slow-unit-"]
                    .iter()
                    .any(|p| name.starts_with(p))
                {
                    let _ = std::fs::copy(entry.path(), corpus.join(format!("crash-{name}")));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&scratch);
        assert!(
            run.status.success(),
            "fuzz target {target} failed (its input, if any, is now fuzz/corpus/{target}/crash-*):\n{}",
            log.lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
        let runs: u64 = log
            .lines()
            .find_map(|l| l.strip_prefix("Done ")?.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{target}: no 'Done N runs' line:\n{log}"));
        assert!(runs > seeds, "{target} ran {runs} inputs");
        println!("{target}: {runs} runs in {SECONDS_PER_TARGET} s");
    }
}
