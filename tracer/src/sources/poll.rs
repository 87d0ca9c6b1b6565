//! Descriptors the event loop waits on: the ring buffer, the log reader
//! and each target's pidfd, registered with the runtime.

use anyhow::Result;
use tokio::io::{Interest, unix::AsyncFd};

/// Registers an owned descriptor with the runtime for readability.
pub fn readable<T: std::os::fd::AsRawFd>(inner: T) -> Result<AsyncFd<T>> {
    // SAFETY: every T used here (a ring buffer map, the log reader, a pidfd)
    // owns its descriptor and keeps it open and unchanged until dropped.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(|err| anyhow::anyhow!("cannot poll a descriptor: {}", err.into_parts().1))
}
