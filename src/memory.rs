//! Allocator settings for a long-running process with large, short-lived tensors.
//!
//! glibc raises its mmap threshold after the first large block is freed, so later
//! activation tensors (megabytes each) come from heap arenas and stay resident after
//! use; with several worker and handler threads the resident size creeps up with every
//! burst of requests. A fixed threshold returns large blocks to the system when they
//! are freed, a small arena count bounds fragmentation, and [`release_free_memory`]
//! hands back what the arenas still hold once a worker has been idle for a moment. (mimalloc was
//! measured too: it kept about 900 MB resident after the same bursts.) Other C
//! libraries need nothing.

/// Blocks at least this large are mapped on their own and unmapped when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: i32 = 1 << 20;
/// malloc arenas shared by all threads.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: i32 = 4;

/// Applies the settings; call once, at start, before other threads exist.
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes tuning parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}

/// For training instead: every step allocates and frees the same few hundred megabytes of
/// activations and gradients, and mapping them afresh each time spent a third of the step
/// clearing new pages. Keep freed blocks in the heap for the next step.
pub fn configure_allocator_for_training() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes tuning parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Returns the free memory malloc still holds to the system (call when idle).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
