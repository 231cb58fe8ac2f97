//! The handover's systemd side: whether this stop is part of a restart (asked over the system
//! D-Bus; without a bus daemon the agent cannot tell and drains), and
//! the receiving socket kept in the service's file descriptor store meanwhile.
//!
//! systemd 252 (Debian 12) keeps the store while a restart job runs and releases it when the
//! unit stops for good (`FileDescriptorStorePreserve=` only exists from 254), so the store
//! itself would close handed-over connections on `systemctl stop`: only a stop that belongs to a
//! `restart` (or a collapsed `try-restart`) job hands over. The descriptor is stored with
//! `FDPOLL=0` (systemd would drop it at the hang-up it sees once the old process has closed the
//! sending end) and followed by a `BARRIER=1`, so that systemd has taken it before this process
//! exits.

use std::{
    os::fd::{AsFd, OwnedFd},
    time::Duration,
};

use sd_notify::NotifyState;
use zbus::{
    Connection,
    zvariant::{ObjectPath, OwnedObjectPath, OwnedValue},
};

use super::Error;

/// The stored descriptor's name (`LISTEN_FDNAMES` of the next start).
pub const FD_NAME: &str = "handover";

const SYSTEMD: &str = "org.freedesktop.systemd1";

/// How long asking systemd may take before the stop drains instead.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long systemd may take to acknowledge the stored descriptor.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

/// What systemd says about the stop under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopPlan {
    /// The unit's job is a restart: the same unit starts again once this process has exited.
    pub restart: bool,
    /// The unit's `FileDescriptorStoreMax=` (0: no store, nothing can be handed over).
    pub fd_store_max: u32,
}

impl StopPlan {
    /// Whether connections can be handed over.
    pub fn hands_over(&self) -> bool {
        self.restart && self.fd_store_max > 0
    }
}

async fn property(c: &Connection, path: &ObjectPath<'_>, iface: &str, name: &str) -> Result<OwnedValue, zbus::Error> {
    let reply =
        c.call_method(Some(SYSTEMD), path, Some("org.freedesktop.DBus.Properties"), "Get", &(iface, name)).await?;
    reply.body().deserialize()
}

/// Asks systemd which unit this process belongs to, whether that unit's current job is a
/// restart, and how many descriptors its store takes.
pub async fn stop_plan() -> Result<StopPlan, Error> {
    // The system bus (dbus-daemon or dbus-broker). Not systemd's private socket: its replies
    // carry a well-known name as sender, which zbus 5 refuses with a panic in its reader.
    let c = Connection::system().await?;
    let unit = unit_of_self(&c).await?;
    let max = property(&c, &unit, "org.freedesktop.systemd1.Service", "FileDescriptorStoreMax").await?;
    let fd_store_max = u32::try_from(max).map_err(zbus::Error::from)?;
    let job = property(&c, &unit, "org.freedesktop.systemd1.Unit", "Job").await?;
    let (id, path) = <(u32, OwnedObjectPath)>::try_from(job).map_err(zbus::Error::from)?;
    let restart = if id == 0 {
        false
    } else {
        let kind = property(&c, &path, "org.freedesktop.systemd1.Job", "JobType").await?;
        let kind = String::try_from(kind).map_err(zbus::Error::from)?;
        matches!(kind.as_str(), "restart" | "try-restart")
    };
    Ok(StopPlan { restart, fd_store_max })
}

/// Puts `rx` in the service's file descriptor store as [`FD_NAME`] (after removing any stale
/// entry of that name, which would fill the store), waits until systemd has processed it, and
/// checks that the store holds it: systemd closes a descriptor it cannot keep.
pub async fn store(rx: &OwnedFd) -> Result<(), Error> {
    let copy = rx.try_clone().map_err(Error::io("duplicating the socket to store"))?;
    tokio::task::spawn_blocking(move || {
        unstore()?;
        let state = [NotifyState::FdStore, NotifyState::FdName(FD_NAME), NotifyState::Custom("FDPOLL=0")];
        sd_notify::notify_with_fds(&state, &[copy.as_fd()]).map_err(Error::io("storing the socket in systemd"))?;
        barrier()
    })
    .await
    .map_err(|e| Error::Worker { what: "storing the socket in systemd", source: e })??;
    let stored = match tokio::time::timeout(ASK_TIMEOUT, stored()).await {
        Ok(n) => n?,
        Err(_) => return Err(Error::Format("systemd did not say in time whether it kept the socket".into())),
    };
    if stored == 0 {
        return Err(Error::Format("systemd's file descriptor store is empty after storing the socket".into()));
    }
    Ok(())
}

/// How many descriptors the service's store holds (`NFileDescriptorStore`).
async fn stored() -> Result<u32, Error> {
    let c = Connection::system().await?;
    let unit = unit_of_self(&c).await?;
    let n = property(&c, &unit, "org.freedesktop.systemd1.Service", "NFileDescriptorStore").await?;
    Ok(u32::try_from(n).map_err(zbus::Error::from)?)
}

/// The object path of the unit this process belongs to.
async fn unit_of_self(c: &Connection) -> Result<OwnedObjectPath, Error> {
    let manager = ObjectPath::try_from("/org/freedesktop/systemd1").map_err(zbus::Error::from)?;
    let reply = c
        .call_method(
            Some(SYSTEMD),
            &manager,
            Some("org.freedesktop.systemd1.Manager"),
            "GetUnitByPID",
            &(std::process::id()),
        )
        .await?;
    Ok(reply.body().deserialize()?)
}

/// Drops the stored descriptor (once read: the next restart stores a new one).
pub fn unstore() -> Result<(), Error> {
    sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(FD_NAME)])
        .map_err(Error::io("removing the socket from systemd's store"))
}

/// `sd_notify_barrier`: systemd closes the pipe's write end once it has processed every
/// earlier message.
fn barrier() -> Result<(), Error> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::Io { what: "a pipe for the barrier", source: e.into() })?;
    sd_notify::notify_with_fds(&[NotifyState::Custom("BARRIER=1")], &[write.as_fd()])
        .map_err(Error::io("sending the barrier"))?;
    drop(write);
    let mut fds = [PollFd::new(read.as_fd(), PollFlags::POLLHUP)];
    let timeout = PollTimeout::try_from(BARRIER_TIMEOUT).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, timeout) {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err(Error::Io {
            what: "waiting for systemd to take the socket",
            source: std::io::Error::from(std::io::ErrorKind::TimedOut),
        }),
        Err(e) => Err(Error::Io { what: "waiting for systemd to take the socket", source: e.into() }),
    }
}
