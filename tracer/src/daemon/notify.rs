//! systemd's notification protocol (sd_notify(3)), spoken directly: a
//! datagram to $NOTIFY_SOCKET saying READY=1 once the probes are in place,
//! WATCHDOG=1 at half the unit's WatchdogSec (from the event loop's own
//! runtime, so that a stuck loop stops them), STOPPING=1 on the way out.
//! Without $NOTIFY_SOCKET (not started by systemd) nothing is sent.

use std::{
    os::unix::net::{SocketAddr, UnixDatagram},
    time::Duration,
};

use log::debug;

/// Sends `state` (e.g. "READY=1") to systemd, if it listens.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(name)
        }
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(err) = sent {
        debug!("cannot notify systemd ({state}): {err}");
    }
}

/// How often to tell systemd's watchdog that tracer is alive: half of
/// $WATCHDOG_USEC, if it is set for this process.
pub fn watchdog_every() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
