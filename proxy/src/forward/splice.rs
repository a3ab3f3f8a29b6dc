//! Zero-copy socket-to-socket transfer through a kernel pipe (`splice(2)`), for the directions
//! of a connection that carry bulk (see [`super::relay`] for when a direction switches).
//!
//! Bytes go socket → pipe → socket without entering user space: no copy for bulk transfers, and
//! no per-connection buffer. A pipe is two fds; creating and closing them per connection would
//! cost four syscalls, so each worker keeps a pool of empty pipes and lends them to the
//! directions that need one, for as long as they need it.
//!
//! Pipes, pooled or lent, count against the descriptor budget's pipe share (shared by all
//! workers): when it is spent a direction keeps copying instead, so pipes never take the
//! descriptors that connections, flows or the admin servers were promised.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::slots::{Slot, SlotPool};

/// Bytes asked per splice call: the default pipe capacity (16 pages), so one call can fill it.
pub const CHUNK: usize = 64 * 1024;

/// A non-blocking pipe, empty whenever it is in the pool.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Its place in the pipe budget, given back when the pipe is closed.
    _budget: Option<Slot>,
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let mut fds: [libc::c_int; 2] = [-1, -1];
        // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pipe { read, write, _budget: None })
    }

    /// Moves up to `len` bytes from the socket `from` into the pipe.
    pub fn fill(&self, from: RawFd, len: usize) -> io::Result<usize> {
        splice(from, self.write.as_raw_fd(), len)
    }

    /// Reads exactly `len` bytes the pipe holds (a relay paused for a hand-over).
    pub fn read_out(&self, len: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        let mut at = 0;
        while at < len {
            // SAFETY: a valid pipe fd and a live buffer of `len - at` writable bytes from `at`.
            let n = unsafe { libc::read(self.read.as_raw_fd(), out[at..].as_mut_ptr().cast(), len - at) };
            match n {
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the pipe held fewer bytes than counted")),
                n if n > 0 => at += n as usize,
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Moves up to `len` bytes from the pipe into the socket `to`.
    pub fn drain(&self, to: RawFd, len: usize) -> io::Result<usize> {
        splice(self.read.as_raw_fd(), to, len)
    }
}

/// Per-worker pool of empty pipes (a worker is one thread, hence `RefCell`).
#[derive(Debug)]
pub struct PipePool {
    free: RefCell<Vec<Pipe>>,
    cap: usize,
    budget: Arc<SlotPool>,
}

impl PipePool {
    /// A pool keeping at most `cap` idle pipes, creating new ones only while `budget` has room.
    pub fn new(cap: usize, budget: Arc<SlotPool>) -> Self {
        PipePool { free: RefCell::new(Vec::new()), cap, budget }
    }

    /// A pipe from the pool, or a new one; an error when the budget is spent or the kernel
    /// refuses (the caller copies instead).
    pub fn take(&self) -> io::Result<Pipe> {
        if let Some(p) = self.free.borrow_mut().pop() {
            return Ok(p);
        }
        let slot = self.budget.try_take().ok_or_else(|| io::Error::other("pipe budget spent"))?;
        let mut pipe = Pipe::new()?;
        pipe._budget = Some(slot);
        Ok(pipe)
    }

    /// Pipes waiting in the pool.
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.free.borrow().len()
    }

    /// Returns a pipe the caller knows to be empty (every byte spliced in was spliced out).
    pub fn give(&self, pipe: Pipe) {
        let mut free = self.free.borrow_mut();
        if free.len() < self.cap {
            free.push(pipe);
        }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall on fds the caller keeps open for the duration of the call; null
    // offsets are required for sockets and pipes.
    let n = unsafe {
        libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK)
    };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_beyond_the_budget_are_refused_and_closed_ones_free_it() {
        let pool = PipePool::new(0, SlotPool::new(2));
        let a = pool.take();
        let b = pool.take();
        assert!(a.is_ok() && b.is_ok());
        assert!(pool.take().is_err(), "the budget holds two pipes");
        // A pool with no room closes what it is given back, which frees the budget.
        if let Ok(a) = a {
            pool.give(a);
        }
        assert!(pool.take().is_ok());
    }
}
