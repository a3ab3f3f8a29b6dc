//! Which worker the kernel gives a new connection to.
//!
//! The workers' listeners form one `SO_REUSEPORT` group per address family. By default the
//! kernel picks a listener by hashing the 4-tuple, which spreads connections unevenly over a
//! few workers: one worker ends up with more keep-alive connections than another and its queue
//! sets the tail. With [`Steering::Cpu`], a classic-BPF program attached to the group returns
//! the id of the CPU handling the SYN, and worker `i`, pinned to CPU `i`, owns the group's
//! `i`-th listener: a connection is accepted and relayed on the CPU whose softirq received it
//! (no cross-CPU wake-up), and connections follow how the kernel spreads packets over CPUs.
//!
//! Group index `i` is the `i`-th listener that started listening on the address, which is
//! worker `i`'s (`bind_listeners` binds in worker order; a hand-over passes the same sockets
//! in the same order, and the program, attached to the group, stays). A CPU id beyond the
//! group (a SYN handled on a CPU without a worker) makes the kernel fall back to the hash.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use tracing::warn;

/// How new connections are spread over the workers (`--worker-steering`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Steering {
    /// To the worker pinned to the CPU that received the SYN (needs one worker per CPU).
    Cpu,
    /// The kernel's hash of the 4-tuple (workers not pinned).
    Hash,
}

impl Steering {
    /// What can be done with `workers` workers in this process: `Cpu` needs exactly one worker
    /// per CPU the process may run on, numbered from 0 (a CPU id is the group index).
    /// Otherwise it falls back to `Hash` and says why.
    pub fn resolve(self, workers: usize) -> Steering {
        if self == Steering::Hash {
            return Steering::Hash;
        }
        match allowed_cpus() {
            Ok(cpus) if cpus.len() == workers && cpus.iter().enumerate().all(|(i, c)| i == *c) => Steering::Cpu,
            Ok(cpus) => {
                warn!(
                    workers,
                    allowed_cpus = ?cpus,
                    "--worker-steering cpu needs one worker per CPU, on CPUs 0..workers-1; steering by hash instead"
                );
                Steering::Hash
            }
            Err(e) => {
                warn!(error = %e, "cannot read the CPUs this process may use; steering by hash instead");
                Steering::Hash
            }
        }
    }

    /// Applies the steering to the group `listener` belongs to: attaches the CPU program, or
    /// removes one a predecessor attached (a hand-over may change the flag).
    pub fn apply(self, listener: BorrowedFd<'_>) -> io::Result<()> {
        match self {
            Steering::Cpu => attach_cpu_program(listener),
            Steering::Hash => match detach_program(listener) {
                // No program was attached.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                r => r,
            },
        }
    }
}

/// `A = the current CPU id; return A` (the group index of the listener to pick).
fn attach_cpu_program(listener: BorrowedFd<'_>) -> io::Result<()> {
    let mut code = [
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
        },
        libc::sock_filter { code: (libc::BPF_RET | libc::BPF_A) as u16, jt: 0, jf: 0, k: 0 },
    ];
    let prog = libc::sock_fprog { len: code.len() as u16, filter: code.as_mut_ptr() };
    // SAFETY: `prog` points at `code`, both alive for the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn detach_program(listener: BorrowedFd<'_>) -> io::Result<()> {
    crate::sockopt::set_int(listener.as_raw_fd(), libc::SOL_SOCKET, libc::SO_DETACH_REUSEPORT_BPF, 0)
}

/// The CPUs this process may run on, in increasing order.
fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size given.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET only reads the set, for ids within CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes within the set; `cpu` is below CPU_SETSIZE (checked by resolve).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size given; 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_always_possible_and_cpu_only_with_one_worker_per_cpu() {
        assert_eq!(Steering::Hash.resolve(3), Steering::Hash);
        let cpus = allowed_cpus().unwrap_or_default();
        let numbered_from_zero = cpus.iter().enumerate().all(|(i, c)| i == *c);
        assert_eq!(Steering::Cpu.resolve(cpus.len()) == Steering::Cpu, numbered_from_zero && !cpus.is_empty());
        assert_eq!(Steering::Cpu.resolve(cpus.len() + 1), Steering::Hash);
    }

    #[test]
    fn the_program_attaches_to_a_reuseport_listener_and_comes_off_again() {
        use std::os::fd::AsFd;
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap_or_else(|e| panic!("{e}"));
        s.set_reuse_port(true).unwrap_or_else(|e| panic!("{e}"));
        s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap_or_else(|e| panic!("{e}"));
        s.listen(8).unwrap_or_else(|e| panic!("{e}"));
        Steering::Cpu.apply(s.as_fd()).unwrap_or_else(|e| panic!("attach: {e}"));
        detach_program(s.as_fd()).unwrap_or_else(|e| panic!("detach what was attached: {e}"));
        // Nothing attached any more: detaching again is not an error for Hash.
        Steering::Hash.apply(s.as_fd()).unwrap_or_else(|e| panic!("{e}"));
    }
}
