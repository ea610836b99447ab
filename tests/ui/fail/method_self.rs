use procpool::{Pool, pool_job};

struct Rectangle {
    width: u32,
    height: u32,
}

impl Rectangle {
    #[pool_job]
    fn area(&self) -> u32 {
        self.width * self.height
    }
}

// The attribute's error is the only one: the pool call adds none.
fn main() -> Result<(), procpool::Error> {
    let pool = Pool::with_processes(1)?;
    let rectangle = Rectangle {
        width: 2,
        height: 3,
    };
    let areas: Vec<u32> = pool.map(Rectangle::area, [rectangle])?;
    assert_eq!(areas, [6]);
    Ok(())
}
