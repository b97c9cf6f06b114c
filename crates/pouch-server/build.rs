//! Records the commit this server is built from (`git rev-parse`), so that
//! `/v1/info` and `pouch --version` tell an operator exactly what runs.
//! "unknown" outside a git checkout (a source tarball).
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=POUCH_BUILD_COMMIT={commit}");
    // Built again when HEAD moves (a commit, a checkout), not on every edit.
    let git_dir = Command::new("git")
        .args(["rev-parse", "--absolute-git-dir"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok());
    match git_dir {
        Some(dir) => {
            let dir = dir.trim();
            println!("cargo:rerun-if-changed={dir}/HEAD");
            println!("cargo:rerun-if-changed={dir}/refs/heads");
            println!("cargo:rerun-if-changed={dir}/packed-refs");
        }
        None => println!("cargo:rerun-if-changed=build.rs"),
    }
}
