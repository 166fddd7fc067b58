//! Copy buffers, reused per thread.
//!
//! A direction takes a buffer when its sender becomes readable and lets it
//! go once drained, so an idle tunnel holds none. Allocating and zeroing a
//! fresh 16 KiB each time cost two allocations and two 16 KiB memsets per
//! echoed message; a small pool per worker thread (each worker is one event
//! loop, so the pool needs no lock) keeps the few buffers in use at any
//! moment warm instead. A [`Buffer`] goes back to its thread's pool when it
//! is dropped, whatever drops it: a drained read, a tunnel's end, an error.
//!
//! Must not: grow with the number of tunnels. At most [`POOL_CAP`] idle
//! buffers stay per thread; the rest are freed.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

use super::COPY_BUFFER_SIZE;

/// Idle buffers kept per thread: 512 KiB, more than one event loop has
/// mid-copy at once unless writes block, and then those buffers are held
/// by their directions, not here.
const POOL_CAP: usize = 32;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Bytes a direction is moving: a pooled copy buffer of
/// [`COPY_BUFFER_SIZE`] bytes, or a frame of wsgate's own (never pooled).
pub(crate) struct Buffer {
    bytes: Vec<u8>,
    pooled: bool,
}

impl Buffer {
    /// A copy buffer. Its contents are whatever it last held: callers only
    /// read back what they wrote into it.
    pub(crate) fn take() -> Self {
        let bytes = POOL
            .try_with(|p| p.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| vec![0; COPY_BUFFER_SIZE]);
        Self {
            bytes,
            pooled: true,
        }
    }

    /// Whether this is a copy buffer (and not a frame of wsgate's own).
    pub(crate) fn is_copy_buffer(&self) -> bool {
        self.pooled
    }
}

impl From<Vec<u8>> for Buffer {
    /// A frame of wsgate's own, or bytes read past a handshake.
    fn from(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            pooled: false,
        }
    }
}

impl Deref for Buffer {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.bytes
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if !self.pooled || self.bytes.len() != COPY_BUFFER_SIZE {
            return;
        }
        let bytes = std::mem::take(&mut self.bytes);
        // At thread exit the pool may be gone already: then it is freed.
        let _ = POOL.try_with(|p| {
            let mut pool = p.borrow_mut();
            if pool.len() < POOL_CAP {
                pool.push(bytes);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pooled() -> usize {
        POOL.with_borrow(Vec::len)
    }

    #[test]
    fn a_dropped_buffer_is_taken_again_and_the_pool_is_bounded() {
        // Each test runs on its own thread, so the pool starts empty.
        let first = Buffer::take();
        assert_eq!(first.len(), COPY_BUFFER_SIZE);
        let ptr = first.as_ptr();
        drop(first);
        assert_eq!(pooled(), 1);
        let again = Buffer::take();
        assert_eq!(again.as_ptr(), ptr, "reused, not reallocated");
        drop(again);

        let many: Vec<Buffer> = (0..POOL_CAP + 10).map(|_| Buffer::take()).collect();
        drop(many);
        assert_eq!(pooled(), POOL_CAP);
    }

    #[test]
    fn frames_of_our_own_are_not_kept() {
        drop(Buffer::from(vec![0; 7]));
        drop(Buffer::from(vec![0; COPY_BUFFER_SIZE]));
        assert_eq!(pooled(), 0);
        assert!(!Buffer::from(vec![1]).is_copy_buffer());
        assert!(Buffer::take().is_copy_buffer());
    }
}
