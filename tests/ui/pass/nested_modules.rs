// Jobs in nested modules are registered under their module path.
mod geometry {
    pub mod area {
        use procpool::pool_job;

        #[pool_job]
        pub fn square(side: f64) -> f64 {
            side * side
        }

        pub mod deeper {
            #[procpool::pool_job]
            pub fn cube(side: f64) -> f64 {
                side * side * side
            }
        }
    }
}

fn main() {
    use geometry::area;

    let pool = procpool::Pool::with_processes(1).unwrap();
    assert_eq!(pool.map(area::square, [2.0, 3.0]).unwrap(), vec![4.0, 9.0]);
    assert_eq!(pool.apply(area::deeper::cube, 2.0).unwrap(), 8.0);
    assert!(area::square.name().ends_with("::geometry::area::square"));
    assert!(
        area::deeper::cube
            .name()
            .ends_with("::geometry::area::deeper::cube")
    );
}
