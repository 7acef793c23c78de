//! Shared by kiln-train's test files.

use std::sync::{Mutex, MutexGuard};

/// Burn's backend RNG is process-wide and tests seed it: a test that seeds it, or initialises a
/// model while another test trains from a seed, holds this lock, or it changes that test's draws.
pub fn seeded_section() -> MutexGuard<'static, ()> {
    static RNG: Mutex<()> = Mutex::new(());
    RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
