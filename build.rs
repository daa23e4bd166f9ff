//! Stamps the binary with the git revision it was built from, for `--version` and the
//! `account_gate_build_info{revision}` metric: `ACCOUNT_GATE_REVISION` when set (a container
//! build, where `.git` is not in the context), else `git rev-parse`, else `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=ACCOUNT_GATE_REVISION");
    // A new commit or checkout changes one of these; cargo scans directories recursively.
    for path in [".git/HEAD", ".git/refs", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let revision = std::env::var("ACCOUNT_GATE_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=ACCOUNT_GATE_REVISION={}", revision.trim());
}

fn git_revision() -> Option<String> {
    let output = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    let revision = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !revision.trim().is_empty()).then(|| revision.trim().to_owned())
}
