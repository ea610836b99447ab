use procpool::{Pool, pool_job};

struct Histogram {
    counts: Vec<u64>,
}

#[pool_job]
fn histogram(pixels: Vec<u8>) -> Histogram {
    let mut counts = vec![0; 256];
    for p in pixels {
        counts[usize::from(p)] += 1;
    }
    Histogram { counts }
}

// One error, on `Histogram` in the job's signature: the calls add none.
fn main() -> Result<(), procpool::Error> {
    let pool = Pool::with_processes(1)?;
    let all: Vec<Histogram> = pool.map(histogram, vec![vec![1, 2]])?;
    assert_eq!(all[0].counts[1], 1);
    let one = pool.apply(histogram, vec![3])?;
    assert_eq!(one.counts[3], 1);
    let lazy: Vec<Histogram> = pool.imap(histogram, vec![vec![4]]).collect::<Result<_, _>>()?;
    assert_eq!(lazy.len(), 1);
    let pending = pool.map_async(histogram, vec![vec![5]])?;
    assert_eq!(pending.get()?.len(), 1);
    let mut process = procpool::Process::spawn(histogram, vec![])?;
    assert_eq!(process.join()?.counts.len(), 256);
    Ok(())
}
