//! The configuration file watched with inotify: its directory (editors and configuration
//! management replace a file by renaming a new one over it) and the file itself (a symbolic
//! link's target, written in place). Events come in bursts (truncate, write, close); they are
//! coalesced into one wake-up. Where inotify cannot be had (the user's instance limit,
//! `fs.inotify.max_user_instances`, is reached) the file is looked at every few seconds instead.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    time::Duration,
};

use futures::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask};
use tokio::time::Instant;
use tracing::warn;

/// Quiet time after the last event of a burst before the file is read.
const SETTLE: Duration = Duration::from_millis(100);
/// How often the file is looked at without inotify.
const POLL: Duration = Duration::from_secs(5);

/// What happens to the directory that concerns the file.
const DIR_EVENTS: WatchMask = WatchMask::CREATE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::DELETE)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::ATTRIB);
/// What happens to the file itself (followed through a symbolic link). Not `MODIFY`: a
/// writer's half-written file is read once it is closed, not in between.
const FILE_EVENTS: WatchMask =
    WatchMask::CLOSE_WRITE.union(WatchMask::ATTRIB).union(WatchMask::DELETE_SELF).union(WatchMask::MOVE_SELF);

/// Why inotify watching stopped (the agent falls back to polling).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// An inotify call failed (the instance or watch limit, for one).
    #[error(transparent)]
    Inotify(#[from] std::io::Error),
    /// The path ends in `..` or `/`.
    #[error("the path names no file")]
    NoFileName,
    /// The directory was removed or unmounted (its watch went away).
    #[error("the configuration file's directory went away")]
    DirectoryGone,
    /// The kernel closed the event stream.
    #[error("the event stream ended")]
    StreamEnded,
}

/// Wakes the agent when the configuration file may have changed.
pub enum FileWatch {
    Inotify(Watched),
    /// No inotify: a wake-up every [`POLL`] (the deadline survives a cancelled wait).
    Poll(Instant),
}

pub struct Watched {
    stream: EventStream<Vec<u8>>,
    path: PathBuf,
    name: OsString,
    dir: WatchDescriptor,
    file: Option<WatchDescriptor>,
    /// When the burst seen so far is over (kept across a cancelled wait).
    settle: Option<Instant>,
}

impl FileWatch {
    /// Watches `path` (and its directory); falls back to polling, with a warning, when inotify
    /// cannot be set up.
    pub fn new(path: &Path) -> Self {
        match Watched::new(path) {
            Ok(w) => FileWatch::Inotify(w),
            Err(e) => Self::poll(path, &e),
        }
    }

    fn poll(path: &Path, e: &WatchError) -> Self {
        warn!(path = %path.display(), error = %e, poll_secs = POLL.as_secs(),
            "cannot watch the configuration file with inotify; looking at it every few seconds");
        FileWatch::Poll(Instant::now() + POLL)
    }

    /// Completes when the file may have changed. Cancel-safe: an event seen, or a deadline
    /// set, by a cancelled call is kept for the next.
    pub async fn changed(&mut self) {
        match self {
            FileWatch::Inotify(w) => {
                if let Err(e) = w.changed().await {
                    let path = w.path.clone();
                    *self = Self::poll(&path, &e);
                }
            }
            FileWatch::Poll(at) => {
                tokio::time::sleep_until(*at).await;
                *at = Instant::now() + POLL;
            }
        }
    }
}

impl Watched {
    fn new(path: &Path) -> Result<Self, WatchError> {
        let name = path.file_name().ok_or(WatchError::NoFileName)?.to_owned();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let inotify = Inotify::init()?;
        let dir = inotify.watches().add(&dir, DIR_EVENTS | WatchMask::ONLYDIR)?;
        let stream = inotify.into_event_stream(vec![0u8; 4096])?;
        let mut w = Watched { stream, path: path.to_owned(), name, dir, file: None, settle: None };
        w.watch_file();
        Ok(w)
    }

    /// (Re)adds the watch on the file itself: after a replacement it is another inode (and
    /// the old watch goes). A file that does not exist now is watched for through its directory.
    fn watch_file(&mut self) {
        let now = self.stream.watches().add(&self.path, FILE_EVENTS).ok();
        if let Some(old) = self.file.take()
            && Some(&old) != now.as_ref()
        {
            let _ = self.stream.watches().remove(old);
        }
        self.file = now;
    }

    /// Whether `event` concerns the file; re-arms the file's watch when it may have moved.
    fn concerns(
        &mut self,
        wd: &WatchDescriptor,
        mask: EventMask,
        name: Option<&std::ffi::OsStr>,
    ) -> Result<bool, WatchError> {
        if mask.contains(EventMask::Q_OVERFLOW) {
            // Events were lost: assume the worst.
            self.watch_file();
            return Ok(true);
        }
        if *wd == self.dir {
            if mask.contains(EventMask::IGNORED) {
                return Err(WatchError::DirectoryGone);
            }
            if name == Some(self.name.as_os_str()) {
                self.watch_file();
                return Ok(true);
            }
            return Ok(false);
        }
        if Some(wd) == self.file.as_ref() {
            // Deleted, moved, or its link's target replaced: watch whatever is there now.
            self.watch_file();
            return Ok(true);
        }
        Ok(false)
    }

    async fn changed(&mut self) -> Result<(), WatchError> {
        loop {
            let next = match self.settle {
                None => Some(self.stream.next().await),
                Some(at) => tokio::time::timeout_at(at, self.stream.next()).await.ok(),
            };
            match next {
                // The burst is over.
                None => {
                    self.settle = None;
                    return Ok(());
                }
                Some(None) => return Err(WatchError::StreamEnded),
                Some(Some(event)) => {
                    let event = event?;
                    if self.concerns(&event.wd, event.mask, event.name.as_deref())? {
                        self.settle = Some(Instant::now() + SETTLE);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn wakes(w: &mut FileWatch) -> bool {
        tokio::time::timeout(Duration::from_secs(2), w.changed()).await.is_ok()
    }

    #[tokio::test]
    async fn a_write_a_rename_over_and_a_write_through_a_link_wake_it_other_files_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "a").unwrap();
        let mut w = FileWatch::new(&path);
        assert!(matches!(w, FileWatch::Inotify(_)));
        std::fs::write(dir.path().join("other.toml"), "x").unwrap();
        assert!(!wakes(&mut w).await, "another file in the directory");
        std::fs::write(&path, "b").unwrap();
        assert!(wakes(&mut w).await, "written in place");
        // An editor's way: a new file renamed over the old one; then written in place again
        // (the watch follows the new inode).
        std::fs::write(dir.path().join(".agent.toml.swp"), "c").unwrap();
        std::fs::rename(dir.path().join(".agent.toml.swp"), &path).unwrap();
        assert!(wakes(&mut w).await, "renamed over");
        std::fs::write(&path, "d").unwrap();
        assert!(wakes(&mut w).await, "written in place after the rename");
        std::fs::remove_file(&path).unwrap();
        assert!(wakes(&mut w).await, "removed");

        // A symbolic link to a file elsewhere: writes to the target count.
        let elsewhere = tempfile::tempdir().unwrap();
        let target = elsewhere.path().join("real.toml");
        std::fs::write(&target, "e").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(wakes(&mut w).await, "the link created");
        std::fs::write(&target, "f").unwrap();
        assert!(wakes(&mut w).await, "the link's target written");
        // The target replaced by a rename (configuration management's way), then written.
        std::fs::write(elsewhere.path().join("new.toml"), "g").unwrap();
        std::fs::rename(elsewhere.path().join("new.toml"), &target).unwrap();
        assert!(wakes(&mut w).await, "the link's target replaced");
        std::fs::write(&target, "h").unwrap();
        assert!(wakes(&mut w).await, "the new target written");
    }

    #[tokio::test(start_paused = true)]
    async fn without_inotify_it_wakes_every_few_seconds_even_when_interrupted_every_second() {
        let mut w = FileWatch::Poll(Instant::now() + POLL);
        let start = Instant::now();
        // A loop whose other branch (a 1 s tick) wins four times first, as the agent's does.
        let mut woke = 0;
        while start.elapsed() < POLL * 2 + Duration::from_millis(500) {
            tokio::select! {
                () = w.changed() => woke += 1,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        assert_eq!(woke, 2);
    }
}
