use super::*;

fn data(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/clienthello").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const RECORDED: [(&str, Option<&str>); 5] = [
    ("chromium-meet.bin", Some("meet.example.test")),
    ("curl-turn.bin", Some("turn.example.test")),
    ("openssl-meet.bin", Some("meet.example.test")),
    ("openssl-nosni.bin", None),
    ("openssl-tls12.bin", Some("other.example.test")),
];

fn done(buf: &[u8]) -> Hello {
    match examine(buf, DEFAULT_MAX_HELLO) {
        Ok(Progress::Done(h)) => h,
        other => panic!("expected a decision, got {other:?}"),
    }
}

fn name_of(h: &Hello) -> Option<&str> {
    match h {
        Hello::Tls { server_name, .. } => server_name.as_ref().map(ServerName::as_str),
        Hello::NotTls => panic!("not TLS"),
    }
}

/// The handshake message inside `records`, re-split into records of at most `size` bytes.
fn refragment(records: &[u8], size: usize) -> Vec<u8> {
    let mut hs = Vec::new();
    let mut off = 0;
    while off < records.len() {
        let len = usize::from(u16::from_be_bytes([records[off + 3], records[off + 4]]));
        hs.extend_from_slice(&records[off + 5..off + 5 + len]);
        off += 5 + len;
    }
    let mut out = Vec::new();
    for chunk in hs.chunks(size) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[test]
fn recorded_hellos_give_their_server_name() {
    for (file, sni) in RECORDED {
        let b = data(file);
        let h = done(&b);
        assert_eq!(name_of(&h), sni, "{file}");
        assert!(matches!(h, Hello::Tls { len, .. } if len == b.len()), "{file}: the whole hello is consumed");
    }
    assert!(data("chromium-meet.bin").len() > 1460, "the browser hello spans more than one TCP segment");
}

#[test]
fn split_at_every_byte_boundary() {
    for (file, sni) in RECORDED {
        let b = data(file);
        for cut in 0..b.len() {
            assert_eq!(examine(&b[..cut], DEFAULT_MAX_HELLO), Ok(Progress::NeedMore), "{file} cut at {cut}");
        }
        assert_eq!(name_of(&done(&b)), sni);
        // Bytes after the hello (the client's next flight) change nothing.
        let mut more = b.clone();
        more.extend_from_slice(b"\x14\x03\x03\x00\x01\x01");
        assert_eq!(name_of(&done(&more)), sni);
    }
}

#[test]
fn split_across_records() {
    for (file, sni) in RECORDED {
        let b = data(file);
        for size in [1, 2, 3, 7, 100, 512, 1400] {
            let f = refragment(&b, size);
            let h = done(&f);
            assert_eq!(name_of(&h), sni, "{file} in records of {size}");
            assert!(matches!(h, Hello::Tls { len, .. } if len == f.len()));
        }
        // Records of 5 bytes, fed at every byte boundary.
        let f = refragment(&b, 5);
        for cut in 0..f.len() {
            assert_eq!(
                examine(&f[..cut], DEFAULT_MAX_HELLO),
                Ok(Progress::NeedMore),
                "{file} 5-byte records cut at {cut}"
            );
        }
    }
}

#[test]
fn oversized_hellos_are_refused() {
    let b = data("chromium-meet.bin");
    assert_eq!(examine(&b, 1000), Err(HelloError::TooLarge { max: 1000 }), "declared length over the limit");
    // Re-fragmented into 1-byte records, the same hello needs ~12 KB: over a 4 KiB limit,
    // found as soon as 4 KiB have arrived.
    let f = refragment(&b, 1);
    assert_eq!(examine(&f[..4096], 4096), Err(HelloError::TooLarge { max: 4096 }));
    assert_eq!(examine(&f[..4095], 4096), Ok(Progress::NeedMore));
    assert!(matches!(examine(&f, DEFAULT_MAX_HELLO), Ok(Progress::Done(_))), "fits the default 16 KiB");
    // A handshake header declaring 1 MiB.
    let huge = [22, 3, 1, 0, 4, 1, 0x10, 0, 0];
    assert_eq!(examine(&huge, DEFAULT_MAX_HELLO), Err(HelloError::TooLarge { max: DEFAULT_MAX_HELLO }));
}

#[test]
fn garbage_and_non_tls() {
    assert_eq!(done(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Hello::NotTls);
    assert_eq!(done(b"\x00"), Hello::NotTls);
    assert_eq!(done(b"\x16\x02"), Hello::NotTls, "record version 2.x is not TLS");
    // SSLv2-compatible ClientHello (2-byte header with the high bit set, msg type 1).
    assert_eq!(done(&[0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15]), Hello::NotTls);
    assert_eq!(examine(&[22, 3, 1, 0, 0], DEFAULT_MAX_HELLO), Err(HelloError::Malformed("bad record length")));
    assert_eq!(examine(&[22, 3, 1, 0x48, 0x01], DEFAULT_MAX_HELLO), Err(HelloError::Malformed("bad record length")));
    // A ServerHello (type 2) where a ClientHello belongs.
    assert!(matches!(examine(&[22, 3, 3, 0, 4, 2, 0, 0, 0], DEFAULT_MAX_HELLO), Err(HelloError::Malformed(_))));
    // An alert record in the middle of a fragmented hello.
    let f = refragment(&data("openssl-meet.bin"), 100);
    let mut bad = f[..105].to_vec();
    bad.extend_from_slice(&[21, 3, 3, 0, 2, 2, 40]);
    assert_eq!(
        examine(&bad, DEFAULT_MAX_HELLO),
        Err(HelloError::Malformed("non-handshake record inside the ClientHello"))
    );
    // A complete handshake message whose body is not a ClientHello structure.
    let junk = [22, 3, 1, 0, 8, 1, 0, 0, 4, 0xff, 0xff, 0xff, 0xff];
    assert!(matches!(examine(&junk, DEFAULT_MAX_HELLO), Err(HelloError::Malformed(_))));
}

#[test]
fn truncated_hellos_never_decide() {
    let b = data("curl-turn.bin");
    for cut in [1, 4, 5, 6, 9, 100, b.len() - 1] {
        assert_eq!(examine(&b[..cut], DEFAULT_MAX_HELLO), Ok(Progress::NeedMore));
    }
}

#[test]
fn invalid_server_names_are_reported_not_used() {
    let mut b = data("openssl-meet.bin");
    let at = b.windows(17).position(|w| w == b"meet.example.test").expect("SNI bytes");
    b[at + 4] = b'_';
    match done(&b) {
        Hello::Tls { server_name: None, invalid_name: Some(ServerNameError::Character), .. } => {}
        other => panic!("{other:?}"),
    }
    // Upper case is valid and compared case-insensitively.
    let mut b = data("openssl-meet.bin");
    b[at..at + 4].copy_from_slice(b"MEET");
    assert_eq!(name_of(&done(&b)), Some("meet.example.test"));
}

/// Found by the fuzz target: with a 512-byte limit, a 516-byte prefix was refused as too
/// large but the whole 517-byte input as malformed. The verdict must not depend on how the
/// bytes arrive: any decision on a prefix stands for the whole input.
#[test]
fn verdict_does_not_depend_on_how_bytes_arrive() {
    let input = data("fuzz-prefix-verdict.bin");
    let (knob, bytes) = input.split_first().unwrap();
    let max = 512 + usize::from(*knob) * 64;
    let full = examine(bytes, max);
    for cut in 0..bytes.len() {
        match examine(&bytes[..cut], max) {
            Ok(Progress::NeedMore) => {}
            prefix => assert_eq!(prefix, full, "cut at {cut}"),
        }
    }
}

#[test]
fn bytes_needed_never_skips_a_verdict() {
    // At every cut of every recorded hello (and of one re-split into 100-byte records, and of
    // garbage), while fewer bytes than bytes_needed are there examine says NeedMore: skipping
    // it until then loses nothing. With the whole input, examine is due.
    let fragmented = refragment(&data("chromium-meet.bin"), 100);
    let mut garbage = data("curl-turn.bin");
    garbage[5] = 2; // a ServerHello
    let files = RECORDED.iter().map(|(f, _)| data(f)).chain([fragmented, garbage, vec![22, 0, 1, 2, 3, 4]]);
    for b in files {
        // The default limit, and one the hellos exceed (examine refuses as soon as it knows).
        for max in [DEFAULT_MAX_HELLO, 600] {
            for cut in 0..=b.len() {
                if cut < bytes_needed(&b[..cut], max).min(max) {
                    let verdict = examine(&b[..cut], max);
                    assert_eq!(verdict, Ok(Progress::NeedMore), "{}-byte input cut at {cut}, max {max}", b.len());
                }
            }
            assert!(bytes_needed(&b, max) <= b.len(), "{}-byte input: complete, examine is due", b.len());
        }
    }
}
