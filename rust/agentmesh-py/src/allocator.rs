//! The extension's global allocator: mimalloc, which keeps freed memory for reuse (glibc hands
//! megabyte buffers back to the kernel, and every large message then pays page faults again),
//! with a live-bytes count that the memory benchmark switches on (`_bench_rust_heap`). Python's
//! own objects are not allocated here.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};

use mimalloc::MiMalloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);

fn signed(n: usize) -> isize {
    isize::try_from(n).unwrap_or(isize::MAX)
}

fn count(delta: isize) {
    // One relaxed load while the count is off (always, outside the memory benchmark).
    if COUNTING.load(Relaxed) {
        LIVE.fetch_add(delta, Relaxed);
    }
}

/// Starts counting (from here on) and returns the bytes allocated and not freed since the
/// first call. Only differences between two calls mean anything.
pub fn live_bytes() -> isize {
    COUNTING.store(true, Relaxed);
    LIVE.load(Relaxed)
}

struct CountingMiMalloc;

// SAFETY: every call is forwarded unchanged to mimalloc's GlobalAlloc; the count is bookkeeping.
unsafe impl GlobalAlloc for CountingMiMalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { MiMalloc.alloc(layout) };
        if !p.is_null() {
            count(signed(layout.size()));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            count(signed(layout.size()));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-signed(layout.size()));
        // SAFETY: same contract as ours.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(signed(new_size) - signed(layout.size()));
        }
        p
    }
}

#[global_allocator]
static GLOBAL: CountingMiMalloc = CountingMiMalloc;
