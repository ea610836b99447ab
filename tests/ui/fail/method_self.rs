use procpool::pool_job;

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

fn main() {
    let _ = Rectangle {
        width: 2,
        height: 3,
    }
    .area();
}
