use procpool::pool_job;

#[pool_job]
struct Task {
    id: u32,
}

fn main() {
    let task = Task { id: 1 };
    let _ = task.id;
}
