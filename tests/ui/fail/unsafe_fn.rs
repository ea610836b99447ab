use procpool::pool_job;

#[pool_job]
unsafe fn read_raw(address: usize) -> u8 {
    unsafe { *(address as *const u8) }
}

fn main() {}
