// A job with twelve arguments of different types.
use procpool::{Pool, pool_job};

#[pool_job]
#[allow(clippy::too_many_arguments)]
fn twelve(
    a: u8,
    b: u16,
    c: u32,
    d: u64,
    e: i8,
    f: i16,
    g: i32,
    h: i64,
    i: bool,
    j: char,
    k: String,
    l: Vec<u8>,
) -> String {
    format!("{a} {b} {c} {d} {e} {f} {g} {h} {i} {j} {k} {}", l.len())
}

fn main() {
    let pool = Pool::with_processes(1).unwrap();
    let args = (
        1,
        2,
        3,
        4,
        -5,
        -6,
        -7,
        -8,
        true,
        'x',
        "twelve".to_owned(),
        vec![0; 12],
    );
    let expected = "1 2 3 4 -5 -6 -7 -8 true x twelve 12";
    assert_eq!(pool.apply(twelve, args.clone()).unwrap(), expected);
    assert_eq!(pool.starmap(twelve, vec![args]).unwrap(), vec![expected]);
    assert_eq!(
        twelve(
            1,
            2,
            3,
            4,
            -5,
            -6,
            -7,
            -8,
            true,
            'x',
            "twelve".to_owned(),
            vec![0; 12]
        ),
        expected
    );
}
