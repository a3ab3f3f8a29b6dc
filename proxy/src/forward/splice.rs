//! Zero-copy transfer from one socket to another through a kernel pipe (`splice(2)`).
//!
//! Bytes go socket → pipe → socket without entering user space: no buffer to allocate per
//! connection (so memory does not grow with connection count beyond the kernel's socket
//! buffers), no copy for bulk transfers. A pipe is two fds; creating and closing them per
//! connection would cost four syscalls on the new-connection path, so each worker keeps a pool
//! of empty pipes and reuses them.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per splice call: the default pipe capacity (16 pages), so one call can fill it.
const CHUNK: usize = 64 * 1024;

/// A non-blocking pipe, empty whenever it is in the pool.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
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
        Ok(Pipe { read, write })
    }
}

/// Per-worker pool of empty pipes (a worker is one thread, hence `RefCell`).
#[derive(Debug)]
pub struct PipePool {
    free: RefCell<Vec<Pipe>>,
    cap: usize,
}

impl PipePool {
    pub fn new(cap: usize) -> Self {
        PipePool { free: RefCell::new(Vec::new()), cap }
    }

    pub fn take(&self) -> io::Result<Pipe> {
        match self.free.borrow_mut().pop() {
            Some(p) => Ok(p),
            None => Pipe::new(),
        }
    }

    /// Returns a pipe the caller knows to be empty (a transfer that ended cleanly drained it).
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

/// Moves bytes from `from` to `to` until `from` reaches end of stream, then half-closes `to`
/// (FIN) so the other side sees exactly what this side saw. `on_bytes` hears every chunk.
///
/// On `Ok` the pipe is empty again; on `Err` it may hold bytes and must not be reused.
pub async fn transfer(from: &TcpStream, to: &TcpStream, pipe: &Pipe, mut on_bytes: impl FnMut(u64)) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        // Fill: the pipe is empty here, so WouldBlock can only mean the socket has no data,
        // which is exactly what clearing the read readiness says.
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || splice(from.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // End of stream: pass the FIN on. The peer may already be gone; that is its news
            // to deliver through the other direction, not an error of this one.
            let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
            return Ok(total);
        }
        // Drain: the pipe holds `n` bytes, so WouldBlock means the destination's send buffer
        // is full.
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left)) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "splice wrote nothing")),
                Ok(m) => left -= m.min(left),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
        on_bytes(n as u64);
    }
}
