//! The health of the agent's periodic work. A task that fails (re-resolving backends, writing
//! the maps, attaching TC to a new bridge, following Docker, writing counters) is logged once
//! when it starts failing and once when it recovers, counted, shown by `status` (through the
//! pinned `task_health` map) and metrics, and retried at the next tick: it never ends the
//! process.

use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering},
};

use aya::maps::{Array, MapData};
use tracing::{info, warn};

use crate::error::{Error, Result};

/// A periodic task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Writing the rules, replies and host addresses to the maps.
    SyncMaps,
    /// Attaching `reply_out` to the backends' bridges.
    AttachTc,
    /// Reading the uplink's gateway and subnets and writing them to the maps.
    Surroundings,
    /// Applying a change of the containers (addresses, the splitter's routes).
    FollowContainers,
    /// Writing the splitters' counters and this health to the pins.
    FlushCounters,
    /// Re-reading the uplink's addresses.
    HostAddresses,
    /// Reaching the Docker engine and looking the containers up (the last known addresses
    /// stay meanwhile).
    DockerEngine,
    /// The configuration file as it is on disk: failing while it is refused (unreadable,
    /// invalid, or a change that cannot be applied); the running configuration stays.
    ConfigFile,
}

/// Every task, in `task_health` slot order (slots `2 i`, `2 i + 1`).
pub const TASKS: [Task; 8] = [
    Task::SyncMaps,
    Task::AttachTc,
    Task::Surroundings,
    Task::FollowContainers,
    Task::FlushCounters,
    Task::HostAddresses,
    Task::DockerEngine,
    Task::ConfigFile,
];

const _: () = assert!(TASKS.len() * 2 <= jitsi_common::TASK_SLOTS as usize, "task_health has no slot left");

impl Task {
    /// The name used in logs, `status` and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Task::SyncMaps => "sync_maps",
            Task::AttachTc => "attach_tc",
            Task::Surroundings => "uplink_surroundings",
            Task::FollowContainers => "follow_containers",
            Task::FlushCounters => "flush_counters",
            Task::HostAddresses => "host_addresses",
            Task::DockerEngine => "docker_engine",
            Task::ConfigFile => "config_file",
        }
    }

    /// How the task is retried, for the log line that says it started failing (`None`: the
    /// task logs its failures itself, as a refused reload does every time).
    fn retried(self) -> Option<&'static str> {
        match self {
            Task::ConfigFile => None,
            Task::DockerEngine => Some("failed; reconnecting every second (repeats are counted, not logged)"),
            _ => Some("failed; retrying every second (repeats are counted, not logged)"),
        }
    }

    fn index(self) -> usize {
        TASKS.iter().position(|t| *t == self).expect("listed")
    }
}

/// Failures per task, and the error of each task failing now.
#[derive(Debug, Default)]
pub struct Health {
    failures: [AtomicU64; TASKS.len()],
    failing: Mutex<[Option<String>; TASKS.len()]>,
}

impl Health {
    /// Records the outcome of one run of `task`: a failure is counted, and logged when the task
    /// was not failing already (or fails differently); a success after failures is logged once.
    pub fn record(&self, task: Task, outcome: Result<()>) {
        let i = task.index();
        let mut failing = self.failing.lock().expect("health lock");
        match outcome {
            Ok(()) => {
                if failing[i].take().is_some() {
                    info!(task = task.name(), "recovered");
                }
            }
            Err(e) => {
                self.failures[i].fetch_add(1, Ordering::Relaxed);
                let message = e.report();
                if let Some(retried) = task.retried()
                    && failing[i].as_ref() != Some(&message)
                {
                    warn!(task = task.name(), error = %message, "{retried}");
                }
                failing[i] = Some(message);
            }
        }
    }

    /// Failures of `task` so far, and whether it is failing now.
    pub fn get(&self, task: Task) -> (u64, bool) {
        let i = task.index();
        (self.failures[i].load(Ordering::Relaxed), self.failing.lock().expect("health lock")[i].is_some())
    }

    /// Continues the failure counts a previous agent left in `task_health`.
    pub fn seed(&self, map: &Array<MapData, u64>) -> Result<()> {
        for (i, f) in self.failures.iter().enumerate() {
            let v = map.get(&(2 * i as u32), 0).map_err(|source| Error::Map { map: "task_health", source })?;
            f.store(v, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes the counts and the failing flags to `task_health`.
    pub fn flush(&self, map: &mut Array<MapData, u64>) -> Result<()> {
        for t in TASKS {
            let (failures, failing) = self.get(t);
            let i = 2 * t.index() as u32;
            map.set(i, failures, 0).map_err(|source| Error::Map { map: "task_health", source })?;
            map.set(i + 1, u64::from(failing), 0).map_err(|source| Error::Map { map: "task_health", source })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_and_the_failing_state_follows_the_last_outcome() {
        let h = Health::default();
        let fail = || Err(Error::NoHostAddress("up0".into()));
        h.record(Task::AttachTc, fail());
        h.record(Task::AttachTc, fail());
        assert_eq!(h.get(Task::AttachTc), (2, true));
        assert_eq!(h.get(Task::SyncMaps), (0, false));
        h.record(Task::AttachTc, Ok(()));
        assert_eq!(h.get(Task::AttachTc), (2, false));
    }
}
