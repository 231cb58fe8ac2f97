//! Parsing and validation of the configuration.
use super::*;

fn parse(s: &str) -> Result<Config> {
    Config::parse(s, Path::new("test.toml"))
}

const GOOD: &str = r#"
    [uplink]
    interface = "eth0"
    [[steer]]
    name = "jvb"
    protocol = "udp"
    port = 10000
    backend = ["172.18.0.10:10000", "[fd00::10]:10000"]
    [[steer]]
    name = "web"
    protocol = "tcp"
    port = 80
    backend = "172.18.0.12:8000"
"#;

#[test]
fn tls_and_splitter_sections_defaults_and_errors() {
    let base = "[uplink]\ninterface = \"eth0\"\n[[steer]]\nname=\"web\"\nprotocol=\"tcp\"\nport=80\nbackend=\"10.0.0.12:8000\"\n";
    let route = "[[tls.route]]\nname=\"web\"\nserver_names=[\"meet.example.org\", \"*.example.org\"]\nbackend=\"10.0.0.12:8443\"\n";
    let c = parse(&format!("{base}[tls]\n{route}")).unwrap();
    assert!(c.warnings.is_empty());
    let tls = c.tls.clone().unwrap();
    assert_eq!(tls.listen.len(), 2);
    assert_eq!((tls.max_hello_bytes, tls.hello_timeout_secs.get().as_secs_f64()), (16384, 10.0));
    assert_eq!(c.splitter().unwrap().connect_timeout_secs.get().as_secs_f64(), 3.0);
    assert!(tls.routes[0].transparent);
    let cases: [(&str, &str); 11] = [
        ("[tls]\ndefault=\"nope\"\n", "`tls.default`: no [[tls.route]] is named `nope`"),
        ("[tls]\nlisten=[]\n", "`tls.listen`"),
        ("[tls]\nmax_hello_bytes=100\n", "`tls.max_hello_bytes`"),
        ("[tls]\nhello_timeout_secs=0\n", "`tls.hello_timeout_secs`"),
        ("[splitter]\nconnect_timeout_secs=0\n", "`splitter.connect_timeout_secs`"),
        ("[splitter]\nreply_mark=5\nsocket_mark=5\n", "`splitter.reply_mark`"),
        ("[splitter]\nroute_table=254\n", "`splitter.route_table`"),
        (
            "[tls]\n[[tls.route]]\nname=\"a\"\nserver_names=[\"a_b.org\"]\nbackend=\"10.0.0.1:1\"\n",
            "`tls.route[0].server_names[0]`: `a_b.org`: only letters",
        ),
        ("[tls]\n[[tls.route]]\nname=\"a\"\nbackend=\"10.0.0.1:1\"\n", "not the default: nothing would reach it"),
        (
            "[tls]\n[[tls.route]]\nname=\"a\"\nserver_names=[\"x.org\"]\nbackend=\"10.0.0.12:8000\"\n",
            "also the backend of steering rule `web`",
        ),
        ("[tls]\nbogus=1\n", "unknown field `bogus`"),
    ];
    for (section, want) in cases {
        let e = err(&format!("{base}{section}"));
        assert!(e.contains(want), "{section:?}: {e}");
    }
    // In a list written over several lines, the refused element's own line and index.
    let e = err(
        "[uplink]\ninterface = \"eth0\"\n[tls]\n[[tls.route]]\nname = \"a\"\nserver_names = [\n  \"ok.org\",\n  \"a_b.org\",\n]\nbackend = \"10.0.0.1:1\"\n",
    );
    assert!(e.starts_with("test.toml:8:3: `tls.route[0].server_names[1]`: `a_b.org`"), "{e}");
    let dup = format!("{base}[tls]\n{route}{}", route.replace("name=\"web\"", "name=\"web2\""));
    assert!(
        err(&dup).contains("`tls.route[1].server_names[0]`: `meet.example.org` is already routed by `web`"),
        "{}",
        err(&dup)
    );
}

/// The former `[sni]` section still works: split into `[tls]` and `[splitter]`, with a
/// deprecation naming the keys that moved; its errors point into it; next to the new
/// sections it is refused.
#[test]
fn the_former_sni_section_is_split_with_a_deprecation() {
    let base = "[uplink]\ninterface = \"eth0\"\n";
    let old = "[sni]\nmax_hello_bytes = 4096\nidle_timeout_secs = 30\nrelay = \"splice\"\n\
               [[sni.route]]\nname = \"web\"\nserver_names = [\"meet.example.org\"]\nbackend = \"10.0.0.12:8443\"\n";
    let c = parse(&format!("{base}{old}")).unwrap();
    let (tls, splitter) = (c.tls.clone().unwrap(), c.splitter().unwrap());
    assert_eq!((tls.max_hello_bytes, tls.routes[0].name.as_str()), (4096, "web"));
    assert_eq!((splitter.idle_timeout_secs.get().as_secs_f64(), splitter.relay), (30.0, RelayMode::Splice));
    assert_eq!(c.warnings.len(), 1);
    let d = &c.warnings[0];
    assert!(d.contains("`[sni]` is deprecated") && d.contains("`[tls]`"), "{d}");
    assert!(d.contains("`idle_timeout_secs`, `relay` to `[splitter]`"), "{d}");
    // Without connection settings nothing moves to [splitter].
    let c = parse(&format!("{base}[sni]\n")).unwrap();
    assert!(c.tls.is_some() && c.splitter.is_none() && !c.warnings[0].contains("[splitter]`"));
    // Errors name the new key and point at the old line.
    let e = err(&format!("{base}[sni]\nroute_table = 254\n"));
    assert!(e.starts_with("test.toml:4:1: `splitter.route_table`"), "{e}");
    let e = err(&format!("{base}[sni]\nbogus = 1\n"));
    assert!(e.starts_with("test.toml:4:1: `sni.bogus`: unknown field `bogus`"), "{e}");
    let e = err(&format!("{base}[sni]\nlisten = [\"0.0.0.0:443\"]\nhello_timeout_secs = 0\n"));
    assert!(e.starts_with("test.toml:5:22: `sni.hello_timeout_secs`: 0: must be more than 0"), "{e}");
    let e = err(&format!("{base}[sni]\nrelay = \"zero\"\n"));
    assert!(e.starts_with("test.toml:4:9: `sni.relay`: unknown variant `zero`"), "{e}");
    let e = err(&format!("{base}[sni]\n[[sni.route]]\nserver_names = [\"a.org\"]\n"));
    assert!(e.contains("`sni.route[0]`: missing field `name`"), "{e}");
    let e = err(&format!("{base}[sni]\n[tls]\n"));
    assert!(e.contains("`sni`: `[sni]` is the former name of `[tls]` and `[splitter]`"), "{e}");
}

#[test]
fn a_splitter_section_without_a_front_is_accepted_with_a_warning() {
    let c = parse("[uplink]\ninterface = \"eth0\"\n[splitter]\nidle_timeout_secs = 5\n").unwrap();
    assert_eq!(c.warnings, ["`[splitter]` has no effect without `[tls]` or `[http]`"]);
    assert!(c.splitter().is_none());
}

#[test]
fn xdp_mode_is_auto_by_default_and_refuses_other_words() {
    let base = "[uplink]\ninterface = \"eth0\"\n";
    assert_eq!(parse(base).unwrap().uplink.xdp_mode, XdpModeSetting::Auto);
    let c = parse(&format!("{base}xdp_mode = \"generic\"\n")).unwrap();
    assert_eq!(c.uplink.xdp_mode, XdpModeSetting::Generic);
    assert!(XdpModeSetting::Generic.accepts("generic") && !XdpModeSetting::Generic.accepts("driver"));
    assert!(XdpModeSetting::Auto.accepts("generic") && XdpModeSetting::Auto.accepts("driver"));
    let e = err(&format!("{base}xdp_mode = \"native\"\n"));
    assert!(e.starts_with("test.toml:3:12: `uplink.xdp_mode`: unknown variant `native`"), "{e}");
}

#[test]
fn empty_splitter_and_tls_tables_are_all_defaults() {
    let s: Splitter = toml::from_str("").unwrap();
    assert_eq!((s.reply_mark, s.route_table, s.rule_priority), (0x4a17, 0x4a17, 90));
    let t: Tls = toml::from_str("").unwrap();
    assert_eq!(t.listen.iter().map(|a| a.port()).collect::<Vec<_>>(), [443, 443]);
}

#[test]
fn the_shipped_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agent.toml");
    let c = Config::load(&path).unwrap();
    assert_eq!(c.uplink.interface, "eth0");
    let names: Vec<_> = c.steer.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["jvb", "turn"]);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let tls = c.tls.expect("the example has a [tls] section");
    assert_eq!(tls.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["web", "turn"]);
    let http = c.http.expect("the example has an [http] section");
    assert_eq!(
        http.routes.iter().map(|r| (r.name.as_str(), r.redirect_https)).collect::<Vec<_>>(),
        [("web-http", true)]
    );
    let acme = c.acme.expect("the example has an [acme] section");
    assert_eq!((acme.names[0].to_string(), acme.directory.as_str()), ("turn.example.org".to_string(), LETS_ENCRYPT));
    assert_eq!(acme.names.len(), 1);
    let flood = c.flood.expect("the example has a [flood] section");
    assert_eq!(flood, crate::config::Flood { allow: vec!["192.0.2.0/24".parse().unwrap()], ..Default::default() });
}

#[test]
fn flood_limits_default_on_and_refuse_what_the_kernel_cannot_hold() {
    let base = "[uplink]\ninterface = \"eth0\"\n";
    let c = parse(base).unwrap();
    let f = c.flood();
    assert!(f.enabled);
    assert_eq!(
        (f.packets_per_second, f.packets_burst, f.flows_per_second, f.flows_burst),
        (10_000, 20_000, 100, 1_000)
    );
    let k = f.kernel_config(&c.splitter_ports());
    assert_eq!((k.enabled, k.guarded_ports), (1, [0; 8]));
    let tls = parse(&format!("{base}[tls]\nlisten = [\"0.0.0.0:443\", \"0.0.0.0:8443\"]\n[http]\n")).unwrap();
    assert_eq!(tls.splitter_ports(), [80, 443, 8443]);
    assert!(
        err(&format!("{base}[flood]\npackets_per_second = 0"))
            .contains("`flood.packets_per_second`: 0: from 1 to 100000000 (`enabled = false` turns the limits off)")
    );
    assert!(err(&format!("{base}[flood]\nflows_burst = 0")).contains("`flood.flows_burst`: 0: from 1 to"));
    assert!(err(&format!("{base}[flood]\npackets_burst = 9223372036854775807")).contains("`flood.packets_burst`"));
    let e = err(&format!("{base}[flood]\nallow = [\"2001:db8::/129\"]"));
    assert!(e.contains("`/129` is not a prefix length for an IPv6 network (0-128)"), "{e}");
    let many: Vec<String> = (0..257).map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256)).collect();
    let e = err(&format!("{base}[flood]\nallow = [{}]", many.join(",")));
    assert!(e.contains("`flood.allow`: at most 256 networks"), "{e}");
    let listen: Vec<String> = (0..9).map(|i| format!("\"0.0.0.0:{}\"", 8440 + i)).collect();
    let c = parse(&format!("{base}[tls]\nlisten = [{}]", listen.join(","))).unwrap();
    assert_eq!(
        c.warnings,
        [
            "the splitters listen on 9 ports: the flood limits count SYNs to the first 8 only ([8440, 8441, 8442, 8443, 8444, 8445, 8446, 8447])"
        ]
    );
    assert_eq!(c.flood().kernel_config(&c.splitter_ports()).guarded_ports[7], 8447);
    assert!(
        parse(&format!("{base}[tls]\nlisten = [{}]\n[flood]\nenabled = false", listen.join(",")))
            .unwrap()
            .warnings
            .is_empty()
    );
    let e = err(&format!("{base}[flood]\npackets_per_second = 100000\npackets_burst = 1000"));
    assert!(e.contains("`flood.packets_burst`: 1000: at least 20 ms at the rate (2000)"), "{e}");
}

#[test]
fn parses_the_documented_shape() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.pin_dir, Path::new(DEFAULT_PIN_DIR));
    assert_eq!(c.steer.len(), 2);
    assert_eq!(c.steer[0].backend.v4().unwrap().to_string(), "172.18.0.10:10000");
    assert_eq!(c.steer[0].backend.v6().unwrap().to_string(), "[fd00::10]:10000");
    assert!(c.steer[1].backend.v6().is_none());
    assert_eq!(c.steer[1].protocol, Protocol::Tcp);
}

fn err(s: &str) -> String {
    parse(s).unwrap_err().to_string()
}

#[test]
fn rejects_bad_input_with_the_key() {
    let base = "[uplink]\ninterface = \"eth0\"\n";
    assert!(err(&format!("{base}bogus = 1")).contains("unknown field `bogus`"));
    assert!(
        err(&format!("{base}[[steer]]\nname=\"a\"\nprotocol=\"sctp\"\nport=1\nbackend=\"10.0.0.1:1\""))
            .contains("unknown variant `sctp`")
    );
    let e = err(&format!("{base}[[steer]]\nname=\"a\"\nprotocol=\"udp\"\nport=0\nbackend=\"10.0.0.1:1\""));
    assert!(e.contains("`steer[0].port`"), "{e}");
    let dup = format!(
        "{base}[[steer]]\nname=\"a\"\nprotocol=\"udp\"\nport=1\nbackend=\"10.0.0.1:1\"\n[[steer]]\nname=\"b\"\nprotocol=\"udp\"\nport=1\nbackend=\"10.0.0.2:1\""
    );
    assert!(err(&dup).contains("`steer[1].port`: udp/1 is steered by rule `a` too"));
    let steer = |name: &str, port: &str, backend: &str| {
        format!("[[steer]]\nname=\"{name}\"\nprotocol=\"udp\"\nport={port}\nbackend=\"{backend}\"\n")
    };
    let ok =
        format!("{base}{}{}", steer("a", "\"20000-20050\"", "10.0.0.1:20000"), steer("b", "20051", "10.0.0.1:20051"));
    let c = Config::parse(&ok, Path::new("t.toml")).unwrap();
    assert_eq!(c.steer[0].port, crate::config::PortRange { min: 20000, max: 20050 });
    let stray = format!("{base}{}container_port = 5\n", steer("a", "1", "10.0.0.1:1"));
    assert!(err(&stray).contains("`steer[0].container_port`: only with `container`"), "{}", err(&stray));
    let overlap = format!("{base}{}{}", steer("a", "\"20000-20050\"", "10.0.0.1:1"), steer("b", "20050", "10.0.0.2:1"));
    assert!(err(&overlap).contains("`steer[1].port`: udp/20050 is steered by rule `a` too"), "{}", err(&overlap));
    let past = format!("{base}{}", steer("a", "\"20000-20050\"", "10.0.0.1:65500"));
    assert!(err(&past).contains("`steer[0].backend`: 51 ports from 65500 run past 65535"), "{}", err(&past));
    let shared =
        format!("{base}{}{}", steer("a", "\"20000-20050\"", "10.0.0.1:30000"), steer("b", "1", "10.0.0.1:30050"));
    assert!(err(&shared).contains("is already the backend of rule `a`"), "{}", err(&shared));
    // 128 ranges of 510 ports between round numbers per protocol: 16 prefixes each, per family.
    let many: String = (1..=128u32)
        .flat_map(|i| ["udp", "tcp"].map(move |p| (i, p)))
        .map(|(i, p)| {
            let (first, last) = (i * 512 - 511, i * 512 - 2);
            steer(&format!("{p}{i}"), &format!("\"{first}-{last}\""), &format!("10.0.0.1:{first}"))
                .replace("\"udp\"", &format!("\"{p}\""))
        })
        .collect();
    let e = err(&format!("{base}{many}"));
    assert!(e.contains("`steer`: the port ranges need") && e.contains("more than 4096"), "{e}");
    let two_v4 =
        format!("{base}[[steer]]\nname=\"a\"\nprotocol=\"udp\"\nport=1\nbackend=[\"10.0.0.1:1\",\"10.0.0.2:1\"]");
    assert!(err(&two_v4).contains("at most one backend per address family"));
    let lo = format!("{base}[[steer]]\nname=\"a\"\nprotocol=\"udp\"\nport=1\nbackend=\"127.0.0.1:1\"");
    assert!(err(&lo).contains("loopback"));
    let shared = format!(
        "{base}[[steer]]\nname=\"a\"\nprotocol=\"udp\"\nport=1\nbackend=\"10.0.0.1:1\"\n[[steer]]\nname=\"b\"\nprotocol=\"udp\"\nport=2\nbackend=\"10.0.0.1:1\""
    );
    assert!(err(&shared).contains("already the backend of rule `a`"), "{}", err(&shared));
    let name = format!("{base}[[steer]]\nname=\"a b\"\nprotocol=\"udp\"\nport=1\nbackend=\"10.0.0.1:1\"");
    assert!(err(&name).contains("`steer[0].name`"));
    assert!(err("[uplink]\ninterface=\"eth0\"\npin_dir=\"relative\"").contains("`pin_dir`"));
    assert!(err("pin_dir = 3").contains("test.toml"));
}

/// Every file in `examples/invalid/` is refused with the `file:line:column` and message its
/// first line (`# expect: …`) states.
#[test]
fn each_invalid_example_fails_with_its_message() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/invalid");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: LINE:COLUMN: message`", path.display()));
        let err = Config::load(&path).expect_err(&path.display().to_string()).to_string();
        let want = format!("{}:{expect}", path.display());
        assert!(err.starts_with(&want), "{}:\n  got:  {err}\n  want: {want}…", path.display());
        assert!(!err.contains('\n'), "one line: {err}");
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} invalid examples");
}

#[test]
fn locates_keys_in_the_file() {
    let text = "[uplink]\ninterface = \"eth0\"\naddresses = [\"10.0.0.1\", \"224.0.0.1\"]\n";
    assert_eq!(locate::key(text, "uplink.interface"), text.find("interface"));
    assert_eq!(locate::key(text, "uplink.addresses[1]"), text.find("\"224"));
    // A key that is absent (a default) points at its enclosing table.
    assert_eq!(locate::key(text, "uplink.nothing"), text.find("[uplink]"));
    assert_eq!(locate::key(text, "pin_dir"), None);
    // And back: the key at an offset the parser reports.
    let at = |needle: &str| locate::key_at(text, text.find(needle).unwrap(), None).map(|(k, _)| k);
    assert_eq!(at("\"224").as_deref(), Some("uplink.addresses[1]"));
    assert_eq!(at("interface").as_deref(), Some("uplink.interface"));
    assert_eq!(at("[uplink]").as_deref(), Some("uplink"), "a table's header names the table");
    let steer = "[[steer]]\nname = \"a\"\n[[steer]]\nname = \"b\"\nprotocol = \"sctp\"\n[tls]\n[[tls.route]]\nbackend = \"x\"\n";
    assert_eq!(
        locate::key_at(steer, steer.find("\"sctp").unwrap(), None).map(|(k, _)| k).as_deref(),
        Some("steer[1].protocol")
    );
    assert_eq!(
        locate::key_at(steer, steer.find("\"x").unwrap(), None).map(|(k, _)| k).as_deref(),
        Some("tls.route[0].backend")
    );
}

#[test]
fn http_section_checks() {
    let base = "[uplink]\ninterface = \"eth0\"\n";
    let route = "[[http.route]]\nname = \"w\"\nhost_names = [\"www.example.org\"]\nbackend = \"10.0.0.9:80\"\n";
    let e = err(&format!("{base}[tls]\nlisten = [\"0.0.0.0:80\"]\n[http]\n{route}"));
    assert!(e.contains("`http.listen[0]`: 0.0.0.0:80 is also a [tls] listen address"), "{e}");
    let e = err(&format!("{base}[http]\ndefault = \"nope\"\n{route}"));
    assert!(e.contains("`http.default`: no [[http.route]] is named `nope`"), "{e}");
    let e = err(&format!("{base}[http]\nmax_head_bytes = 100\n{route}"));
    assert!(e.contains("`http.max_head_bytes`: must be 1024 to 65536"), "{e}");
    let e = err(&format!("{base}[http]\n[acme]\nemail = \"nobody\"\nnames = [\"a.example.org\"]\n"));
    assert!(e.contains("`acme.email`: `nobody` is not an e-mail address"), "{e}");
    let e = err(&format!(
        "{base}[http]\n[acme]\nemail = \"a@b.org\"\ndirectory = \"http://ca/dir\"\nnames = [\"a.example.org\"]\n"
    ));
    assert!(e.contains("`acme.directory`"), "{e}");
    // [http] alone runs the splitter with [splitter]'s defaults and nothing on 443.
    let c = parse(&format!("{base}[http]\n{route}")).unwrap();
    assert_eq!(c.splitter().unwrap().reply_mark, 0x4a17);
    assert!(c.tls.is_none());
    assert_eq!(c.transparent_backends().collect::<Vec<_>>(), ["10.0.0.9:80".parse().unwrap()]);
}
