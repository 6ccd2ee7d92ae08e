//! Taking a lock without deadlocking against the GIL: try first (the common, uncontended case
//! costs nothing extra); if another thread holds it, wait for it with the GIL released, because
//! that thread may itself be waiting for the GIL before it can let go.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

use pyo3::Python;

pub fn lock<'a, T: Send>(py: Python<'_>, m: &'a Mutex<T>) -> MutexGuard<'a, T> {
    loop {
        match m.try_lock() {
            Ok(g) => return g,
            Err(TryLockError::Poisoned(p)) => return p.into_inner(),
            Err(TryLockError::WouldBlock) => py.allow_threads(|| drop(m.lock())),
        }
    }
}

pub fn read<'a, T: Send + Sync>(py: Python<'_>, l: &'a RwLock<T>) -> RwLockReadGuard<'a, T> {
    loop {
        match l.try_read() {
            Ok(g) => return g,
            Err(TryLockError::Poisoned(p)) => return p.into_inner(),
            Err(TryLockError::WouldBlock) => py.allow_threads(|| drop(l.read())),
        }
    }
}

pub fn write<'a, T: Send + Sync>(py: Python<'_>, l: &'a RwLock<T>) -> RwLockWriteGuard<'a, T> {
    loop {
        match l.try_write() {
            Ok(g) => return g,
            Err(TryLockError::Poisoned(p)) => return p.into_inner(),
            Err(TryLockError::WouldBlock) => py.allow_threads(|| drop(l.write())),
        }
    }
}
