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
use inotify::{EventStream, Inotify, WatchDescriptor, WatchMask};
use tracing::warn;

/// How long a burst of events may last before the file is read.
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
/// What happens to the file itself (followed through a symbolic link).
const FILE_EVENTS: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::MODIFY)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF);

/// Wakes the agent when the configuration file may have changed.
pub enum FileWatch {
    Inotify(Watched),
    /// No inotify: a wake-up every [`POLL`].
    Poll,
}

pub struct Watched {
    stream: EventStream<Vec<u8>>,
    path: PathBuf,
    name: OsString,
    dir: WatchDescriptor,
    file: Option<WatchDescriptor>,
    /// An event was seen and the burst not yet waited out (kept across a cancelled wait).
    pending: bool,
}

impl FileWatch {
    /// Watches `path` (and its directory); falls back to polling, with a warning, when inotify
    /// cannot be set up.
    pub fn new(path: &Path) -> Self {
        match Watched::new(path) {
            Ok(w) => FileWatch::Inotify(w),
            Err(e) => {
                warn!(path = %path.display(), error = %e, poll_secs = POLL.as_secs(),
                    "cannot watch the configuration file with inotify; looking at it every few seconds");
                FileWatch::Poll
            }
        }
    }

    /// Completes when the file may have changed (cancel-safe: an event seen by a cancelled
    /// call is not lost).
    pub async fn changed(&mut self) {
        match self {
            FileWatch::Inotify(w) => {
                if let Err(e) = w.changed().await {
                    warn!(path = %w.path.display(), error = %e,
                        "inotify failed; looking at the configuration file every few seconds");
                    *self = FileWatch::Poll;
                }
            }
            FileWatch::Poll => tokio::time::sleep(POLL).await,
        }
    }
}

impl Watched {
    fn new(path: &Path) -> std::io::Result<Self> {
        let name = path.file_name().ok_or_else(|| std::io::Error::other("the path names no file"))?.to_owned();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let inotify = Inotify::init()?;
        let dir = inotify.watches().add(&dir, DIR_EVENTS | WatchMask::ONLYDIR)?;
        let stream = inotify.into_event_stream(vec![0u8; 4096])?;
        let mut w = Watched { stream, path: path.to_owned(), name, dir, file: None, pending: false };
        w.watch_file();
        Ok(w)
    }

    /// (Re)adds the watch on the file itself: after a replacement it is another inode. A file
    /// that does not exist now is watched for through its directory.
    fn watch_file(&mut self) {
        self.file = self.stream.watches().add(&self.path, FILE_EVENTS).ok();
    }

    async fn changed(&mut self) -> std::io::Result<()> {
        while !self.pending {
            let event = self.stream.next().await.ok_or_else(|| std::io::Error::other("the event stream ended"))??;
            if event.wd == self.dir {
                if event.name.as_deref() == Some(self.name.as_os_str()) {
                    self.pending = true;
                    self.watch_file();
                }
            } else if Some(&event.wd) == self.file.as_ref() {
                self.pending = true;
            }
        }
        // The rest of the burst.
        tokio::time::sleep(SETTLE).await;
        while let Ok(Some(event)) = tokio::time::timeout(Duration::ZERO, self.stream.next()).await {
            if event.is_ok_and(|e| e.wd == self.dir) {
                self.watch_file();
            }
        }
        self.pending = false;
        Ok(())
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
    }
}
