//! The data path's threads: `runtime.workers` threads, each running its own
//! current-thread tokio runtime, the way nginx and HAProxy run one event
//! loop per core.
//!
//! Why not tokio's multi-thread runtime: one of its workers keeps at most
//! 256 tasks in its local queue and moves the rest of a burst of wake-ups
//! to a global queue that it visits only every 31 tasks, so under
//! saturation the tunnels that overflow wait far longer than the others
//! (p99 round trip about 150 ms against 33-40 ms with a current-thread
//! runtime, same code, 1,000 tunnels in a closed loop). A current-thread
//! runtime runs its ready tasks in the order they woke.
//!
//! Every worker accepts on every listener: each holds its own descriptor of
//! the one listening socket (a duplicate, so sockets handed over by a
//! service manager work the same), and the kernel gives each connection to
//! whichever worker accepts first. A worker busy with a long batch accepts
//! less meanwhile, so new connections go to the less loaded ones. A
//! connection then lives on the worker that accepted it: its tunnel, its
//! backend connection and its timers, with no hand-off between threads.
//!
//! Owns: starting the threads, and ending them once the last reference to
//! the running wsgate is gone.
//!
//! Must not: hold a runtime outside its own thread. A runtime dropped
//! inside an async context panics, and the last reference to the gateway
//! may well be dropped by a task on a worker.

use std::io;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The worker threads. Dropping this ends them; tasks still on them are
/// dropped with their runtime.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    exit: CancellationToken,
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    ///
    /// # Errors
    /// The OS refused a thread, or a runtime could not be built (out of
    /// file descriptors for its event queue).
    pub fn start(count: usize) -> io::Result<Self> {
        let exit = CancellationToken::new();
        let mut this = Self {
            handles: Vec::with_capacity(count.max(1)),
            exit: exit.clone(),
        };
        for i in 0..count.max(1) {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let exit = exit.clone();
            std::thread::Builder::new()
                .name(format!("wsgate-worker-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(exit.cancelled());
                })?;
            // On failure `this` is dropped, which ends the threads started so far.
            let handle = rx
                .recv()
                .map_err(|_| io::Error::other("worker thread ended before it started"))??;
            this.handles.push(handle);
        }
        Ok(this)
    }

    /// The number of workers from `runtime.workers`: `None` means one per CPU.
    pub fn count(configured: Option<usize>) -> usize {
        configured.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }

    /// Each worker's runtime, to start tasks on it.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.exit.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_runs_tasks_on_its_own_thread() {
        let workers = Workers::start(3).expect("workers");
        assert_eq!(workers.handles().len(), 3);
        let mut names = std::collections::BTreeSet::new();
        for h in workers.handles() {
            let (tx, rx) = std::sync::mpsc::channel();
            h.spawn(async move {
                let _ = tx.send(std::thread::current().name().map(str::to_string));
            });
            let name = rx
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("the task ran");
            names.insert(name.expect("named thread"));
        }
        let want: std::collections::BTreeSet<String> =
            (0..3).map(|i| format!("wsgate-worker-{i}")).collect();
        assert_eq!(names, want);
    }

    #[test]
    fn dropping_the_workers_ends_their_tasks() {
        let workers = Workers::start(1).expect("workers");
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        workers.handles()[0].spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        // The sender is dropped with the task, when the runtime goes.
        assert!(matches!(
            rx.recv_timeout(std::time::Duration::from_secs(30)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        ));
    }

    #[test]
    fn zero_means_one() {
        let workers = Workers::start(0).expect("workers");
        assert_eq!(workers.handles().len(), 1);
    }
}
