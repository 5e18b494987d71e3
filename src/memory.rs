//! How the process hands memory back to the system. The binary allocates through mimalloc
//! (see `main.rs`); SQLite allocates through the C library.

/// Tunes the C allocator; call before any other thread exists.
///
/// glibc gives memory back to the system as soon as 128 KiB lie free at the top of a thread's
/// heap; the store's writer frees and takes back that much in every transaction, and each
/// give-back cost a system call plus a TLB flush on every core: under load the largest single
/// cost in the writer's profile. Keeping up to 4 MiB per heap lets it reuse the memory instead.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tuning value of the C allocator, before other threads run.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
    }
}

/// Gives back what start-up freed. Validating the templates renders every sample (all of them
/// at once for digests), and both allocators keep freed pages for reuse, which an idle service
/// never asks for again: about 2 MiB of idle RSS. Call once, on the thread that started the
/// service, when it is ready; under other allocators (tests) the mimalloc call finds nothing.
pub fn release_after_start_up() {
    // SAFETY: both only return free memory to the system; neither touches live allocations.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        libc::malloc_trim(0);
    }
}
