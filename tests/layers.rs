//! The layering rules of `make lint` (scripts/check-layers.sh) hold on the tree, and the check of
//! a module's files catches a circle when there is one.

use std::path::Path;
use std::process::Command;

fn script(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join(name)
}

#[test]
fn the_tree_keeps_its_layers() {
    let out = Command::new(script("check-layers.sh")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A module of `files` (name, text) under a temporary `src/m/`; the cycle check's verdict on it.
fn check(files: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("src/m");
    std::fs::create_dir_all(&module).unwrap();
    for (name, text) in files {
        std::fs::write(module.join(name), text).unwrap();
    }
    let out = Command::new("python3").arg(script("check-cycles.py")).current_dir(dir.path()).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn two_files_of_a_module_that_use_each_other_fail_the_check() {
    let (ok, why) = check(&[
        ("mod.rs", "mod a;\nmod b;\n"),
        ("a.rs", "use super::b::B;\npub struct A;\n"),
        ("b.rs", "use super::a::A;\npub struct B;\n"),
    ]);
    assert!(!ok);
    assert!(why.contains("a.rs -> b.rs -> a.rs"), "{why}");
}

#[test]
fn a_circle_through_the_modules_root_fails_the_check() {
    // The root's own code uses a child, which uses an item of the root.
    let (ok, why) = check(&[
        ("mod.rs", "mod a;\npub struct Shared;\nfn run() { a::go(); }\n"),
        ("a.rs", "use super::Shared;\npub fn go() {}\n"),
        ("b.rs", "pub fn unused() {}\n"),
    ]);
    assert!(!ok);
    assert!(why.contains("a.rs -> mod.rs -> a.rs"), "{why}");
}

#[test]
fn reexports_comments_and_strings_are_not_uses() {
    let (ok, why) = check(&[
        ("mod.rs", "mod a;\nmod b;\npub use a::A;\n// b::B in a comment\n"),
        ("a.rs", "pub struct A;\nconst S: &str = \"super::b::B\";\n"),
        ("b.rs", "use super::A;\npub struct B;\n"),
    ]);
    assert!(ok, "{why}");
}
