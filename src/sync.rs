//! Locking that survives a panicking holder. Every mutex in the crate
//! guards data that stays consistent between statements (counters, caches,
//! queues), so a poisoned lock is taken over rather than propagated: a
//! panic on one FUSE or prefetch thread must not take every later reader
//! down with it. A leaf: any module may use it.

use std::sync::{Condvar, Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits on `cv` with `guard`, ignoring poisoning.
pub(crate) fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(|e| e.into_inner())
}
