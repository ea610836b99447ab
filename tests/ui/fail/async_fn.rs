use procpool::pool_job;

#[pool_job]
async fn fetch(url: String) -> usize {
    url.len()
}

fn main() {}
