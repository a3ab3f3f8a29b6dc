//! Undo for a start-up that does not finish.
//!
//! Each step that changes state outside the process (policy routing, the nft table) registers
//! how to undo itself *before* it runs, since a step can fail half-way. If start-up returns an
//! error or panics, the guard undoes the registered steps in reverse order; once start-up
//! completes, [`StartupGuard::commit`] disarms it and the normal shutdown path owns the state.
//! Only what this start-up registered is undone: state owned by another instance is never
//! registered (start-up stops at the ownership check before touching anything).

use tracing::{info, warn};

type Undo = Box<dyn FnOnce() -> anyhow::Result<()> + Send>;

#[derive(Default)]
pub struct StartupGuard {
    steps: Vec<(&'static str, Undo)>,
}

impl StartupGuard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the undo of the step about to run.
    pub fn on_failure(&mut self, what: &'static str, undo: impl FnOnce() -> anyhow::Result<()> + Send + 'static) {
        self.steps.push((what, Box::new(undo)));
    }

    /// Start-up completed: nothing will be undone.
    pub fn commit(mut self) {
        self.steps.clear();
    }

    /// The steps registered so far, oldest first (for tests and logs).
    pub fn steps(&self) -> Vec<&'static str> {
        self.steps.iter().map(|(w, _)| *w).collect()
    }
}

impl Drop for StartupGuard {
    fn drop(&mut self) {
        if self.steps.is_empty() {
            return;
        }
        info!(steps = self.steps.len(), "start-up failed: undoing what it installed");
        while let Some((what, undo)) = self.steps.pop() {
            match undo() {
                Ok(()) => info!(step = what, "undone"),
                Err(e) => warn!(step = what, error = format!("{e:#}"), "could not undo a start-up step"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Log = Arc<Mutex<Vec<&'static str>>>;

    /// A log of undone steps, and a maker of undo steps that record themselves in it.
    fn recorder() -> (Log, impl Fn(&'static str) -> Undo) {
        let log = Log::default();
        let l = Arc::clone(&log);
        let make = move |name: &'static str| -> Undo {
            let l = Arc::clone(&l);
            Box::new(move || {
                l.lock().unwrap_or_else(|p| p.into_inner()).push(name);
                anyhow::ensure!(name != "failing", "cannot undo");
                Ok(())
            })
        };
        (log, make)
    }

    #[test]
    fn a_dropped_guard_undoes_every_step_in_reverse_even_past_a_failing_one() {
        let (log, make) = recorder();
        {
            let mut g = StartupGuard::new();
            g.on_failure("routing", make("routing"));
            g.on_failure("failing", make("failing"));
            g.on_failure("table", make("table"));
            assert_eq!(g.steps(), ["routing", "failing", "table"]);
        }
        assert_eq!(*log.lock().unwrap_or_else(|p| p.into_inner()), ["table", "failing", "routing"]);
    }

    #[test]
    fn a_committed_guard_undoes_nothing() {
        let (log, make) = recorder();
        let mut g = StartupGuard::new();
        g.on_failure("routing", make("routing"));
        g.commit();
        assert!(log.lock().unwrap_or_else(|p| p.into_inner()).is_empty());
    }

    #[test]
    fn a_panicking_start_up_is_undone_too() {
        let (log, make) = recorder();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut g = StartupGuard::new();
            g.on_failure("table", make("table"));
            panic!("start-up bug");
        }));
        assert!(r.is_err());
        assert_eq!(*log.lock().unwrap_or_else(|p| p.into_inner()), ["table"]);
    }
}
