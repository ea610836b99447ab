use procpool::pool_job;
use serde::{Deserialize, Serialize};

/// Can be read but not written.
#[derive(Deserialize)]
struct Request {
    id: u32,
}

/// Can be written but not read.
#[derive(Serialize)]
struct Response {
    id: u32,
}

#[pool_job]
fn handle(request: Request) -> Response {
    Response { id: request.id }
}

fn main() {}
