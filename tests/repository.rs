//! What an adopter checks before taking the gateway on: the licence the manifest names is there,
//! the changelog has the release the manifest builds, and the image is labelled and built
//! without the emulator.

use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_licence_is_the_one_the_manifest_names() {
    let manifest = read("Cargo.toml");
    assert!(manifest.contains("license = \"Apache-2.0\""));
    let licence = read("LICENSE");
    assert!(licence.contains("Apache License"));
    assert!(licence.contains("Version 2.0, January 2004"));
    assert!(licence.contains("TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION"));
}

#[test]
fn the_changelog_has_the_release_the_manifest_builds() {
    let changelog = read("CHANGELOG.md");
    assert!(changelog.contains("## [Unreleased]"));
    let heading = format!("## [{}] - ", env!("CARGO_PKG_VERSION"));
    assert!(
        changelog.lines().any(|line| line.starts_with(&heading)),
        "CHANGELOG.md has no \"{heading}YYYY-MM-DD\" section"
    );
}

#[test]
fn the_image_is_labelled_and_built_without_the_emulator() {
    let dockerfile = read("deploy/Dockerfile");
    for label in ["source", "version", "revision", "licenses", "title"] {
        assert!(
            dockerfile.contains(&format!("org.opencontainers.image.{label}=")),
            "no OCI label {label}"
        );
    }
    assert!(dockerfile.contains("--no-default-features --bin account-gate"));
    assert!(dockerfile.contains("ENV ACCOUNT_GATE_REVISION=${REVISION}"));
    // The build context lets in what the build script needs, and the allocator's compiled-in
    // options, which the dependency layer (built before the sources are copied) reads.
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l == "!build.rs"));
    assert!(ignore.lines().any(|l| l == "!.cargo/config.toml"));
    let (cargo_dir, dependencies) = (
        dockerfile
            .find("COPY .cargo ./.cargo")
            .expect("no COPY of .cargo"),
        dockerfile.find("cargo build").expect("no cargo build"),
    );
    assert!(
        cargo_dir < dependencies,
        ".cargo is copied after the first build"
    );
    assert!(read(".cargo/config.toml")
        .contains("JEMALLOC_SYS_WITH_MALLOC_CONF = \"background_thread:true"));
    let manifest = read("Cargo.toml");
    assert!(manifest.contains("default = [\"emulator\"]"));
    // The label's version is the manifest's.
    let version = format!("ARG VERSION={}", env!("CARGO_PKG_VERSION"));
    assert!(dockerfile.contains(&version), "Dockerfile lacks {version}");
}
