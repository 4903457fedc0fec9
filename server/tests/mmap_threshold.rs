//! `sys::fix_mmap_threshold`: once a large block is freed, later blocks of about its size still
//! go back to the system when freed, instead of staying resident in glibc's heap arenas. Its own
//! test binary, so no other test allocates meanwhile.

use surv_server::sys::fix_mmap_threshold;

/// Resident set size of this process, bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("reading /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm's second field");
    pages * 4096
}

/// A block of `size` bytes, every page written, then freed.
fn use_and_free(size: usize) {
    let mut block = vec![0u8; size];
    block.iter_mut().step_by(4096).for_each(|b| *b = 1);
    std::hint::black_box(&block);
}

#[test]
fn large_blocks_go_back_to_the_system_when_freed() {
    const MIB: usize = 1 << 20;
    assert_eq!(
        fix_mmap_threshold(),
        cfg!(all(target_os = "linux", target_env = "gnu"))
    );
    let before = rss();
    // In another thread, as the server's workers allocate: its own arena. A 16 MiB block (a
    // connection's read buffer at its largest), then smaller ones, as the next connection's
    // buffer grows.
    std::thread::spawn(|| {
        for size in [16 * MIB, 4 * MIB, 8 * MIB] {
            use_and_free(size);
        }
    })
    .join()
    .unwrap();
    let after = rss();
    assert!(
        after < before + 2 * MIB,
        "RSS {} MiB before, {} MiB after",
        before / MIB,
        after / MIB
    );
}
