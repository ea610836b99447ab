//! Two jobs registered under one name make every pool of the program fail to
//! start, with an error naming both functions, rather than a worker silently
//! running the wrong one.
//!
//! This is a test binary of its own: a duplicate poisons the whole registry,
//! so no other pool could start in the same executable.

use procpool::{Error, Pool, pool_job};

mod images {
    #[procpool::pool_job(name = "dup")]
    pub fn resize(width: u32) -> u32 {
        width / 2
    }
}

mod text {
    #[procpool::pool_job(name = "dup")]
    pub fn upper(s: String) -> String {
        s.to_uppercase()
    }
}

/// Has a name of its own, but cannot run either: the registry as a whole is inconsistent.
#[pool_job]
fn unique(x: u8) -> u8 {
    x
}

fn registry_error(result: Result<Pool, Error>) -> String {
    match result {
        Err(Error::Registry(message)) => message,
        Err(other) => panic!("expected Error::Registry, got {other:?}"),
        Ok(_) => panic!("a pool started although two jobs are named `dup`"),
    }
}

#[test]
fn pool_start_names_both_functions() {
    let message = registry_error(Pool::with_processes(1));
    assert!(message.contains("`dup`"), "{message}");
    assert!(
        message.contains("duplicate_names::images::resize"),
        "{message}"
    );
    assert!(
        message.contains("duplicate_names::text::upper"),
        "{message}"
    );
    // It also says how to fix it.
    assert!(message.contains("#[pool_job(name = "), "{message}");
}

#[test]
fn every_way_of_starting_a_pool_fails() {
    registry_error(Pool::new());
    registry_error(Pool::builder().processes(2).build());
    registry_error(Pool::with_processes(1));
}

#[test]
fn the_jobs_are_still_ordinary_functions() {
    assert_eq!(images::resize(10), 5);
    assert_eq!(text::upper("a".to_owned()), "A");
    assert_eq!(unique(3), 3);
    assert_eq!(images::resize.name(), "dup");
    assert_eq!(text::upper.name(), "dup");
}
