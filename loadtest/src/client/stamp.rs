//! Reading a response frame together with the kernel's receive timestamp, so the generator can
//! tell how long the reply sat in the socket before its task ran: the receive half of the
//! generator's own error, which is then kept out of the measured latency.
//!
//! `SO_TIMESTAMPNS` makes every `recvmsg` on a TCP socket carry the wall-clock time at which
//! the newest segment it returns reached the socket. The lag is measured on that same clock
//! (`CLOCK_REALTIME` read right after the call), so it needs no conversion to `Instant`.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Asks the kernel to timestamp what this socket receives.
pub fn enable(stream: &TcpStream) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, and an option value that lives across the call with
    // its exact size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Fills `buf` from `stream`; returns how long ago the kernel received its last bytes, or
/// `None` when the kernel gave no timestamp (timestamps not enabled).
pub async fn read_exact(stream: &TcpStream, buf: &mut [u8]) -> io::Result<Option<Duration>> {
    let mut filled = 0;
    let mut stamp = None;
    while filled < buf.len() {
        let (n, at) = read_some(stream, &mut buf[filled..]).await?;
        filled += n;
        stamp = at.or(stamp);
    }
    Ok(waited_since(stamp))
}

/// Reads what is available into `buf` (waiting for at least one byte); the bytes read and
/// the kernel's receive time of the newest of them (on `CLOCK_REALTIME`, for
/// [`waited_since`]), if it sent one. The end of the stream is an error: every caller is
/// waiting for a reply.
pub async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Option<Duration>)> {
    loop {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || recv_stamped(stream.as_raw_fd(), buf)) {
            Ok((0, _)) if !buf.is_empty() => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(got) => return Ok(got),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// How long ago the kernel stamped a segment at `at` (from [`read_some`]).
pub fn waited_since(at: Option<Duration>) -> Option<Duration> {
    at.and_then(|at| realtime_now().checked_sub(at))
}

/// One `recvmsg` into `buf`; the bytes read and the kernel's receive time, if it sent one.
fn recv_stamped(fd: libc::c_int, buf: &mut [u8]) -> io::Result<(usize, Option<Duration>)> {
    // Room for one timespec control message, aligned as cmsghdr requires.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header, filled in below.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 8]>() as _;
    // SAFETY: msg points at an iovec over `buf` and a control buffer, both alive and of the
    // lengths given, for the duration of the call.
    let n = unsafe { libc::recvmsg(fd, &raw mut msg, libc::MSG_DONTWAIT) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    let mut at = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel just filled, bounded by
    // msg_controllen; a data pointer is read only for a header of the expected type and a
    // length that holds a whole timespec (read unaligned: the buffer is ours, the layout the
    // kernel's).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET
                && (*c).cmsg_type == libc::SCM_TIMESTAMPNS
                && (*c).cmsg_len as usize >= libc::CMSG_LEN(size_of::<libc::timespec>() as u32) as usize
            {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                at = timespec(ts);
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    Ok((n, at))
}

fn timespec(ts: libc::timespec) -> Option<Duration> {
    Some(Duration::new(u64::try_from(ts.tv_sec).ok()?, u32::try_from(ts.tv_nsec).ok()?))
}

/// `CLOCK_REALTIME` now, the clock the kernel stamps with.
fn realtime_now() -> Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply left unread for 30 ms is reported as having waited about that long.
    #[tokio::test]
    async fn measures_how_long_a_reply_waited_in_the_socket() -> io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (mut server, _) = listener.accept().await?;
        enable(&client)?;
        // The kernel switches receive timestamps on system-wide through a deferred static key:
        // until that work has run (late on a busy machine) packets arrive unstamped. Wait for
        // the first stamped byte before measuring.
        let mut one = [0u8; 1];
        let mut stamped = false;
        for _ in 0..200 {
            tokio::io::AsyncWriteExt::write_all(&mut server, &[0u8]).await?;
            if read_exact(&client, &mut one).await?.is_some() {
                stamped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(stamped, "the kernel never stamped a received packet");
        tokio::io::AsyncWriteExt::write_all(&mut server, &[7u8; 16]).await?;
        std::thread::sleep(Duration::from_millis(30));
        let mut buf = [0u8; 16];
        let lag = read_exact(&client, &mut buf).await?;
        assert_eq!(buf, [7u8; 16]);
        let lag = lag.unwrap_or_else(|| panic!("no kernel timestamp"));
        assert!(lag >= Duration::from_millis(29) && lag < Duration::from_secs(5), "lag {lag:?}");
        // Without timestamps the wait is unknown, not zero.
        let plain = TcpStream::connect(listener.local_addr()?).await?;
        let (mut server, _) = listener.accept().await?;
        tokio::io::AsyncWriteExt::write_all(&mut server, &[1u8; 16]).await?;
        assert_eq!(read_exact(&plain, &mut buf).await?, None);
        Ok(())
    }
}
