// This crate depends on procpool without the `progress` feature: asking
// for progress bars is one error that names the feature.
use procpool::Pool;

fn main() {
    let _pool = Pool::builder().progress(true).build();
}
