//! Loading, pinning, attaching and adopting the eBPF datapath.
//!
//! Pin layout under the pin directory (see the README):
//! - maps: `rules`, `rule_ranges`, `host_addrs`, `replies`, `reply_ranges`, `return_paths`,
//!   `fallback_paths`,
//!   `source_prefixes`, `rule_stats`, `reason_stats`, the flood limits' `flood_config`,
//!   `flood_sources`, `flood_flows` and `flood_allow`, `generic_uplinks`, and the splitter's
//!   counters `sni_routes`, `sni_counters` and the periodic tasks' health `task_health`
//!   (written by the agent)
//! - programs: `prog_steer_in` (XDP), `prog_reply_out` (TC), `prog_redirect_in` (TC)
//! - links: `link_xdp_<ifname>`, `link_tc_<ifname>`, and `link_redirect_<ifname>` on an uplink
//!   where `steer_in` runs in generic mode
//!
//! Pinned links keep the programs attached while no agent runs. A starting agent adopts
//! pinned maps and programs of its own build (the `manifest` map records the SHA-256 of the
//! eBPF object the pins came from, and each map's schema version) if the programs use the
//! pinned maps, and leaves a link that is still attached alone, so restarting the agent never
//! interrupts forwarding. An agent of another build upgrades in place: it loads its programs
//! reusing every pinned map whose definition (type, key and value size, entries, flags) and
//! schema version are unchanged (`rules` and `rule_stats` only together), creates the others
//! (pinned as `staged_<name>`), fills them, then swaps the programs behind the pinned links
//! (`BPF_LINK_UPDATE`: no detach, no gap; `reply_out` first, the reader of what `steer_in`
//! writes) and finally renames its maps and programs over the old pins. The kept maps are
//! written by the new agent from the start (the old programs read them meanwhile, as across
//! any restart). A failure before the commit puts every swapped link back on the old programs
//! and removes what was staged: the old datapath runs on.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapInfo, PerCpuArray, lpm_trie::LpmTrie},
    programs::{
        LinkOrder, ProgramInfo, SchedClassifier, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions, TcAttachType},
        xdp::{XdpLink, XdpLinkId},
    },
};
use aya_obj::programs::XdpAttachType;
use jitsi_common::{
    ClientKey, FloodConfig, FloodKey, FloodState, HostAddrKey, Manifest, RangeKey, ReasonStats, Reply, ReplyKey,
    ReplyRange, ReplyRangeKey, ReturnPath, Rule, RuleKey, RuleRange, RuleStats, SourcePrefix,
};
use tracing::{info, warn};

use crate::{
    config::XdpModeSetting,
    ebpf_object,
    error::{Error, Result},
    netlink::Link,
    splitter::stats::SniMaps,
};

/// Names of the maps, as pinned.
pub const MAP_NAMES: [&str; 19] = [
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
    "manifest",
    "rule_ranges",
    "reply_ranges",
    "flood_config",
    "flood_sources",
    "flood_flows",
    "flood_allow",
    "generic_uplinks",
];

/// The schema version of each map in [`MAP_NAMES`] order. Bump a map's entry when the meaning
/// of its keys or values changes even though their sizes do not: an upgrade then recreates it
/// instead of keeping it (a change of size, entries, type or flags is noticed without this).
pub const MAP_SCHEMAS: [u32; MAP_NAMES.len()] = [1; MAP_NAMES.len()];

/// Maps that must be kept or recreated together: `rule_stats` is indexed by the slots the
/// `rules` entries hold.
const MAP_GROUPS: [[&str; 2]; 1] = [["rules", "rule_stats"]];

const _: () = assert!(MAP_NAMES.len() <= jitsi_common::MANIFEST_MAPS, "the manifest has no slot left");

/// This build's manifest.
fn manifest_of(build: [u8; 32]) -> Manifest {
    let mut m = Manifest { build, schemas: [0; jitsi_common::MANIFEST_MAPS] };
    m.schemas[..MAP_NAMES.len()].copy_from_slice(&MAP_SCHEMAS);
    m
}

/// The manifest of builds whose manifest had 16 map slots (before the flood maps).
#[repr(C)]
#[derive(Clone, Copy)]
struct Manifest16 {
    build: [u8; 32],
    schemas: [u32; 16],
}

// SAFETY: repr(C), Copy, no padding (32 + 64 bytes).
unsafe impl aya::Pod for Manifest16 {}

/// The manifest pinned in `dir`, if there is one this build can read (its own layout or the
/// 16-slot one of the builds before).
fn pinned_manifest(dir: &Path) -> Option<Manifest> {
    let open = || Map::from_map_data(MapData::from_pin(dir.join("manifest")).ok()?).ok();
    let m = match Array::<MapData, Manifest>::try_from(open()?) {
        Ok(a) => a.get(&0, 0).ok()?,
        Err(_) => {
            let old = Array::<MapData, Manifest16>::try_from(open()?).ok()?.get(&0, 0).ok()?;
            let mut m = Manifest { build: old.build, schemas: [0; jitsi_common::MANIFEST_MAPS] };
            m.schemas[..16].copy_from_slice(&old.schemas);
            m
        }
    };
    Some(m).filter(|m| m.build != [0u8; 32])
}

/// The build the programs pinned in `dir` are from (`None`: not recorded).
pub fn pinned_build(dir: &Path) -> Option<[u8; 32]> {
    pinned_manifest(dir).map(|m| m.build)
}
const PROG_STEER_IN: &str = "steer_in";
const PROG_REPLY_OUT: &str = "reply_out";
const PROG_REDIRECT_IN: &str = "redirect_in";
/// The programs' pins (`steer_in`'s, `reply_out`'s, `redirect_in`'s). Builds from before
/// `redirect_in` pinned only the first two.
const PROG_PINS: [&str; 3] = ["prog_steer_in", "prog_reply_out", "prog_redirect_in"];
/// The pins every build's datapath has.
const CORE_PROG_PINS: [&str; 2] = ["prog_steer_in", "prog_reply_out"];
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Typed handles on the datapath's maps.
pub struct Maps {
    /// `rules`.
    pub rules: HashMap<MapData, RuleKey, Rule>,
    /// `rule_ranges` (LPM trie): the rules that steer a range of ports.
    pub rule_ranges: LpmTrie<MapData, RangeKey, RuleRange>,
    /// `reply_ranges` (LPM trie): their backends' ports.
    pub reply_ranges: LpmTrie<MapData, ReplyRangeKey, ReplyRange>,
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
    /// `manifest`: the build (SHA-256 of the eBPF object) the pinned programs are from.
    pub manifest: Array<MapData, Manifest>,
    /// `flood_config`: the per-source limits.
    pub flood_config: Array<MapData, FloodConfig>,
    /// `flood_sources` (LRU): the per-source buckets.
    pub flood_sources: HashMap<MapData, FloodKey, FloodState>,
    /// `flood_flows` (LRU): the UDP flows admitted as new.
    pub flood_flows: HashMap<MapData, ClientKey, u32>,
    /// `flood_allow` (LPM trie): networks never limited.
    pub flood_allow: LpmTrie<MapData, SourcePrefix, u32>,
    /// `generic_uplinks`: the uplinks `steer_in` runs on in generic mode (ifindex -> 1).
    pub generic_uplinks: HashMap<MapData, u32, u32>,
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
        Self::take_pinning(bpf, |name| pin_dir.map(|d| d.join(name)))
    }

    /// Takes the maps out of a loaded object, pinning each where `pin_at` says (if anywhere).
    fn take_pinning(bpf: &mut Ebpf, pin_at: impl Fn(&str) -> Option<PathBuf>) -> Result<Self> {
        Self::from_maps(|name| {
            let map = bpf.take_map(name).ok_or_else(|| Error::MissingInObject { what: format!("map `{name}`") })?;
            if let Some(path) = pin_at(name) {
                map.pin(path).map_err(|e| Error::ebpf(format!("pinning map {name}"), e))?;
            }
            Ok(map)
        })
    }

    fn from_maps(mut get: impl FnMut(&'static str) -> Result<Map>) -> Result<Self> {
        Ok(Maps {
            rules: HashMap::try_from(get("rules")?).map_err(map_err("rules"))?,
            rule_ranges: LpmTrie::try_from(get("rule_ranges")?).map_err(map_err("rule_ranges"))?,
            reply_ranges: LpmTrie::try_from(get("reply_ranges")?).map_err(map_err("reply_ranges"))?,
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
            manifest: Array::try_from(get("manifest")?).map_err(map_err("manifest"))?,
            flood_config: Array::try_from(get("flood_config")?).map_err(map_err("flood_config"))?,
            flood_sources: HashMap::try_from(get("flood_sources")?).map_err(map_err("flood_sources"))?,
            flood_flows: HashMap::try_from(get("flood_flows")?).map_err(map_err("flood_flows"))?,
            flood_allow: LpmTrie::try_from(get("flood_allow")?).map_err(map_err("flood_allow"))?,
            generic_uplinks: HashMap::try_from(get("generic_uplinks")?).map_err(map_err("generic_uplinks"))?,
        })
    }
}

/// A build's short name: the first 12 hex digits of its SHA-256.
pub fn build_name(build: &[u8; 32]) -> String {
    build[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// A map's definition as the kernel sees it: type, key size, value size, entries, flags.
type MapDef = (u32, u32, u32, u32, u32);

/// The definitions of the maps in the eBPF object `bytes`.
fn object_map_defs(bytes: &[u8]) -> Result<std::collections::HashMap<String, MapDef>> {
    let obj = aya_obj::Object::parse(bytes).map_err(|e| Error::ebpf("parsing the eBPF object", e))?;
    Ok(obj
        .maps
        .iter()
        .map(|(name, m)| (name.clone(), (m.map_type(), m.key_size(), m.value_size(), m.max_entries(), m.map_flags())))
        .collect())
}

/// The definition of the map pinned at `path`.
fn pinned_map_def(path: &Path) -> Option<MapDef> {
    let info = MapInfo::from_pin(path).ok()?;
    let kind = info.map_type().ok()? as u32;
    Some((kind, info.key_size(), info.value_size(), info.max_entries(), info.map_flags()))
}

/// Loads the embedded object without pinning or attaching anything (BPF_PROG_TEST_RUN tests
/// and benchmarks use this).
pub fn load_unattached() -> Result<Ebpf> {
    let mut bpf = Ebpf::load(ebpf_object::bytes()?).map_err(|e| Error::ebpf("loading the eBPF object", e))?;
    xdp_program(&mut bpf)?.load().map_err(|e| Error::ebpf("loading steer_in (verifier)", e))?;
    tc_program(&mut bpf)?.load().map_err(|e| Error::ebpf("loading reply_out (verifier)", e))?;
    redirect_program(&mut bpf)?.load().map_err(|e| Error::ebpf("loading redirect_in (verifier)", e))?;
    Ok(bpf)
}

/// The ids the agent's `steer_in` can have on `ifname`, from the pins in `pin_dir`: the pinned
/// program's, and the one behind the pinned link on that interface (another build's, until an
/// upgrade in place has swapped it). Empty when nothing is pinned.
pub fn pinned_steer_in_ids(pin_dir: &Path, ifname: &str) -> Vec<u32> {
    let prog = Xdp::from_pin(pin_dir.join("prog_steer_in"), XdpAttachType::Interface)
        .ok()
        .and_then(|p| p.info().ok())
        .map(|i| i.id());
    let linked =
        PinnedLink::from_pin(pin_dir.join(format!("link_xdp_{ifname}"))).ok().and_then(|l| link_prog_id(&l.into()));
    prog.into_iter().chain(linked).collect()
}

/// The `steer_in` program of a loaded object.
pub fn xdp_program(bpf: &mut Ebpf) -> Result<&mut Xdp> {
    bpf.program_mut(PROG_STEER_IN)
        .ok_or_else(|| Error::MissingInObject { what: PROG_STEER_IN.into() })?
        .try_into()
        .map_err(|e| Error::ebpf("steer_in", e))
}

/// The `reply_out` program of a loaded object.
pub fn tc_program(bpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    bpf.program_mut(PROG_REPLY_OUT)
        .ok_or_else(|| Error::MissingInObject { what: PROG_REPLY_OUT.into() })?
        .try_into()
        .map_err(|e| Error::ebpf("reply_out", e))
}

/// The `redirect_in` program of a loaded object.
fn redirect_program(bpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    bpf.program_mut(PROG_REDIRECT_IN)
        .ok_or_else(|| Error::MissingInObject { what: PROG_REDIRECT_IN.into() })?
        .try_into()
        .map_err(|e| Error::ebpf("redirect_in", e))
}

/// The two TC programs and where each is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcProg {
    /// `reply_out`, at the TCX ingress of the backends' bridges (`link_tc_<ifname>`).
    ReplyOut,
    /// `redirect_in`, at the TCX ingress of an uplink in generic mode (`link_redirect_<ifname>`).
    RedirectIn,
}

impl TcProg {
    /// The program's name in the object (`reply_out`, `redirect_in`).
    pub fn name(self) -> &'static str {
        match self {
            TcProg::ReplyOut => PROG_REPLY_OUT,
            TcProg::RedirectIn => PROG_REDIRECT_IN,
        }
    }

    /// The program's pin (`prog_reply_out`, `prog_redirect_in`).
    pub fn pin(self) -> &'static str {
        match self {
            TcProg::ReplyOut => PROG_PINS[1],
            TcProg::RedirectIn => PROG_PINS[2],
        }
    }

    fn link_prefix(self) -> &'static str {
        match self {
            TcProg::ReplyOut => "link_tc_",
            TcProg::RedirectIn => "link_redirect_",
        }
    }
}

/// Whether a program was attached now or found attached, and the mode it runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// Attached by this agent.
    Attached(&'static str),
    /// Already attached (pinned link), left alone.
    Adopted(&'static str),
    /// Another build's program was attached through the pinned link; this one replaced it
    /// there atomically.
    Swapped(&'static str),
}

/// An upgrade in place under way: staged by [`Datapath::open`], finished by
/// [`Datapath::commit_upgrade`].
#[derive(Debug)]
pub struct Upgrade {
    /// The build the pins held (`None`: not recorded).
    pub from: Option<[u8; 32]>,
    /// Maps reused as they are (their contents continue).
    pub kept: Vec<&'static str>,
    /// Maps created afresh (pinned as `staged_<name>` until the commit).
    pub recreated: Vec<&'static str>,
    /// Pinned links pointed at this build's programs so far (put back by an abort).
    swapped: Vec<PathBuf>,
    /// Links this agent attached afresh during the upgrade (removed by an abort).
    attached: Vec<PathBuf>,
}

/// The prefix of pins staged by an upgrade until it commits (bpffs refuses dots in names).
const STAGED: &str = "staged_";

/// The names this agent may stage: its maps and programs (never another program's pins that
/// happen to share the directory).
fn staged_names() -> impl Iterator<Item = String> {
    MAP_NAMES.iter().copied().chain(PROG_PINS).map(|n| format!("{STAGED}{n}"))
}

/// Removes what an interrupted or aborted upgrade staged in `dir`.
fn remove_staged(dir: &Path) {
    for name in staged_names() {
        let _ = fs::remove_file(dir.join(name));
    }
}

/// The datapath: maps plus programs, loaded fresh or adopted from the pins.
pub struct Datapath {
    /// The maps.
    pub maps: Maps,
    steer_in: Xdp,
    reply_out: SchedClassifier,
    redirect_in: SchedClassifier,
    pin_dir: PathBuf,
    /// True if maps and programs were adopted from the pins rather than loaded.
    pub adopted: bool,
    /// This agent's build (SHA-256 of its eBPF object).
    pub build: [u8; 32],
    /// An upgrade in place staged and not yet committed.
    pub upgrade: Option<Upgrade>,
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
    MAP_NAMES.iter().chain(&PROG_PINS).all(|n| dir.join(n).exists())
}

fn programs_pinned(dir: &Path) -> bool {
    CORE_PROG_PINS.iter().all(|n| dir.join(n).exists())
}

/// A build's programs, opened from their pins.
struct Programs {
    steer_in: Xdp,
    reply_out: SchedClassifier,
    /// `None` in the pins of a build from before `redirect_in`.
    redirect_in: Option<SchedClassifier>,
}

impl Programs {
    /// This build's programs: all three.
    fn whole(self) -> Result<(Xdp, SchedClassifier, SchedClassifier)> {
        let redirect_in =
            self.redirect_in.ok_or_else(|| Error::MissingInObject { what: "pinned program redirect_in".into() })?;
        Ok((self.steer_in, self.reply_out, redirect_in))
    }
}

/// Opens the programs pinned in `dir` as `<prefix>prog_steer_in`, `<prefix>prog_reply_out`
/// and (if pinned) `<prefix>prog_redirect_in`.
fn pinned_programs(dir: &Path, prefix: &str) -> Result<Programs> {
    let [steer_in, reply_out, redirect_in] = PROG_PINS.map(|p| dir.join(format!("{prefix}{p}")));
    let xdp =
        Xdp::from_pin(steer_in, XdpAttachType::Interface).map_err(|e| Error::ebpf("opening pinned steer_in", e))?;
    let tc = SchedClassifier::from_pin(reply_out).map_err(|e| Error::ebpf("opening pinned reply_out", e))?;
    let redirect = redirect_in
        .exists()
        .then(|| SchedClassifier::from_pin(redirect_in).map_err(|e| Error::ebpf("opening pinned redirect_in", e)))
        .transpose()?;
    Ok(Programs { steer_in: xdp, reply_out: tc, redirect_in: redirect })
}

/// Pins the loaded object's programs in `dir` as `<prefix>prog_*`, then opens them from there
/// (so that the caller owns them independently of `bpf`).
fn pin_programs(bpf: &mut Ebpf, dir: &Path, prefix: &str) -> Result<(Xdp, SchedClassifier, SchedClassifier)> {
    for (name, pin) in [PROG_STEER_IN, PROG_REPLY_OUT, PROG_REDIRECT_IN].into_iter().zip(PROG_PINS) {
        let prog = bpf.program_mut(name).expect("loaded before pinning");
        prog.pin(dir.join(format!("{prefix}{pin}"))).map_err(|e| Error::ebpf(format!("pinning {name}"), e))?;
    }
    pinned_programs(dir, prefix)?.whole()
}

/// Removes every pin the agent makes in `dir` (maps, programs, links) and the directory if it
/// is then empty. Links that are removed detach their program (when the kernel gets round to
/// releasing them); `steer_in`'s are detached at once first, so that no packet it hands to
/// `redirect_in` finds it gone.
pub fn remove_pins(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else { return Ok(()) };
    let entries: Vec<fs::DirEntry> = entries.flatten().collect();
    for e in entries.iter().filter(|e| e.file_name().to_string_lossy().starts_with("link_xdp_")) {
        detach_now(&e.path());
    }
    for e in entries {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let ours = MAP_NAMES.contains(&name.as_ref())
            || name.starts_with("prog_")
            || name.starts_with("link_")
            || staged_names().any(|n| n == name);
        if ours {
            fs::remove_file(e.path()).map_err(|err| Error::io(format!("removing pin {}", e.path().display()), err))?;
        }
    }
    let _ = fs::remove_dir(dir);
    Ok(())
}

impl Datapath {
    /// Adopts the datapath pinned in `pin_dir` if it is of this build and whole; stages an
    /// upgrade in place if it is of another (see the module's doc); else loads the object and
    /// pins it.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        prepare_pin_dir(pin_dir)?;
        let bytes = ebpf_object::bytes()?;
        let build = ebpf_object::build_id(bytes);
        // Whatever an interrupted upgrade staged is not part of any datapath.
        remove_staged(pin_dir);
        if programs_pinned(pin_dir) {
            let manifest = pinned_manifest(pin_dir);
            if manifest.is_some_and(|m| m.build == build) && all_pinned(pin_dir) && programs_use_pinned_maps(pin_dir) {
                let maps = Maps::open_pinned(pin_dir)?;
                let programs = pinned_programs(pin_dir, "")?.whole()?;
                info!(pin_dir = %pin_dir.display(), build = build_name(&build), "adopted the pinned datapath");
                return Ok(Self::assemble(maps, programs, pin_dir, build, None, true));
            }
            return Self::stage_upgrade(pin_dir, bytes, build, manifest);
        }
        // No programs pinned (a first start, or an interrupted one): load afresh.
        remove_pins(pin_dir)?;
        prepare_pin_dir(pin_dir)?;
        let mut bpf = load_unattached()?;
        let mut maps = Maps::take(&mut bpf, Some(pin_dir))?;
        let programs = pin_programs(&mut bpf, pin_dir, "")?;
        maps.manifest.set(0, manifest_of(build), 0).map_err(map_err("manifest"))?;
        info!(pin_dir = %pin_dir.display(), build = build_name(&build), "loaded and pinned the datapath");
        Ok(Self::assemble(maps, programs, pin_dir, build, None, false))
    }

    /// The datapath of `maps` and `programs` (`steer_in`, `reply_out`, `redirect_in`).
    fn assemble(
        maps: Maps,
        (steer_in, reply_out, redirect_in): (Xdp, SchedClassifier, SchedClassifier),
        pin_dir: &Path,
        build: [u8; 32],
        upgrade: Option<Upgrade>,
        adopted: bool,
    ) -> Self {
        Datapath { maps, steer_in, reply_out, redirect_in, pin_dir: pin_dir.into(), adopted, build, upgrade }
    }

    /// Loads this build next to the pinned one of another: maps whose definition and schema
    /// are unchanged are reused, the others created and pinned as `staged_<name>`, the
    /// programs verified and pinned as `staged_prog_*`. Nothing attached changes; the kept
    /// maps are written from here on (the old programs read them meanwhile).
    fn stage_upgrade(pin_dir: &Path, bytes: &[u8], build: [u8; 32], pinned: Option<Manifest>) -> Result<Self> {
        let from = pinned.map(|m| m.build);
        let failed = |what: &str| {
            format!(
                "{what}; the pinned datapath (build {}) keeps running",
                from.as_ref().map_or("unrecorded".into(), build_name)
            )
        };
        let defs = object_map_defs(bytes).map_err(|e| Error::ebpf(failed("reading the new eBPF object"), e))?;
        // A datapath from before manifests were recorded has every map at schema 1.
        let schema_of = |i: usize| pinned.map_or(1, |m| m.schemas[i]);
        let mut keep: Vec<&'static str> = MAP_NAMES
            .iter()
            .enumerate()
            .filter(|&(i, name)| {
                schema_of(i) == MAP_SCHEMAS[i]
                    && pinned_map_def(&pin_dir.join(name)).is_some_and(|d| defs.get(*name) == Some(&d))
            })
            .map(|(_, name)| *name)
            .collect();
        for group in MAP_GROUPS {
            if !group.iter().all(|m| keep.contains(m)) {
                keep.retain(|m| !group.contains(m));
            }
        }
        let recreated: Vec<&'static str> = MAP_NAMES.iter().copied().filter(|m| !keep.contains(m)).collect();
        let mut loader = EbpfLoader::new();
        for name in &keep {
            loader.map_pin_path(name, pin_dir.join(name));
        }
        let staged = Staged(pin_dir);
        let mut bpf = loader.load(bytes).map_err(|e| Error::ebpf(failed("loading the new eBPF object"), e))?;
        xdp_program(&mut bpf)?.load().map_err(|e| Error::ebpf(failed("loading the new steer_in (verifier)"), e))?;
        tc_program(&mut bpf)?.load().map_err(|e| Error::ebpf(failed("loading the new reply_out (verifier)"), e))?;
        redirect_program(&mut bpf)?
            .load()
            .map_err(|e| Error::ebpf(failed("loading the new redirect_in (verifier)"), e))?;
        let mut maps = Maps::take_pinning(&mut bpf, |name| {
            recreated.contains(&name).then(|| pin_dir.join(format!("{STAGED}{name}")))
        })?;
        let programs = pin_programs(&mut bpf, pin_dir, STAGED)?;
        if recreated.contains(&"manifest") {
            maps.manifest.set(0, Manifest::default(), 0).map_err(map_err("manifest"))?;
        }
        std::mem::forget(staged);
        info!(
            pin_dir = %pin_dir.display(),
            from = from.as_ref().map_or("unrecorded".into(), build_name),
            to = build_name(&build),
            kept = ?keep,
            recreated = ?recreated,
            "upgrading the pinned datapath in place"
        );
        let upgrade = Upgrade { from, kept: keep, recreated, swapped: Vec::new(), attached: Vec::new() };
        Ok(Self::assemble(maps, programs, pin_dir, build, Some(upgrade), true))
    }

    /// Finishes a staged upgrade once the new maps are filled and the links of the current
    /// interfaces swapped: every other pinned link is swapped too (one whose interface is gone
    /// is removed), the new maps and programs take the old pins' names (the old ones go when
    /// nothing holds them), and the manifest records this build; nothing without an upgrade
    /// staged. A link that cannot be swapped aborts the upgrade.
    pub fn commit_upgrade(&mut self) -> Result<()> {
        if self.upgrade.is_none() {
            return Ok(());
        }
        let entries =
            fs::read_dir(&self.pin_dir).map_err(|e| Error::io(format!("reading {}", self.pin_dir.display()), e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((kind, ifname)) = link_pin_kind(&name) else { continue };
            let ifname = ifname.to_string();
            if !interface_exists(&ifname) {
                // A dead link (its interface went away): it holds only the old program.
                warn!(pin = %e.path().display(), "removing the pinned link of an interface that no longer exists");
                let _ = fs::remove_file(e.path());
                continue;
            }
            let swapped = match kind {
                None => self.swap_xdp(&e.path()),
                Some(tc) => self.swap_tc(tc, &e.path()),
            };
            if let Err(err) = swapped {
                return Err(self.abort_upgrade(err));
            }
        }
        let upgrade = self.upgrade.take().expect("checked above");
        let names = upgrade.recreated.iter().copied().chain(PROG_PINS);
        for name in names {
            let (from, to) = (self.pin_dir.join(format!("{STAGED}{name}")), self.pin_dir.join(name));
            fs::rename(&from, &to)
                .map_err(|e| Error::io(format!("renaming {} to {}", from.display(), to.display()), e))?;
        }
        self.maps.manifest.set(0, manifest_of(self.build), 0).map_err(map_err("manifest"))?;
        info!(
            from = upgrade.from.as_ref().map_or("unrecorded".into(), build_name),
            to = build_name(&self.build),
            kept = ?upgrade.kept,
            recreated = ?upgrade.recreated,
            "upgraded the datapath in place"
        );
        Ok(())
    }

    /// Gives up a staged upgrade: every link swapped so far runs the pinned (old) programs
    /// again, links attached afresh are removed, the staged pins go. Returns `cause` with
    /// what was done, for the caller to report.
    pub fn abort_upgrade(&mut self, cause: Error) -> Error {
        let Some(upgrade) = self.upgrade.take() else { return cause };
        let mut problems = Vec::new();
        match pinned_programs(&self.pin_dir, "") {
            Ok(mut old) => {
                for link in &upgrade.swapped {
                    let name = link.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let back = match link_pin_kind(&name).and_then(|(kind, _)| kind) {
                        None => swap_link_xdp(&mut old.steer_in, link),
                        Some(TcProg::ReplyOut) => swap_link_tc(&mut old.reply_out, link),
                        // Only a build with redirect_in pinned a link of it to swap.
                        Some(TcProg::RedirectIn) => match old.redirect_in.as_mut() {
                            Some(prog) => swap_link_tc(prog, link),
                            None => Ok(false),
                        },
                    };
                    if let Err(e) = back {
                        problems.push(format!("{}: {}", link.display(), e.report()));
                    }
                }
            }
            Err(e) => problems.push(e.report()),
        }
        for link in &upgrade.attached {
            let _ = fs::remove_file(link);
        }
        remove_staged(&self.pin_dir);
        let back = if problems.is_empty() {
            "the pinned datapath runs as before".to_string()
        } else {
            format!("putting the old programs back failed too: {}", problems.join("; "))
        };
        warn!(cause = %cause.report(), %back, "upgrade in place abandoned");
        Error::ebpf(format!("upgrading the datapath in place ({back})"), cause)
    }

    /// Points the pinned XDP link at `path` to this build's `steer_in` (`BPF_LINK_UPDATE`).
    /// Returns whether it pointed elsewhere.
    fn swap_xdp(&mut self, path: &Path) -> Result<bool> {
        let swapped = swap_link_xdp(&mut self.steer_in, path)?;
        if let (true, Some(u)) = (swapped, self.upgrade.as_mut()) {
            u.swapped.push(path.to_owned());
        }
        Ok(swapped)
    }

    /// Points the pinned TCX link at `path` to this build's `prog`. Returns whether it pointed
    /// elsewhere.
    fn swap_tc(&mut self, prog: TcProg, path: &Path) -> Result<bool> {
        let swapped = swap_link_tc(self.tc_prog(prog), path)?;
        if let (true, Some(u)) = (swapped, self.upgrade.as_mut()) {
            u.swapped.push(path.to_owned());
        }
        Ok(swapped)
    }

    fn tc_prog(&mut self, prog: TcProg) -> &mut SchedClassifier {
        match prog {
            TcProg::ReplyOut => &mut self.reply_out,
            TcProg::RedirectIn => &mut self.redirect_in,
        }
    }

    /// The id of `steer_in` (`None`) or of a TC program.
    fn prog_id(&self, prog: Option<TcProg>) -> Result<u32> {
        let info = match prog {
            None => self.steer_in.info(),
            Some(TcProg::ReplyOut) => self.reply_out.info(),
            Some(TcProg::RedirectIn) => self.redirect_in.info(),
        };
        Ok(info.map_err(|e| Error::ebpf("reading program info", e))?.id())
    }

    /// Attaches `steer_in` to `link` in `mode` and pins the link, unless our program is
    /// already attached there in a mode `mode` accepts. Attached in another mode (the setting
    /// changed), it is detached and attached again: steering pauses for that moment; if the
    /// new mode is refused, it is attached again in the mode it ran in and the error returned.
    /// During an upgrade in place the program stays in the mode it runs in (an upgrade never
    /// detaches it): the new mode applies at the next start.
    pub fn ensure_xdp(&mut self, link: &Link, mode: XdpModeSetting) -> Result<Attach> {
        let pin = self.pin_dir.join(format!("link_xdp_{}", link.name));
        // Ours: this build's program, or the one behind our pinned link (another build's).
        // Any other is someone else's and left alone: one offloaded to the NIC beside ours (the
        // kernel takes offload beside driver or generic mode, never driver and generic
        // together), or one in the mode we want (then our attach fails, naming the kernel's
        // refusal).
        let current = self.prog_id(None)?;
        let pinned = PinnedLink::from_pin(&pin).ok().and_then(|l| link_prog_id(&l.into()));
        let ours = link.xdp_among(&[Some(current), pinned].into_iter().flatten().collect::<Vec<_>>());
        for &(id, attached) in link.xdp.iter().filter(|&&(id, _)| Some(id) != ours.map(|(o, _)| o)) {
            warn!(interface = %link.name, program = id, mode = attached, "another XDP program is attached to the interface (offloaded to the NIC it sees packets before steer_in; in driver or generic mode it keeps steer_in out); `bpftool net` shows it");
        }
        let mode_ok = ours.is_none_or(|(_, m)| mode.accepts(m));
        let upgrading = self.upgrade.is_some();
        if !mode_ok
            && upgrading
            && let Some((_, attached)) = ours
        {
            warn!(interface = %link.name, attached, wanted = ?mode, "steer_in stays in the mode it runs in during this upgrade in place; xdp_mode applies at the next start");
        }
        let keep_mode = mode_ok || upgrading;
        if let Some((id, attached)) = ours
            && id == current
            && pin.exists()
            && keep_mode
        {
            return Ok(Attach::Adopted(attached));
        }
        // Another build's program behind our pinned link: replaced in place. During an upgrade
        // a link that cannot be swapped is an error (never a detach and a fresh attach), also
        // when the link could not be read to tell its program among those attached.
        let swap_mode = ours.map(|(_, m)| m).or_else(|| link.xdp.first().map(|&(_, m)| m).filter(|_| upgrading));
        if pin.exists()
            && let Some(attached) = swap_mode
            && keep_mode
        {
            match self.swap_xdp(&pin) {
                Ok(_) => return Ok(Attach::Swapped(attached)),
                Err(e) if upgrading => return Err(e),
                Err(_) => {}
            }
        }
        // The mode our pinned link runs in, to go back to if the new one is refused.
        let previous = ours.filter(|_| pin.exists()).map(|(_, m)| m);
        if !mode_ok && let Some((_, attached)) = ours {
            warn!(interface = %link.name, attached, wanted = ?mode, "steer_in is attached in another mode than xdp_mode asks: detaching it to attach again (steering pauses meanwhile)");
        }
        // Detached now, not when the kernel gets round to releasing the unpinned link: an
        // attach in the other mode meanwhile fails with EEXIST.
        if pin.exists() {
            detach_now(&pin);
        }
        let _ = fs::remove_file(&pin);
        let (id, attached) = match self.attach_xdp_in(link, mode) {
            Ok(x) => x,
            Err(e) => {
                if let Some(previous) = previous.filter(|_| !mode_ok) {
                    self.restore_xdp(link, previous, &pin);
                }
                return Err(e);
            }
        };
        self.pin_xdp(link, id, &pin)?;
        Ok(Attach::Attached(attached))
    }

    /// Attaches `steer_in` to `link` as `mode` asks; returns the link and the mode it runs in.
    fn attach_xdp_in(&mut self, link: &Link, mode: XdpModeSetting) -> Result<(XdpLinkId, &'static str)> {
        let generic = |prog: &mut Xdp, why: String| {
            prog.attach_to_if_index(link.index, XdpMode::Skb)
                .map(|id| (id, "generic"))
                .map_err(|e| Error::ebpf(format!("attaching XDP to {} in generic mode{why}", link.name), e))
        };
        Ok(match mode {
            XdpModeSetting::Generic => generic(&mut self.steer_in, " (xdp_mode = \"generic\")".into())?,
            XdpModeSetting::Driver => {
                let id = self.steer_in.attach_to_if_index(link.index, XdpMode::Driver).map_err(|e| {
                    Error::ebpf(
                        format!(
                            "attaching XDP to {} in driver mode (xdp_mode = \"driver\"; `auto` falls back to generic)",
                            link.name
                        ),
                        e,
                    )
                })?;
                (id, "driver")
            }
            XdpModeSetting::Auto => match self.steer_in.attach_to_if_index(link.index, XdpMode::Driver) {
                Ok(id) => (id, "driver"),
                Err(driver_err) => generic(&mut self.steer_in, format!(" (driver mode: {driver_err})"))?,
            },
        })
    }

    /// Pins the XDP link `id` at `pin` (the link outlives the agent).
    fn pin_xdp(&mut self, link: &Link, id: XdpLinkId, pin: &Path) -> Result<()> {
        let fd_link: FdLink = self
            .steer_in
            .take_link(id)
            .map_err(|e| Error::ebpf("taking the XDP link", e))?
            .try_into()
            .map_err(|e| Error::ebpf(format!("XDP on {} is not a bpf_link (kernel < 5.9?)", link.name), e))?;
        fd_link.pin(pin).map_err(|e| Error::ebpf(format!("pinning {}", pin.display()), e))?;
        if let Some(u) = self.upgrade.as_mut() {
            u.attached.push(pin.to_owned());
        }
        Ok(())
    }

    /// After a refused change of mode: `steer_in` attached again in the mode it ran in
    /// (`driver` or `generic`), so that steering goes on while the error is reported.
    fn restore_xdp(&mut self, link: &Link, previous: &str, pin: &Path) {
        let back = if previous == "generic" { XdpModeSetting::Generic } else { XdpModeSetting::Driver };
        match self.attach_xdp_in(link, back).and_then(|(id, m)| self.pin_xdp(link, id, pin).map(|()| m)) {
            Ok(m) => {
                warn!(interface = %link.name, mode = m, "the new xdp_mode was refused: steer_in attached again in the mode it ran in")
            }
            Err(e) => {
                warn!(interface = %link.name, error = %e.report(), "the new xdp_mode was refused, and steer_in could not be attached again: steering has stopped")
            }
        }
    }

    /// Attaches `reply_out` to the TCX ingress of `link` and pins the link, unless our program
    /// is already attached there.
    pub fn ensure_tc(&mut self, link: &Link) -> Result<Attach> {
        self.ensure_tcx(link, TcProg::ReplyOut)
    }

    /// Makes `redirect_in` finish `steer_in`'s redirects on the uplink `link` when `steer_in`
    /// runs there in generic mode (`generic`): attached to its TCX ingress, ahead of any other
    /// program there (none must see a packet `steer_in` has half steered), pinned as
    /// `link_redirect_<ifname>`, and only then the uplink listed in `generic_uplinks`, which is
    /// what makes `steer_in` hand its packets over. Not in generic mode: the listing goes first,
    /// then the link. Returns what was attached (`None`: nothing, not in generic mode).
    pub fn ensure_redirect(&mut self, link: &Link, generic: bool) -> Result<Option<Attach>> {
        let pin = self.pin_dir.join(format!("{}{}", TcProg::RedirectIn.link_prefix(), link.name));
        let listed: Vec<u32> = self.maps.generic_uplinks.keys().filter_map(|k| k.ok()).collect();
        // The entry of an interface that is gone (an uplink recreated under a new ifindex) goes
        // too; another live uplink's stays with the links pinned there.
        for index in listed.iter().filter(|&&i| (i == link.index && !generic) || interface_gone(i)) {
            self.maps.generic_uplinks.remove(index).map_err(map_err("generic_uplinks"))?;
        }
        if !generic {
            if pin.exists() {
                detach_now(&pin);
                let _ = fs::remove_file(&pin);
                info!(interface = %link.name, "detached redirect_in (steer_in no longer runs in generic mode)");
            }
            return Ok(None);
        }
        let attach = self.ensure_tcx(link, TcProg::RedirectIn)?;
        self.maps.generic_uplinks.insert(link.index, 1, 0).map_err(map_err("generic_uplinks"))?;
        Ok(Some(attach))
    }

    /// Attaches `prog` to the TCX ingress of `link` and pins the link, unless our program is
    /// already attached there.
    fn ensure_tcx(&mut self, link: &Link, prog: TcProg) -> Result<Attach> {
        let pin = self.pin_dir.join(format!("{}{}", prog.link_prefix(), link.name));
        let ours = self.prog_id(Some(prog))?;
        let attached = SchedClassifier::query_tcx(&link.name, TcAttachType::Ingress)
            .map(|(_, progs)| progs.iter().any(|p| p.id() == ours))
            .unwrap_or(false);
        if attached && pin.exists() {
            return Ok(Attach::Adopted("tcx"));
        }
        if pin.exists() && interface_exists(&link.name) {
            match self.swap_tc(prog, &pin) {
                Ok(true) => return Ok(Attach::Swapped("tcx")),
                Ok(false) if self.upgrade.is_some() => return Ok(Attach::Adopted("tcx")),
                Err(e) if self.upgrade.is_some() => return Err(e),
                _ => {}
            }
        }
        let _ = fs::remove_file(&pin);
        // redirect_in goes first: no other program must see a packet steer_in half steered.
        let order = if prog == TcProg::RedirectIn { LinkOrder::first() } else { LinkOrder::default() };
        let name = prog.name();
        let id = self
            .tc_prog(prog)
            .attach_with_options(&link.name, TcAttachType::Ingress, TcAttachOptions::TcxOrder(order))
            .map_err(|e| {
                Error::ebpf(format!("attaching {name} to the TCX ingress of {} (needs kernel >= 6.6)", link.name), e)
            })?;
        let fd_link: FdLink = self
            .tc_prog(prog)
            .take_link(id)
            .map_err(|e| Error::ebpf("taking the TC link", e))?
            .try_into()
            .map_err(|e| Error::ebpf("TC link is not a bpf_link", e))?;
        fd_link.pin(&pin).map_err(|e| Error::ebpf(format!("pinning {}", pin.display()), e))?;
        if let Some(u) = self.upgrade.as_mut() {
            u.attached.push(pin);
        }
        Ok(Attach::Attached("tcx"))
    }
}

/// What a pin named `name` is: a link of `steer_in` (`None`) or of a TC program, and its
/// interface; `None` for any other pin.
pub fn link_pin_kind(name: &str) -> Option<(Option<TcProg>, &str)> {
    if let Some(ifname) = name.strip_prefix("link_xdp_") {
        return Some((None, ifname));
    }
    [TcProg::ReplyOut, TcProg::RedirectIn]
        .into_iter()
        .find_map(|p| name.strip_prefix(p.link_prefix()).map(|ifname| (Some(p), ifname)))
}

/// Detaches the bpf_link pinned at `path` from its hook at once, for every holder
/// (`BPF_OBJ_GET` then `BPF_LINK_DETACH`, Linux 5.9; aya 0.14 has no call for it). The pin
/// stays: an empty link.
fn detach_pinned_link(path: &Path) -> std::io::Result<()> {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
    // `union bpf_attr` (include/uapi/linux/bpf.h): the `BPF_OBJ_GET` member is
    // { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; __s32 path_fd; }, the
    // `BPF_LINK_DETACH` member { __u32 link_fd; }; the bytes past them must be zero.
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    #[repr(C, align(8))]
    struct Attr([u8; 32]);
    let bpf = |cmd: libc::c_long, attr: &Attr| {
        // SAFETY: `attr` is a zero-padded bpf_attr of the size passed; the kernel reads it
        // (and the path it points to, alive for the call) and returns a descriptor or 0.
        let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const Attr, std::mem::size_of::<Attr>()) };
        if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r as libc::c_int) }
    };
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut get = Attr([0; 32]);
    get.0[..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    // SAFETY: BPF_OBJ_GET returned a new descriptor this function now owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(bpf(BPF_OBJ_GET, &get)?) };
    let mut detach = Attr([0; 32]);
    detach.0[..4].copy_from_slice(&(std::os::fd::AsRawFd::as_raw_fd(&fd) as u32).to_ne_bytes());
    bpf(BPF_LINK_DETACH, &detach).map(drop)
}

/// Detaches the link pinned at `pin` at once (see [`detach_pinned_link`]); one that cannot be
/// is reported, and goes when its pin is removed and the kernel releases it.
fn detach_now(pin: &Path) {
    if let Err(e) = detach_pinned_link(pin) {
        warn!(pin = %pin.display(), error = %e, "could not detach the pinned link at once; it goes with its pin");
    }
}

/// The id of the program a link runs.
fn link_prog_id(link: &FdLink) -> Option<u32> {
    link.info().ok().map(|i| i.program_id())
}

/// Points the pinned XDP link at `path` to `prog`. Returns whether it pointed elsewhere.
fn swap_link_xdp(prog: &mut Xdp, path: &Path) -> Result<bool> {
    let ours = prog.info().map_err(|e| Error::ebpf("reading program info", e))?.id();
    let link = PinnedLink::from_pin(path).map_err(|e| Error::ebpf(format!("opening {}", path.display()), e))?;
    let fd: FdLink = link.into();
    if link_prog_id(&fd) == Some(ours) {
        return Ok(false);
    }
    let link = XdpLink::try_from(fd).map_err(|e| Error::ebpf(format!("{} is not an XDP link", path.display()), e))?;
    let id = prog.attach_to_link(link).map_err(|e| Error::ebpf(format!("updating {}", path.display()), e))?;
    // The pin keeps the link; the program need not own it (dropping it only closes an fd).
    drop(prog.take_link(id));
    Ok(true)
}

/// Points the pinned TCX link at `path` to `prog`. Returns whether it pointed elsewhere.
fn swap_link_tc(prog: &mut SchedClassifier, path: &Path) -> Result<bool> {
    let ours = prog.info().map_err(|e| Error::ebpf("reading program info", e))?.id();
    let link = PinnedLink::from_pin(path).map_err(|e| Error::ebpf(format!("opening {}", path.display()), e))?;
    let fd: FdLink = link.into();
    if link_prog_id(&fd) == Some(ours) {
        return Ok(false);
    }
    let link = SchedClassifierLink::try_from(fd)
        .map_err(|e| Error::ebpf(format!("{} is not a TCX link", path.display()), e))?;
    let id = prog.attach_to_link(link).map_err(|e| Error::ebpf(format!("updating {}", path.display()), e))?;
    drop(prog.take_link(id));
    Ok(true)
}

/// Whether an interface of this name exists in this network namespace.
fn interface_exists(name: &str) -> bool {
    std::ffi::CString::new(name).is_ok_and(|c| {
        // SAFETY: a valid NUL-terminated string.
        unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
    })
}

/// Whether no interface has index `index` in this network namespace: only the kernel's "no
/// such device" says so, not another failure (no socket to ask with).
fn interface_gone(index: u32) -> bool {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has the IF_NAMESIZE bytes if_indextoname may write.
    let found = unsafe { !libc::if_indextoname(index, name.as_mut_ptr()).is_null() };
    !found && matches!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ENXIO | libc::ENODEV))
}

/// Whether every map the pinned programs use is the one pinned under its name (not so after
/// an upgrade interrupted between renaming maps and programs).
fn programs_use_pinned_maps(dir: &Path) -> bool {
    let used = |p: &str| ProgramInfo::from_pin(dir.join(p)).ok().and_then(|i| i.map_ids().ok().flatten());
    let Some(ids) = PROG_PINS.map(used).into_iter().collect::<Option<Vec<Vec<u32>>>>() else { return false };
    let pinned: Vec<u32> =
        MAP_NAMES.iter().filter_map(|n| MapInfo::from_pin(dir.join(n)).ok().map(|i| i.id())).collect();
    // (A map of another name, such as an object's global data, is the program's own.)
    let ours =
        |id: &u32| MapInfo::from_id(*id).ok().is_some_and(|i| i.name_as_str().is_some_and(|n| MAP_NAMES.contains(&n)));
    ids.iter().flatten().filter(|id| ours(id)).all(|id| pinned.contains(id))
}

/// Removes the staged pins of a staging that failed part-way (forgotten once it succeeded).
struct Staged<'a>(&'a Path);

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        remove_staged(self.0);
    }
}
