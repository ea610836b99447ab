use procpool::pool_job;

struct Task {
    id: u32,
}

#[pool_job]
impl Task {
    fn run(id: u32) -> u32 {
        id + 1
    }
}

fn main() {
    let _ = Task { id: 1 }.id;
    let _ = Task::run(1);
}
