//! Copy buffers, reused per thread.
//!
//! A direction takes a buffer when its sender becomes readable and gives it
//! back once drained, so an idle tunnel holds none. Allocating and zeroing
//! a fresh 16 KiB each time cost two allocations and two 16 KiB memsets per
//! echoed message; a small pool per worker thread (each worker is one
//! event loop, so the pool needs no lock) keeps the few buffers in use at
//! any moment warm instead.
//!
//! Must not: grow with the number of tunnels. At most [`POOL_CAP`] idle
//! buffers stay per thread; the rest are freed.

use std::cell::RefCell;

use super::COPY_BUFFER_SIZE;

/// Idle buffers kept per thread: 512 KiB, more than one event loop has
/// mid-copy at once unless writes block, and then those buffers are held
/// by their directions, not here.
const POOL_CAP: usize = 32;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of [`COPY_BUFFER_SIZE`] bytes. Its contents are whatever it
/// last held: callers only read back what they wrote into it.
pub(crate) fn take() -> Vec<u8> {
    POOL.with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| vec![0; COPY_BUFFER_SIZE])
}

/// Gives `buf` back for reuse; a buffer of another size (a frame of
/// wsgate's own) is freed.
pub(crate) fn give(buf: Vec<u8>) {
    if buf.len() != COPY_BUFFER_SIZE {
        return;
    }
    POOL.with_borrow_mut(|pool| {
        if pool.len() < POOL_CAP {
            pool.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_taken_again_and_the_pool_is_bounded() {
        // Each test runs on its own thread, so the pool starts empty.
        let first = take();
        assert_eq!(first.len(), COPY_BUFFER_SIZE);
        let ptr = first.as_ptr();
        give(first);
        let again = take();
        assert_eq!(again.as_ptr(), ptr, "reused, not reallocated");
        give(again);

        let many: Vec<Vec<u8>> = (0..POOL_CAP + 10).map(|_| take()).collect();
        for b in many {
            give(b);
        }
        assert_eq!(POOL.with_borrow(Vec::len), POOL_CAP);
    }

    #[test]
    fn buffers_of_another_size_are_not_kept() {
        give(vec![0; 7]);
        assert_eq!(POOL.with_borrow(Vec::len), 0);
    }
}
