use procpool::{Pool, pool_job};

struct Image {
    pixels: Vec<u8>,
}

#[pool_job]
fn brightness(image: Image) -> u64 {
    image.pixels.iter().map(|&p| u64::from(p)).sum()
}

// One error, on `Image` in the job's signature: the calls add none.
fn main() -> Result<(), procpool::Error> {
    let pool = Pool::with_processes(1)?;
    let images = vec![Image { pixels: vec![1, 2] }];
    let sums: Vec<u64> = pool.map(brightness, &images)?;
    assert_eq!(sums, [3]);
    let sum = pool.apply(brightness, Image { pixels: vec![3] })?;
    assert_eq!(sum, 3);
    let lazy: Vec<u64> = pool.imap(brightness, images).collect::<Result<_, _>>()?;
    assert_eq!(lazy, [3]);
    let mut process = procpool::Process::spawn(brightness, Image { pixels: vec![] })?;
    assert_eq!(process.join()?, 0);
    Ok(())
}
