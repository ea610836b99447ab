use std::marker::PhantomData;

use procpool::pool_job;
use serde::{Deserialize, Serialize};

/// Serializable, but pinned to one thread by a raw pointer marker.
#[derive(Serialize, Deserialize)]
struct Session {
    id: u32,
    #[serde(skip)]
    _thread_bound: PhantomData<*const ()>,
}

#[pool_job]
fn session_id(session: Session) -> u32 {
    session.id
}

fn main() {}
