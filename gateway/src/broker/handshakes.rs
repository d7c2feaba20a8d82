//! TLS handshakes on threads of their own.
//!
//! A handshake is a millisecond of public-key work done in one go. On the runtime that serves
//! connected cars, a storm of handshakes queues ahead of every car's next packet: their
//! latency becomes the length of the queue. On a pool of their own, handshakes compete with
//! connected cars only as threads do, and the kernel's scheduler runs a woken session
//! promptly, so connected cars keep being served while the storm is worked off.

use std::future::Future;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::JoinHandle;

/// A small runtime for handshakes; dropping it stops its threads.
#[derive(Debug)]
pub struct HandshakePool {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl HandshakePool {
    /// A pool of `threads` threads (0: half the machine's cores, at least one).
    pub fn new(threads: usize) -> std::io::Result<HandshakePool> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => n,
        };
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("tls-handshake")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(HandshakePool {
            runtime: Some(runtime),
            handle,
        })
    }

    /// Runs `handshake` on the pool.
    pub fn spawn<F>(&self, handshake: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(handshake)
    }
}

impl Drop for HandshakePool {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Inside the gateway's own runtime a blocking shutdown is not allowed.
            runtime.shutdown_background();
        }
    }
}
