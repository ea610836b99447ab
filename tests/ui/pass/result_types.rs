// `()`, `Option`, `Result<T, E>`, tuples and structs come back from workers.
use procpool::{Pool, pool_job};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Stats {
    count: usize,
    mean: f64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Parsed {
    Number(i64),
    Word(String),
}

#[pool_job]
fn nothing(_: u8) {}

#[pool_job]
fn unit_explicit(_: u8) -> () {}

#[pool_job]
fn half(x: u32) -> Option<u32> {
    (x % 2 == 0).then_some(x / 2)
}

#[pool_job]
fn parse(s: String) -> Result<i64, String> {
    s.parse().map_err(|_| format!("`{s}` is not a number"))
}

#[pool_job]
fn min_max(values: Vec<i32>) -> (i32, i32) {
    let min = values.iter().copied().min().unwrap_or(0);
    let max = values.iter().copied().max().unwrap_or(0);
    (min, max)
}

#[pool_job]
fn stats(values: Vec<f64>) -> Stats {
    Stats {
        count: values.len(),
        mean: values.iter().sum::<f64>() / values.len() as f64,
    }
}

#[pool_job]
fn classify(s: String) -> Parsed {
    match s.parse() {
        Ok(n) => Parsed::Number(n),
        Err(_) => Parsed::Word(s),
    }
}

fn main() {
    let pool = Pool::with_processes(1).unwrap();
    assert_eq!(pool.map(nothing, [1, 2]).unwrap(), vec![(), ()]);
    pool.apply(unit_explicit, 1).unwrap();
    assert_eq!(pool.map(half, [4, 5]).unwrap(), vec![Some(2), None]);
    assert_eq!(
        pool.map(parse, ["12".to_owned(), "x".to_owned()]).unwrap(),
        vec![Ok(12), Err("`x` is not a number".to_owned())]
    );
    assert_eq!(pool.apply(min_max, vec![3, -1, 7]).unwrap(), (-1, 7));
    assert_eq!(
        pool.apply(stats, vec![1.0, 2.0, 3.0]).unwrap(),
        Stats {
            count: 3,
            mean: 2.0
        }
    );
    assert_eq!(
        pool.map(classify, ["7".to_owned(), "seven".to_owned()])
            .unwrap(),
        vec![Parsed::Number(7), Parsed::Word("seven".to_owned())]
    );
}
