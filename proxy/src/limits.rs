//! The process's file-descriptor limit.

/// Raises the soft `RLIMIT_NOFILE` to the hard one and returns the limit now in force
/// (`None` when it cannot be read).
///
/// Each proxied connection costs two sockets and (in flight) two pipes, each UDP flow one
/// socket, and a load test holds thousands of client and backend sockets: the usual soft limit
/// of 1024 would refuse work for the wrong reason.
pub fn raise_fd_limit() -> Result<u64, std::io::Error> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: a valid rlimit for setrlimit to read.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok(lim.rlim_cur)
}
