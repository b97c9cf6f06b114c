//! The mail workload benchmark (`pouch bench --workload mail`, issue 11)
//! keeps working: a short run of both variants beside a private Postfix +
//! Dovecot, in which the benchmark itself checks every copy (once, to the
//! right user, byte for byte). Its speed figures are not asserted here —
//! they belong in docs/BENCHMARKS.md — only that it completes, and that the
//! Pouch server raised no alert under the load.

use std::process::Command;

#[test]
fn the_mail_workload_runs_beside_postfix_and_dovecot_and_raises_no_alert() {
    let out = Command::new(env!("CARGO_BIN_EXE_pouch"))
        .args([
            "bench",
            "--workload",
            "mail",
            "--messages",
            "20",
            "--runs",
            "1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for system in ["Pouch", "Postfix + Dovecot"] {
        for variant in ["new conversations", "replies"] {
            let row = stdout
                .lines()
                .find(|l| l.starts_with(&format!("| 1 | {system} | {variant} |")))
                .unwrap_or_else(|| panic!("no {system} / {variant} run in:\n{stdout}"));
            if system == "Pouch" {
                assert!(row.ends_with("| 0 |"), "alerts under load: {row}");
            }
        }
    }
}

/// The same with labels in force (`--labels`: an officer registered, the
/// example policy published, everyone cleared, every mail marked): it
/// completes, every copy arrives checked, and no alert is raised.
#[test]
fn the_mail_workload_runs_with_labels_in_force_and_raises_no_alert() {
    let out = Command::new(env!("CARGO_BIN_EXE_pouch"))
        .args([
            "bench",
            "--workload",
            "mail",
            "--messages",
            "20",
            "--runs",
            "1",
            "--no-compare",
            "--variants",
            "replies",
            "--labels",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| 1 | Pouch | replies |"))
        .unwrap_or_else(|| panic!("no labelled run in:\n{stdout}"));
    assert!(row.ends_with("| 0 |"), "alerts under load: {row}");
}
