// What the compile-fail messages suggest, written out: each of these is the
// fixed version of a case in ui/fail.
use procpool::{Pool, pool_job};
use serde::{Deserialize, Serialize};

// generic.rs: one non-generic job per type, calling the generic function.
fn largest<T: PartialOrd>(items: Vec<T>) -> Option<T> {
    items.into_iter().reduce(|a, b| if b > a { b } else { a })
}

#[pool_job]
fn largest_i64(items: Vec<i64>) -> Option<i64> {
    largest(items)
}

#[pool_job]
fn largest_f64(items: Vec<f64>) -> Option<f64> {
    largest(items)
}

// borrowed_args.rs: owned types instead of `&str` and `&[u64]`.
#[pool_job]
fn word_count(text: String) -> usize {
    text.split_whitespace().count()
}

#[pool_job]
fn total(values: Vec<u64>) -> u64 {
    values.iter().sum()
}

// not_serializable.rs: derive the serde traits.
#[derive(Serialize, Deserialize)]
struct Image {
    pixels: Vec<u8>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Thumbnail {
    pixels: Vec<u8>,
}

#[pool_job]
fn shrink(image: Image) -> Thumbnail {
    Thumbnail {
        pixels: image.pixels.into_iter().step_by(4).collect(),
    }
}

// method_self.rs: a free function that takes the value.
#[derive(Serialize, Deserialize)]
struct Rectangle {
    width: u32,
    height: u32,
}

#[pool_job]
fn area(rectangle: Rectangle) -> u32 {
    rectangle.width * rectangle.height
}

fn main() {
    let pool = Pool::with_processes(1).unwrap();
    assert_eq!(pool.apply(largest_i64, vec![3, 9, 2]).unwrap(), Some(9));
    assert_eq!(pool.apply(largest_f64, vec![0.5, -1.0]).unwrap(), Some(0.5));
    assert_eq!(pool.apply(word_count, "a b c".to_owned()).unwrap(), 3);
    assert_eq!(pool.apply(total, vec![1, 2, 3]).unwrap(), 6);
    let image = Image {
        pixels: (0..8).collect(),
    };
    assert_eq!(
        pool.apply(shrink, image).unwrap(),
        Thumbnail { pixels: vec![0, 4] }
    );
    let rectangle = Rectangle {
        width: 2,
        height: 3,
    };
    assert_eq!(pool.apply(area, rectangle).unwrap(), 6);
}
