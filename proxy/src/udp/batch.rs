//! Batched datagram I/O: `recvmmsg` into preallocated slots, `sendmmsg` straight out of them.
//!
//! Every buffer, address and control-message area is allocated once per worker; a datagram is
//! received into a slot and sent from the same bytes, so the hot path allocates nothing and
//! copies nothing in user space. The slots are 64 KiB each (any UDP datagram fits, so nothing
//! is ever truncated) but the memory is only virtual until a datagram that large arrives: the
//! kernel hands out zeroed pages on first touch.
//!
//! All `unsafe` of the UDP data path lives here, behind an API that borrows the batch for the
//! duration of each system call, so no pointer into a slot can outlive it.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per system call.
pub const BATCH: usize = 64;
/// Largest UDP payload (IPv4: 65507, IPv6 without jumbograms: 65527), rounded up.
pub const SLOT: usize = 65536;

/// Room for one `IP_ORIGDSTADDR`/`IPV6_ORIGDSTADDR` message (CMSG_SPACE(28) = 48 on 64-bit)
/// and a spare, aligned as `cmsghdr` requires.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct CmsgBuf([u8; 128]);

/// A socket address in the form `sendmsg` takes, built once per flow (no conversion per
/// datagram).
#[derive(Clone, Copy)]
pub struct RawAddr {
    // sockaddr_in6 is the larger of the two; a sockaddr_in is written over its start.
    storage: libc::sockaddr_in6,
    len: libc::socklen_t,
}

impl std::fmt::Debug for RawAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawAddr({:?})", self.to_socket_addr())
    }
}

impl RawAddr {
    pub fn new(addr: SocketAddr) -> RawAddr {
        // SAFETY: all-zero is a valid sockaddr_in6 (plain integers and byte arrays).
        let mut storage: libc::sockaddr_in6 = unsafe { zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_in (16 bytes) fits in sockaddr_in6 (28 bytes) and both are
                // plain-old-data with compatible alignment.
                unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_in6).cast::<libc::sockaddr_in>(), sin) };
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                storage.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                storage.sin6_port = a.port().to_be();
                storage.sin6_flowinfo = a.flowinfo();
                storage.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
                storage.sin6_scope_id = a.scope_id();
                size_of::<libc::sockaddr_in6>()
            }
        };
        RawAddr { storage, len: len as libc::socklen_t }
    }

    pub fn to_socket_addr(&self) -> Option<SocketAddr> {
        // SAFETY: `storage` is valid for `len` bytes and at least as large as any sockaddr
        // that `new` writes.
        unsafe { sockaddr_to_std((&self.storage as *const libc::sockaddr_in6).cast(), self.len as usize) }
    }
}

/// Reads a `sockaddr_in`/`sockaddr_in6` of `len` bytes at `p`.
///
/// # Safety
/// `p` must be valid for reads of `len` bytes.
unsafe fn sockaddr_to_std(p: *const libc::sockaddr, len: usize) -> Option<SocketAddr> {
    if len < size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: the caller vouches for `len` bytes; each branch checks the length it reads.
    unsafe {
        match i32::from((*p).sa_family) {
            libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
                let sin = std::ptr::read_unaligned(p.cast::<libc::sockaddr_in>());
                let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
            }
            libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
                let sin6 = std::ptr::read_unaligned(p.cast::<libc::sockaddr_in6>());
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(sin6.sin6_port), sin6.sin6_flowinfo, sin6.sin6_scope_id)))
            }
            _ => None,
        }
    }
}

/// `BATCH` receive slots with their source addresses and control messages.
pub struct RecvBatch {
    bufs: Box<[u8]>,
    names: Box<[libc::sockaddr_storage]>,
    cmsgs: Box<[CmsgBuf]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").finish_non_exhaustive()
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub fn new() -> RecvBatch {
        // SAFETY (for the zeroed values): sockaddr_storage, iovec and mmsghdr are plain C
        // structs for which all-zero (null pointers, zero lengths) is valid.
        RecvBatch {
            bufs: vec![0u8; BATCH * SLOT].into_boxed_slice(),
            names: (0..BATCH).map(|_| unsafe { zeroed::<libc::sockaddr_storage>() }).collect(),
            cmsgs: vec![CmsgBuf([0; 128]); BATCH].into_boxed_slice(),
            iovs: (0..BATCH).map(|_| unsafe { zeroed::<libc::iovec>() }).collect(),
            hdrs: (0..BATCH).map(|_| unsafe { zeroed::<libc::mmsghdr>() }).collect(),
        }
    }

    /// Receives up to `max` datagrams from `fd` into slots `start..`, without blocking.
    /// Returns how many arrived (0 when none was waiting).
    pub fn recv(&mut self, fd: RawFd, start: usize, max: usize) -> io::Result<usize> {
        let end = (start + max).min(BATCH);
        if start >= end {
            return Ok(0);
        }
        for i in start..end {
            // The pointers are re-armed on every call: cheap, and no self-reference survives
            // between calls (the struct may move).
            self.iovs[i] = libc::iovec { iov_base: self.bufs[i * SLOT..].as_mut_ptr().cast(), iov_len: SLOT };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.cmsgs[i].0.as_mut_ptr().cast();
            h.msg_controllen = size_of::<CmsgBuf>() as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        loop {
            // SAFETY: hdrs[start..end] point at live buffers owned by `self`, borrowed mutably
            // for the whole call.
            let rc = unsafe {
                libc::recvmmsg(fd, self.hdrs[start..].as_mut_ptr(), (end - start) as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
            };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(e),
            }
        }
    }

    /// The bytes of datagram `i` (as received by the last `recv` that filled it).
    #[inline]
    pub fn payload(&self, i: usize) -> &[u8] {
        let len = (self.hdrs[i].msg_len as usize).min(SLOT);
        &self.bufs[i * SLOT..i * SLOT + len]
    }

    /// Whether datagram `i` was cut short (cannot happen with 64 KiB slots; checked anyway).
    #[inline]
    pub fn truncated(&self, i: usize) -> bool {
        self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0
    }

    /// Who sent datagram `i`.
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        let len = self.hdrs[i].msg_hdr.msg_namelen as usize;
        // SAFETY: the kernel wrote `len` (≤ the storage's size) bytes of address.
        unsafe { sockaddr_to_std((&self.names[i] as *const libc::sockaddr_storage).cast(), len.min(size_of::<libc::sockaddr_storage>())) }
    }

    /// The original destination of datagram `i` (`IP_ORIGDSTADDR` / `IPV6_ORIGDSTADDR`): the
    /// VIP:port the client sent to before TPROXY diverted it.
    pub fn orig_dst(&self, i: usize) -> Option<SocketAddr> {
        let h = &self.hdrs[i].msg_hdr;
        // SAFETY: CMSG_FIRSTHDR/NXTHDR walk the control buffer within msg_controllen as the
        // kernel filled it; each message's data is read only within its cmsg_len.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                let level = (*c).cmsg_level;
                let ty = (*c).cmsg_type;
                let data_len = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                if (level == libc::SOL_IP && ty == libc::IP_ORIGDSTADDR) || (level == libc::SOL_IPV6 && ty == libc::IPV6_ORIGDSTADDR) {
                    return sockaddr_to_std(libc::CMSG_DATA(c).cast(), data_len);
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        None
    }
}

/// What one batched send achieved.
#[derive(Debug)]
pub struct Sent {
    pub datagrams: usize,
    pub bytes: u64,
    /// Why the rest was not sent (the socket buffer was full, the peer refused, ...).
    pub error: Option<io::Error>,
}

/// Headers for `sendmmsg`, reused for every send.
pub struct SendBatch {
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    names: Box<[RawAddr]>,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch").finish_non_exhaustive()
    }
}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SendBatch {
    pub fn new() -> SendBatch {
        let zero = RawAddr::new(SocketAddr::from(([0, 0, 0, 0], 0)));
        // SAFETY: all-zero iovec and mmsghdr are valid (null pointers, zero lengths).
        SendBatch {
            iovs: (0..BATCH).map(|_| unsafe { zeroed::<libc::iovec>() }).collect(),
            hdrs: (0..BATCH).map(|_| unsafe { zeroed::<libc::mmsghdr>() }).collect(),
            names: vec![zero; BATCH].into_boxed_slice(),
        }
    }

    /// Sends the datagrams in `from`'s `slots` on `fd` (connected: `to` is `None`), or to `to`
    /// each (one address per slot, same order), in as few `sendmmsg` calls as the socket
    /// takes. Stops at the first error.
    pub fn send(&mut self, fd: RawFd, from: &RecvBatch, slots: &[u16], to: Option<&[RawAddr]>) -> Sent {
        let n = slots.len().min(BATCH);
        let mut bytes = 0u64;
        for (j, &slot) in slots[..n].iter().enumerate() {
            let data = from.payload(usize::from(slot) % BATCH);
            bytes += data.len() as u64;
            self.iovs[j] = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
            let h = &mut self.hdrs[j].msg_hdr;
            match to.and_then(|t| t.get(j)) {
                Some(addr) => {
                    self.names[j] = *addr;
                    h.msg_name = (&mut self.names[j].storage as *mut libc::sockaddr_in6).cast();
                    h.msg_namelen = addr.len;
                }
                None => {
                    h.msg_name = std::ptr::null_mut();
                    h.msg_namelen = 0;
                }
            }
            h.msg_iov = &mut self.iovs[j];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        let mut done = 0usize;
        let mut error = None;
        while done < n {
            // SAFETY: hdrs[done..n] point at `self`'s iovecs and names and at payloads in
            // `from`, all borrowed for the whole call.
            let rc = unsafe { libc::sendmmsg(fd, self.hdrs[done..].as_mut_ptr(), (n - done) as libc::c_uint, libc::MSG_DONTWAIT) };
            if rc > 0 {
                done += rc as usize;
                continue;
            }
            let e = if rc == 0 { io::Error::from(io::ErrorKind::WriteZero) } else { io::Error::last_os_error() };
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            error = Some(e);
            break;
        }
        if done < n {
            bytes = slots[..done].iter().map(|&s| from.payload(usize::from(s) % BATCH).len() as u64).sum();
        }
        Sent { datagrams: done, bytes, error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("bad test address {s}: {e}"))
    }

    #[test]
    fn raw_addr_round_trips() {
        for s in ["10.96.0.10:53", "[fd00:96::10]:5353", "0.0.0.0:0", "[::1]:1"] {
            assert_eq!(RawAddr::new(sa(s)).to_socket_addr(), Some(sa(s)));
        }
    }

    #[test]
    fn batched_receive_and_send_over_loopback() -> io::Result<()> {
        let rx = UdpSocket::bind("127.0.0.1:0")?;
        let tx = UdpSocket::bind("127.0.0.1:0")?;
        let sink = UdpSocket::bind("127.0.0.1:0")?;
        for i in 0..10u8 {
            tx.send_to(&[i; 3], rx.local_addr()?)?;
        }
        let mut batch = RecvBatch::new();
        let mut got = 0;
        for _ in 0..100 {
            got += batch.recv(rx.as_raw_fd(), got, BATCH - got)?;
            if got == 10 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, 10);
        assert_eq!(batch.payload(3), &[3, 3, 3]);
        assert_eq!(batch.source(3), Some(tx.local_addr()?));
        assert!(!batch.truncated(3));
        assert_eq!(batch.orig_dst(3), None, "no IP_RECVORIGDSTADDR on this socket");
        // Send slots 1, 3 and 5 to the sink, by address.
        let to = vec![RawAddr::new(sink.local_addr()?); 3];
        let sent = SendBatch::new().send(tx.as_raw_fd(), &batch, &[1, 3, 5], Some(&to));
        assert_eq!((sent.datagrams, sent.bytes), (3, 9));
        assert!(sent.error.is_none());
        sink.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        let mut buf = [0u8; 16];
        let mut seen = Vec::new();
        for _ in 0..3 {
            let n = sink.recv(&mut buf)?;
            seen.push(buf[..n].to_vec());
        }
        assert_eq!(seen, vec![vec![1; 3], vec![3; 3], vec![5; 3]]);
        Ok(())
    }
}
