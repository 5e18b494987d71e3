//! The `kitebridge` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

// The request path allocates many small strings and JSON nodes; mimalloc serves them about a
// third faster than the system allocator (see `cargo bench --bench pipeline`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    keep_freed_memory();
    kitebridge::cli::main()
}

/// SQLite allocates through the C library, not mimalloc. glibc gives memory back to the system
/// as soon as 128 KiB lie free at the top of a thread's heap; the store's writer frees and takes
/// back that much in every transaction, and each give-back cost a system call plus a TLB flush
/// on every core: under load the largest single cost in the writer's profile. Keeping up to
/// 4 MiB per heap lets it reuse the memory instead.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes a tuning value of the C allocator; it is called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}
