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
//!
//! # Pipe capacity
//!
//! A default pipe holds 16 buffers (64 KiB when each holds a page, less when the socket's
//! fragments are smaller), so one stream moving gigabytes a second wakes its relay for every
//! 64 KiB. Each pipe is grown to [`PIPE_SIZE`] once, when it is created (pipes are pooled, so
//! this is one `fcntl` per pipe, not per connection): a fill then takes whatever the socket
//! holds, up to that much, in one call. The pages are the socket's own (splice moves page
//! references), so a big pipe costs memory only while it holds bytes. A kernel that refuses
//! the size (above `fs.pipe-max-size` without `CAP_SYS_RESOURCE`, or the user's pipe pages
//! over `fs.pipe-user-pages-soft`) leaves the pipe as it was: it still works, smaller.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::slots::{Slot, SlotPool};

/// The capacity each pipe is grown to (see "Pipe capacity" above); a power of two pages, so
/// the kernel gives exactly this. It bounds the bytes a splicing direction holds inside tpvs,
/// hence what a hand-over carries per direction ([`crate::handover::MAX_PENDING`]).
pub const PIPE_SIZE: usize = 1024 * 1024;
// What a paused direction holds must fit what a hand-over accepts.
const _: () = assert!(PIPE_SIZE <= crate::handover::MAX_PENDING as usize);

/// What a pipe is assumed to hold when even its size cannot be read: one page, the least a
/// pipe has.
const SMALLEST_PIPE: usize = 4096;

/// A non-blocking pipe, empty whenever it is in the pool.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes it is asked to hold at most: its capacity, never more than [`PIPE_SIZE`].
    capacity: usize,
    /// Its place in the pipe budget, given back when the pipe is closed.
    _budget: Option<Slot>,
}

impl Pipe {
    /// A pipe of [`PIPE_SIZE`], or smaller when the kernel refuses that size.
    pub fn new() -> io::Result<Pipe> {
        Pipe::with_capacity(PIPE_SIZE)
    }

    /// A pipe grown to `want` bytes (the kernel rounds up to a power of two pages), or left at
    /// the size the kernel gave it when growing is refused.
    pub fn with_capacity(want: usize) -> io::Result<Pipe> {
        let mut fds: [libc::c_int; 2] = [-1, -1];
        // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let capacity = grow(&write, want).unwrap_or_else(|_| current_size(&write).unwrap_or(SMALLEST_PIPE)).min(want);
        Ok(Pipe { read, write, capacity, _budget: None })
    }

    /// The most bytes this pipe is asked to hold.
    pub fn capacity(&self) -> usize {
        self.capacity
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

/// `F_SETPIPE_SZ`: the capacity the kernel gave (at least `want`), or its refusal.
fn grow(pipe: &OwnedFd, want: usize) -> io::Result<usize> {
    let want = libc::c_int::try_from(want).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: fcntl on an fd the caller owns; F_SETPIPE_SZ takes an int and touches no memory.
    let got = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
    if got < 0 { Err(io::Error::last_os_error()) } else { Ok(got as usize) }
}

/// `F_GETPIPE_SZ`: the pipe's capacity now.
fn current_size(pipe: &OwnedFd) -> io::Result<usize> {
    // SAFETY: fcntl on an fd the caller owns; F_GETPIPE_SZ touches no memory.
    let got = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if got < 0 { Err(io::Error::last_os_error()) } else { Ok(got as usize) }
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
    fn a_new_pipe_is_grown_to_the_bulk_size() {
        let pipe = Pipe::new().unwrap_or_else(|e| panic!("pipe: {e}"));
        assert_eq!(pipe.capacity(), PIPE_SIZE);
        // The kernel's word, not our bookkeeping: 16 times the default pipe.
        assert_eq!(current_size(&pipe.write).ok(), Some(PIPE_SIZE));
    }

    /// An unprivileged user asking for more than `fs.pipe-max-size` is refused by the kernel
    /// (EPERM): the pipe keeps the size it was created with, says so, and still moves bytes.
    #[test]
    fn a_refused_size_leaves_a_working_pipe_of_the_size_it_has() {
        let max: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
        // Credentials are per thread in the kernel: the raw syscall drops root (and with it
        // CAP_SYS_RESOURCE) for this thread only. Not root to begin with: already unprivileged.
        let outcome = std::thread::spawn(move || -> Result<(), String> {
            // SAFETY: plain syscall with integer arguments, affecting only this thread.
            unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
            let probe = Pipe::with_capacity(SMALLEST_PIPE).map_err(|e| e.to_string())?;
            let refused = grow(&probe.write, 2 * max);
            if refused.is_ok() {
                return Err(format!("the kernel granted {} bytes: no refusal to test", 2 * max));
            }
            let pipe = Pipe::with_capacity(2 * max).map_err(|e| format!("a refused size failed the pipe: {e}"))?;
            let actual = current_size(&pipe.write).map_err(|e| e.to_string())?;
            if pipe.capacity() != actual || actual >= 2 * max {
                return Err(format!("capacity {} for a pipe of {actual} bytes", pipe.capacity()));
            }
            let (a, b) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
            std::io::Write::write_all(&mut &a, b"bulk").map_err(|e| e.to_string())?;
            let n = pipe.fill(b.as_raw_fd(), pipe.capacity()).map_err(|e| e.to_string())?;
            if pipe.read_out(n).map_err(|e| e.to_string())? != b"bulk" {
                return Err("the pipe did not carry the bytes".into());
            }
            Ok(())
        })
        .join();
        assert!(matches!(outcome, Ok(Ok(()))), "{outcome:?}");
    }

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
