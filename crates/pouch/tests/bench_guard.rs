//! The performance regression guard (issue 11, point 4): a short
//! `pouch bench --guard` run of this build, its rates taken as ratios to raw
//! OpenMLS sealing measured in the same run, must stay above half the
//! committed baseline (`crates/pouch/bench-baseline.json`). Ratios, not
//! rates, so that a slower machine or hour does not fail it; only a slowdown
//! of the mail path relative to the crypto it runs does.

mod common;
use common::*;

fn guard(baseline: &std::path::Path) -> std::process::Output {
    pouch()
        .args(["bench", "--guard"])
        .arg(baseline)
        .output()
        .unwrap()
}

#[test]
fn the_mail_path_keeps_at_least_half_its_baseline_speed() {
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-baseline.json");
    let out = guard(&committed);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("within the guard"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // And the guard can fail: against a baseline no build could reach.
    let dir = Scratch::new("bench-guard");
    let impossible = dir.path("baseline.json");
    std::fs::write(
        &impossible,
        r#"{"debug": {"send": 1e9, "end_to_end": 1e9}, "release": {"send": 1e9, "end_to_end": 1e9}}"#,
    )
    .unwrap();
    let out = guard(&impossible);
    assert_no_panic(&out);
    assert!(!out.status.success());
    // (The server inside the benchmark logs its alerts above it.)
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("fell to"),
        "{err}"
    );
}
