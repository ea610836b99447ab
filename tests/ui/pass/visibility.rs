// `pub`, `pub(crate)` and private jobs keep their visibility and all run.
mod jobs {
    use procpool::pool_job;

    #[pool_job]
    pub fn public(x: u32) -> u32 {
        x + 1
    }

    #[pool_job]
    pub(crate) fn crate_visible(x: u32) -> u32 {
        x + 2
    }

    #[pool_job]
    fn private(x: u32) -> u32 {
        x + 3
    }

    /// Private jobs are usable inside their module.
    pub fn run_private(pool: &procpool::Pool) -> Vec<u32> {
        pool.map(private, [1, 2]).unwrap()
    }
}

fn main() {
    let pool = procpool::Pool::with_processes(1).unwrap();
    assert_eq!(pool.map(jobs::public, [1, 2]).unwrap(), vec![2, 3]);
    assert_eq!(pool.map(jobs::crate_visible, [1, 2]).unwrap(), vec![3, 4]);
    assert_eq!(jobs::run_private(&pool), vec![4, 5]);
}
