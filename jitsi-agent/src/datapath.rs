//! Loading, pinning, attaching and adopting the eBPF datapath.
//!
//! Pin layout under the pin directory (see the README):
//! - maps: `rules`, `host_addrs`, `replies`, `return_paths`, `fallback_paths`,
//!   `source_prefixes`, `rule_stats`, `reason_stats`, and
//!   the SNI splitter's counters `sni_routes`, `sni_counters` and the periodic tasks' health
//!   `task_health` (written by the agent)
//! - programs: `prog_steer_in` (XDP), `prog_reply_out` (TC)
//! - links: `link_xdp_<ifname>`, `link_tc_<ifname>`
//!
//! Pinned links keep the programs attached while no agent runs. A starting agent adopts
//! pinned maps and programs instead of loading new ones, and leaves a link that is still
//! attached alone, so restarting the agent never interrupts forwarding.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, lpm_trie::LpmTrie},
    programs::{
        LinkOrder, SchedClassifier, Xdp, XdpMode,
        links::FdLink,
        tc::{TcAttachOptions, TcAttachType},
    },
};
use aya_obj::programs::XdpAttachType;
use jitsi_common::{
    ClientKey, HostAddrKey, ReasonStats, Reply, ReplyKey, ReturnPath, Rule, RuleKey, RuleStats, SourcePrefix,
};
use tracing::info;

use crate::{
    ebpf_object,
    error::{Error, Result},
    netlink::Link,
    sni::stats::SniMaps,
};

/// Names of the maps, as pinned.
pub const MAP_NAMES: [&str; 11] = [
    "rules",
    "host_addrs",
    "replies",
    "return_paths",
    "fallback_paths",
    "source_prefixes",
    "rule_stats",
    "reason_stats",
    "sni_routes",
    "sni_counters",
    "task_health",
];
const PROG_STEER_IN: &str = "steer_in";
const PROG_REPLY_OUT: &str = "reply_out";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Typed handles on the datapath's maps.
pub struct Maps {
    /// `rules`.
    pub rules: HashMap<MapData, RuleKey, Rule>,
    /// `host_addrs`.
    pub host_addrs: HashMap<MapData, HostAddrKey, u32>,
    /// `replies`.
    pub replies: HashMap<MapData, ReplyKey, Reply>,
    /// `return_paths` (LRU).
    pub return_paths: HashMap<MapData, ClientKey, ReturnPath>,
    /// `fallback_paths` (`FALLBACK_V4`, `FALLBACK_V6`).
    pub fallback_paths: Array<MapData, ReturnPath>,
    /// `source_prefixes` (LPM trie).
    pub source_prefixes: LpmTrie<MapData, SourcePrefix, u32>,
    /// `rule_stats`.
    pub rule_stats: PerCpuArray<MapData, RuleStats>,
    /// `reason_stats`.
    pub reason_stats: PerCpuArray<MapData, ReasonStats>,
    /// `sni_routes` and `sni_counters`.
    pub sni: SniMaps,
    /// `task_health`: the periodic tasks' failures (see `run::health`).
    pub task_health: Array<MapData, u64>,
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |source| Error::Map { map, source }
}

impl Maps {
    /// Opens the maps pinned in `dir` (works without a running agent: `status` uses this).
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        let open = |name: &'static str| -> Result<Map> {
            let data = MapData::from_pin(dir.join(name)).map_err(map_err(name))?;
            Map::from_map_data(data).map_err(map_err(name))
        };
        Self::from_maps(open)
    }

    /// Takes the maps out of a freshly loaded object, pinning each in `pin_dir` if given.
    pub fn take(bpf: &mut Ebpf, pin_dir: Option<&Path>) -> Result<Self> {
        Self::from_maps(|name| {
            let map = bpf.take_map(name).ok_or_else(|| {
                Error::ebpf(format!("map `{name}`"), std::io::Error::other("missing in the eBPF object"))
            })?;
            if let Some(dir) = pin_dir {
                map.pin(dir.join(name)).map_err(|e| Error::ebpf(format!("pinning map {name}"), e))?;
            }
            Ok(map)
        })
    }

    fn from_maps(mut get: impl FnMut(&'static str) -> Result<Map>) -> Result<Self> {
        Ok(Maps {
            rules: HashMap::try_from(get("rules")?).map_err(map_err("rules"))?,
            host_addrs: HashMap::try_from(get("host_addrs")?).map_err(map_err("host_addrs"))?,
            replies: HashMap::try_from(get("replies")?).map_err(map_err("replies"))?,
            return_paths: HashMap::try_from(get("return_paths")?).map_err(map_err("return_paths"))?,
            fallback_paths: Array::try_from(get("fallback_paths")?).map_err(map_err("fallback_paths"))?,
            source_prefixes: LpmTrie::try_from(get("source_prefixes")?).map_err(map_err("source_prefixes"))?,
            rule_stats: PerCpuArray::try_from(get("rule_stats")?).map_err(map_err("rule_stats"))?,
            reason_stats: PerCpuArray::try_from(get("reason_stats")?).map_err(map_err("reason_stats"))?,
            sni: SniMaps {
                routes: HashMap::try_from(get("sni_routes")?).map_err(map_err("sni_routes"))?,
                counters: Array::try_from(get("sni_counters")?).map_err(map_err("sni_counters"))?,
            },
            task_health: Array::try_from(get("task_health")?).map_err(map_err("task_health"))?,
        })
    }
}

/// Loads the embedded object without pinning or attaching anything (BPF_PROG_TEST_RUN tests
/// and benchmarks use this).
pub fn load_unattached() -> Result<Ebpf> {
    let mut bpf = Ebpf::load(ebpf_object::bytes()?).map_err(|e| Error::ebpf("loading the eBPF object", e))?;
    xdp_program(&mut bpf)?.load().map_err(|e| Error::ebpf("loading steer_in (verifier)", e))?;
    tc_program(&mut bpf)?.load().map_err(|e| Error::ebpf("loading reply_out (verifier)", e))?;
    Ok(bpf)
}

/// The `steer_in` program of a loaded object.
pub fn xdp_program(bpf: &mut Ebpf) -> Result<&mut Xdp> {
    bpf.program_mut(PROG_STEER_IN)
        .ok_or_else(|| Error::ebpf("steer_in", std::io::Error::other("missing in the eBPF object")))?
        .try_into()
        .map_err(|e| Error::ebpf("steer_in", e))
}

/// The `reply_out` program of a loaded object.
pub fn tc_program(bpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    bpf.program_mut(PROG_REPLY_OUT)
        .ok_or_else(|| Error::ebpf("reply_out", std::io::Error::other("missing in the eBPF object")))?
        .try_into()
        .map_err(|e| Error::ebpf("reply_out", e))
}

/// Whether a program was attached now or found attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// Attached by this agent, in this mode.
    Attached(&'static str),
    /// Already attached (pinned link), left alone.
    Adopted,
}

/// The datapath: maps plus programs, loaded fresh or adopted from the pins.
pub struct Datapath {
    /// The maps.
    pub maps: Maps,
    steer_in: Xdp,
    reply_out: SchedClassifier,
    pin_dir: PathBuf,
    /// True if maps and programs were adopted from the pins rather than loaded.
    pub adopted: bool,
}

/// Makes sure `dir` is a directory on a bpffs, mounting bpffs on `/sys/fs/bpf` when the
/// directory is below it and nothing is mounted there yet.
pub fn prepare_pin_dir(dir: &Path) -> Result<()> {
    let bpf_root = Path::new("/sys/fs/bpf");
    if dir.starts_with(bpf_root) && !is_bpffs(bpf_root) {
        mount_bpffs(bpf_root)?;
        info!("mounted bpffs on /sys/fs/bpf");
    }
    fs::create_dir_all(dir).map_err(|e| Error::PinDir { path: dir.into(), message: e.to_string() })?;
    if !is_bpffs(dir) {
        return Err(Error::PinDir { path: dir.into(), message: "is not on a bpffs (mount -t bpf bpf <dir>)".into() });
    }
    Ok(())
}

/// Whether `path` is on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs writes into a zeroed struct we own; the path is NUL terminated.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == BPF_FS_MAGIC
    }
}

fn mount_bpffs(at: &Path) -> Result<()> {
    let target = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    // SAFETY: all pointers are valid NUL-terminated strings.
    let rc = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(Error::io(
            "nothing is mounted on /sys/fs/bpf and mounting a bpffs there failed (the host mounts it at boot; under systemd a bpffs mounted inside the unit would vanish with it, so the unit does not allow mount(2))",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn all_pinned(dir: &Path) -> bool {
    MAP_NAMES.iter().chain(&["prog_steer_in", "prog_reply_out"]).all(|n| dir.join(n).exists())
}

/// Removes every pin the agent makes in `dir` (maps, programs, links) and the directory if it
/// is then empty. Links that are removed detach their program.
pub fn remove_pins(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else { return Ok(()) };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let ours = MAP_NAMES.contains(&name.as_ref()) || name.starts_with("prog_") || name.starts_with("link_");
        if ours {
            fs::remove_file(e.path()).map_err(|err| Error::io(format!("removing pin {}", e.path().display()), err))?;
        }
    }
    let _ = fs::remove_dir(dir);
    Ok(())
}

impl Datapath {
    /// Adopts the datapath pinned in `pin_dir`, or loads the embedded object and pins it.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        prepare_pin_dir(pin_dir)?;
        if all_pinned(pin_dir) {
            let maps = Maps::open_pinned(pin_dir)?;
            let steer_in = Xdp::from_pin(pin_dir.join("prog_steer_in"), XdpAttachType::Interface)
                .map_err(|e| Error::ebpf("opening pinned steer_in", e))?;
            let reply_out = SchedClassifier::from_pin(pin_dir.join("prog_reply_out"))
                .map_err(|e| Error::ebpf("opening pinned reply_out", e))?;
            info!(pin_dir = %pin_dir.display(), "adopted the pinned datapath");
            return Ok(Datapath { maps, steer_in, reply_out, pin_dir: pin_dir.into(), adopted: true });
        }
        // A partial set of pins (an interrupted first start) is removed and loaded afresh.
        remove_pins(pin_dir)?;
        prepare_pin_dir(pin_dir)?;
        let mut bpf = load_unattached()?;
        let maps = Maps::take(&mut bpf, Some(pin_dir))?;
        for (name, path) in [(PROG_STEER_IN, "prog_steer_in"), (PROG_REPLY_OUT, "prog_reply_out")] {
            let prog = bpf.program_mut(name).expect("checked by load_unattached");
            prog.pin(pin_dir.join(path)).map_err(|e| Error::ebpf(format!("pinning {name}"), e))?;
        }
        // Re-open the programs from their pins so this struct owns them independently of `bpf`.
        let steer_in = Xdp::from_pin(pin_dir.join("prog_steer_in"), XdpAttachType::Interface)
            .map_err(|e| Error::ebpf("opening pinned steer_in", e))?;
        let reply_out = SchedClassifier::from_pin(pin_dir.join("prog_reply_out"))
            .map_err(|e| Error::ebpf("opening pinned reply_out", e))?;
        info!(pin_dir = %pin_dir.display(), "loaded and pinned the datapath");
        Ok(Datapath { maps, steer_in, reply_out, pin_dir: pin_dir.into(), adopted: false })
    }

    fn prog_id(&self, xdp: bool) -> Result<u32> {
        let info = if xdp { self.steer_in.info() } else { self.reply_out.info() };
        Ok(info.map_err(|e| Error::ebpf("reading program info", e))?.id())
    }

    /// Attaches `steer_in` to `link` (driver mode, else generic) and pins the link, unless our
    /// program is already attached there.
    pub fn ensure_xdp(&mut self, link: &Link) -> Result<Attach> {
        let pin = self.pin_dir.join(format!("link_xdp_{}", link.name));
        if link.xdp.map(|(id, _)| id) == Some(self.prog_id(true)?) && pin.exists() {
            return Ok(Attach::Adopted);
        }
        let _ = fs::remove_file(&pin);
        let (id, mode) = match self.steer_in.attach_to_if_index(link.index, XdpMode::Driver) {
            Ok(id) => (id, "driver"),
            Err(driver_err) => {
                let id = self.steer_in.attach_to_if_index(link.index, XdpMode::Skb).map_err(|e| {
                    Error::ebpf(format!("attaching XDP to {} (driver mode: {driver_err}; generic mode)", link.name), e)
                })?;
                (id, "generic")
            }
        };
        let fd_link: FdLink = self
            .steer_in
            .take_link(id)
            .map_err(|e| Error::ebpf("taking the XDP link", e))?
            .try_into()
            .map_err(|e| Error::ebpf(format!("XDP on {} is not a bpf_link (kernel < 5.9?)", link.name), e))?;
        fd_link.pin(&pin).map_err(|e| Error::ebpf(format!("pinning {}", pin.display()), e))?;
        Ok(Attach::Attached(mode))
    }

    /// Attaches `reply_out` to the TCX ingress of `link` and pins the link, unless our program
    /// is already attached there.
    pub fn ensure_tc(&mut self, link: &Link) -> Result<Attach> {
        let pin = self.pin_dir.join(format!("link_tc_{}", link.name));
        let ours = self.prog_id(false)?;
        let attached = SchedClassifier::query_tcx(&link.name, TcAttachType::Ingress)
            .map(|(_, progs)| progs.iter().any(|p| p.id() == ours))
            .unwrap_or(false);
        if attached && pin.exists() {
            return Ok(Attach::Adopted);
        }
        let _ = fs::remove_file(&pin);
        let id = self
            .reply_out
            .attach_with_options(&link.name, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(|e| {
                Error::ebpf(format!("attaching TC (tcx ingress) to {} (needs kernel >= 6.6)", link.name), e)
            })?;
        let fd_link: FdLink = self
            .reply_out
            .take_link(id)
            .map_err(|e| Error::ebpf("taking the TC link", e))?
            .try_into()
            .map_err(|e| Error::ebpf("TC link is not a bpf_link", e))?;
        fd_link.pin(&pin).map_err(|e| Error::ebpf(format!("pinning {}", pin.display()), e))?;
        Ok(Attach::Attached("tcx"))
    }
}
