//! allocator: glibc's malloc told to give memory back to the system after large requests.
//!
//! By default glibc serves buffers from 128 KiB up with their own mappings, returned when
//! freed, but it raises that threshold to the size of each such buffer freed (up to 32 MiB),
//! so after the first large request body the next ones come from its heaps, which it keeps:
//! 100 concurrent bodies of 16 MiB left the server 33 MiB larger than before (77%). The
//! threshold is fixed at 1 MiB, and the heaps are trimmed (what is free at their ends given
//! back) within two seconds of a request that brought a large body or was refused for the
//! memory it would take (test: `concurrent_large_bodies_...` in `tests/e2e/protocol.rs`).
//! Elsewhere than glibc these do nothing.
#![allow(unsafe_code)]

/// Serve buffers of 1 MiB and more from mappings of their own, returned when freed. Call
/// before any thread starts.
pub fn give_back_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: sets one of the allocator's tunables; takes and returns plain integers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

static TRIM_WANTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A large request has come and gone: have the heaps trimmed soon (by [`trim_when_wanted`]).
pub fn trim_soon() {
    TRIM_WANTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Every two seconds, if [`trim_soon`] asked, give the free memory of malloc's heaps back to
/// the system (a few hundred microseconds, off the request path). Runs until the process ends.
pub async fn trim_when_wanted() {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        if TRIM_WANTED.swap(false, std::sync::atomic::Ordering::Relaxed) {
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

/// Give the free memory of malloc's heaps back to the system now (a few hundred
/// microseconds to milliseconds; call off the serving threads).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a plain integer and only releases free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What malloc has handed out and not taken back, all threads and heaps together (glibc's
/// `mallinfo2`: bytes in use in its heaps and in its own mappings); none elsewhere than glibc.
/// Unlike the resident memory, it does not move when heaps are trimmed or pages touched.
pub fn heap_bytes() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes nothing and returns a plain struct of counters.
        let info = unsafe { libc::mallinfo2() };
        Some((info.uordblks + info.hblkhd) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}
