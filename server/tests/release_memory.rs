//! `sys::release_free_memory` gives freed memory back: RSS falls after many small blocks are
//! freed around a few kept ones (which stop glibc from shrinking the heap by itself). Its own
//! test binary, so no other test allocates meanwhile.

use surv_server::sys::release_free_memory;

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

#[test]
fn freed_memory_goes_back_to_the_system() {
    const MIB: usize = 1 << 20;
    // In another thread, as the server's workers allocate: its own arena.
    let kept = std::thread::spawn(|| {
        let blocks: Vec<Vec<u8>> = (0..64 * 1024).map(|i| vec![i as u8; 1024]).collect();
        // Keep one block in 64: every page of the heap stays in use by a little.
        blocks.into_iter().step_by(64).collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    let before = rss();
    let released = release_free_memory();
    let after = rss();
    assert!(released, "nothing released");
    assert!(
        before.saturating_sub(after) >= 32 * MIB,
        "RSS {} MiB before, {} MiB after",
        before / MIB,
        after / MIB
    );
    assert_eq!(kept.len(), 1024);
    assert!(kept.iter().enumerate().all(|(i, b)| b[0] == (i * 64) as u8));
}
