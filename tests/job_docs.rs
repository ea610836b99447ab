//! A job's documentation, as its users see it: `cargo doc` lists it once,
//! as a function with its own signature and a line on running it in a
//! pool, and `cargo test --doc` runs its doctest once.
//!
//! Both run on `procpool-test-jobs` (tests/jobs_lib), whose `manhattan` job
//! has a doc comment with a doctest, in a target directory of this test's
//! own, so they never wait for the build that runs this test.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_owned()
}

fn cargo(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("job-docs");
    let output = Command::new(&cargo)
        .arg("--offline")
        .args(args)
        .current_dir(workspace())
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTDOCFLAGS")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "cargo {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn a_job_is_documented_once_as_a_function_and_its_doctest_runs_once() {
    cargo(&["doc", "-p", "procpool-test-jobs", "--no-deps"]);
    let docs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("job-docs/doc/procpool_test_jobs");
    assert!(
        !docs.join("constant.manhattan.html").exists(),
        "the job is listed as a constant"
    );
    let page = std::fs::read_to_string(docs.join("fn.manhattan.html"))
        .expect("the job is documented as a function (fn.manhattan.html)");
    assert!(page.contains("Manhattan length of a point."), "{page}");
    assert!(
        page.contains("<code>pool.map(manhattan, items)</code>"),
        "no line on calling it in a pool:\n{page}"
    );
    // The signature as written, not `Job<fn(Point) -> i64, ...>`.
    assert!(!page.contains("Job&lt;"), "{page}");

    let list = cargo(&["test", "--doc", "-p", "procpool-test-jobs", "--", "--list"]);
    let doctests: Vec<&str> = list
        .lines()
        .filter(|line| line.contains("manhattan"))
        .collect();
    assert_eq!(doctests.len(), 1, "the job's doctest runs once:\n{list}");
    assert!(doctests[0].contains("- manhattan (line"), "{list}");
}
