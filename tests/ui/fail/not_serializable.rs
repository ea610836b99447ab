use procpool::pool_job;

struct Image {
    pixels: Vec<u8>,
}

struct Thumbnail {
    pixels: Vec<u8>,
}

#[pool_job]
fn shrink(image: Image) -> Thumbnail {
    Thumbnail {
        pixels: image.pixels.into_iter().step_by(4).collect(),
    }
}

#[pool_job]
fn open(path: String) -> std::fs::File {
    std::fs::File::open(path).unwrap()
}

fn main() {}
