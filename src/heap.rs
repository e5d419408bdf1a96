//! The C allocator's settings for the `rebound` process (glibc only).
//!
//! glibc's `malloc` gives threads that allocate at the same time arenas of their own, up to
//! 8 per core, and each arena keeps memory it has freed for reuse. In rebound the consumer's
//! and producers' librdkafka threads allocate every fetched message and the poll loop frees it,
//! so a long busy run spreads its peak over more arenas than a short one and the resident set
//! keeps growing with the volume that has passed, not with what is held (bench scenario 8:
//! 1.11–1.16× the peak of a run a tenth the size with glibc's default, 1.05× with two arenas;
//! BENCHMARKS.md). Two arenas bound that, for a process whose work is one poll loop.

/// The arena limit [`limit_arenas`] sets: the poll loop's thread and librdkafka's.
pub const ARENAS: i32 = 2;

/// Limits glibc's `malloc` to [`ARENAS`] arenas (`mallopt(M_ARENA_MAX)`, glibc's `mallopt(3)`),
/// unless the environment sets `MALLOC_ARENA_MAX` (glibc reads that at start, and the
/// operator's choice stands). Call it first thing in `main`, before any thread starts.
/// Returns the limit now in force when this call set it; `None` when the environment set one
/// or the C library is not glibc (nothing to do there: musl's allocator has no arenas).
pub fn limit_arenas() -> Option<i32> {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return None;
    }
    set_arena_max(ARENAS)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(arenas: i32) -> Option<i32> {
    // SAFETY: mallopt only records a tuning parameter of the allocator (glibc takes its own
    // lock for it); it has no pointer arguments and no other precondition.
    let done = unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    (done == 1).then_some(arenas)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: i32) -> Option<i32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc accepts the limit (its `mallopt` returns 1 on success, 0 for a parameter it does
    /// not know).
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_arena_limit() {
        assert_eq!(set_arena_max(ARENAS), Some(ARENAS));
    }
}
