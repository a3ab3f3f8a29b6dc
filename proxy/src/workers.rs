//! Starting the data path's worker threads, for the TCP, the plain and the UDP paths alike.
//!
//! Each worker sets itself up on its own thread (binds its listeners, builds its loop), says
//! ready or failed, then serves. [`spawn`] returns only when every worker is ready, so the
//! interception rules installed afterwards never send a packet to a port nobody listens on.

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Why the data path could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind the {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up {what} worker {worker}: {source}")]
    Setup {
        what: &'static str,
        worker: usize,
        #[source]
        source: io::Error,
    },
    #[error("cannot start a worker thread: {0}")]
    Thread(#[source] io::Error),
    #[error("worker {0} exited before it was ready")]
    Vanished(usize),
}

/// A worker's one report: ready (with what the caller wants to know, e.g. whether IPv6 is
/// served) or failed.
#[derive(Debug)]
pub struct Ready<R> {
    index: usize,
    tx: mpsc::Sender<(usize, Result<R, StartError>)>,
}

impl<R> Ready<R> {
    pub fn ok(self, report: R) {
        // The caller may have given up on another worker's failure; nothing to tell then.
        let _ = self.tx.send((self.index, Ok(report)));
    }

    pub fn fail(self, e: StartError) {
        let _ = self.tx.send((self.index, Err(e)));
    }
}

/// The started workers, and each one's ready report in index order.
#[derive(Debug)]
pub struct Spawned<R> {
    pub threads: Vec<JoinHandle<()>>,
    pub reports: Vec<R>,
}

/// Starts `n` threads named `{name}-{i}`; `make(i)` (on the caller's thread) builds thread
/// `i`'s body, which must call [`Ready::ok`] or [`Ready::fail`] before serving.
pub fn spawn<R, F, M>(name: &str, n: usize, mut make: M) -> Result<Spawned<R>, StartError>
where
    R: Send + 'static,
    F: FnOnce(Ready<R>) + Send + 'static,
    M: FnMut(usize) -> Result<F, StartError>,
{
    let n = n.max(1);
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::with_capacity(n);
    for index in 0..n {
        let body = make(index)?;
        let ready = Ready { index, tx: tx.clone() };
        let t = std::thread::Builder::new()
            .name(format!("{name}-{index}"))
            .spawn(move || body(ready))
            .map_err(StartError::Thread)?;
        threads.push(t);
    }
    drop(tx);
    let mut reports: Vec<Option<R>> = (0..n).map(|_| None).collect();
    for _ in 0..n {
        match rx.recv() {
            Ok((i, Ok(r))) => {
                if let Some(slot) = reports.get_mut(i) {
                    *slot = Some(r);
                }
            }
            Ok((_, Err(e))) => return Err(e),
            // Every sender is gone although some worker never reported: it panicked.
            Err(_) => return Err(StartError::Vanished(reports.iter().position(Option::is_none).unwrap_or(n))),
        }
    }
    let reports = reports.into_iter().enumerate().map(|(i, r)| r.ok_or(StartError::Vanished(i))).collect::<Result<_, _>>()?;
    Ok(Spawned { threads, reports })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_every_worker_and_keeps_reports_in_order() {
        let spawned = spawn("t", 3, |i| {
            Ok(move |ready: Ready<usize>| {
                std::thread::sleep(std::time::Duration::from_millis(10 * (3 - i as u64)));
                ready.ok(i * 10);
            })
        });
        match spawned {
            Ok(s) => assert_eq!(s.reports, vec![0, 10, 20]),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_failed_or_vanished_worker_fails_the_start() {
        let failed = spawn("t", 2, |i| {
            Ok(move |ready: Ready<()>| {
                if i == 1 {
                    ready.fail(StartError::Vanished(99));
                } else {
                    ready.ok(());
                }
            })
        });
        assert!(matches!(failed, Err(StartError::Vanished(99))));
        let vanished = spawn("t", 1, |_| Ok(move |ready: Ready<()>| drop(ready)));
        assert!(matches!(vanished, Err(StartError::Vanished(0))));
    }
}
