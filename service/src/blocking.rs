//! A private tokio runtime for synchronous code that calls asynchronous clients (the intake's
//! PostgreSQL and S3 backends, the steward's batches in a bucket).
//!
//! Each call is spawned onto the runtime's one worker thread and waited for over a channel, so it
//! works from any thread: a plain thread, a blocking task, or an async task of another runtime
//! (where `Runtime::block_on` would panic).

/// The runtime has been shut down, or the call's task ended without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the storage runtime has stopped")]
pub struct RuntimeGone;

/// A one-worker runtime owned by one client.
pub struct BlockingRuntime {
    rt: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for BlockingRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockingRuntime")
    }
}

impl BlockingRuntime {
    /// A runtime whose worker thread is named `datadonor-<name>`.
    pub fn new(name: &str) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("datadonor-{name}"))
            .enable_all()
            .build()?;
        Ok(Self { rt: Some(rt) })
    }

    /// Run `f` on the runtime and wait for its result.
    pub fn run<F>(&self, f: F) -> Result<F::Output, RuntimeGone>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let rt = self.rt.as_ref().ok_or(RuntimeGone)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().map_err(|_| RuntimeGone)
    }

    /// Start `f` on the runtime without waiting for it (a producer that hands its results over a
    /// channel the caller reads with `blocking_recv`).
    pub fn spawn<F>(&self, f: F) -> Result<(), RuntimeGone>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let rt = self.rt.as_ref().ok_or(RuntimeGone)?;
        rt.spawn(f);
        Ok(())
    }
}

impl Drop for BlockingRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks; from inside another runtime that panics. Nothing is left
        // running that matters: every call was awaited by `run`.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_run_from_a_thread_and_from_inside_another_runtime() {
        let rt = BlockingRuntime::new("test").expect("runtime");
        assert_eq!(rt.run(async { 2 + 2 }).expect("ran"), 4);
        let outer = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("outer");
        let got = outer.block_on(async { rt.run(async { "inner" }) });
        assert_eq!(got.expect("ran"), "inner");
    }
}
