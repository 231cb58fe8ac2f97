//! Fuzzes the SNI splitter's ClientHello reader: it must never panic, and feeding it a
//! prefix of the input must either ask for more or reach the same verdict as the whole input
//! (bytes after a decision never change it); and while fewer bytes than `bytes_needed` are
//! there, the reader must still be asking for more (the splitter skips it until then). The
//! first byte picks the size limit.
#![no_main]

use jitsi_agent::tls::hello::{Hello, Progress, bytes_needed, examine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&knob, data)) = input.split_first() else { return };
    let max = 512 + usize::from(knob) * 64;
    let full = examine(data, max);
    if let Ok(Progress::Done(Hello::Tls { len, .. })) = &full {
        assert!(*len <= data.len(), "a hello cannot be longer than the bytes read");
    }
    for cut in [data.len() / 3, data.len() / 2, data.len().saturating_sub(1), data.len()] {
        if cut < bytes_needed(&data[..cut], max).min(max) {
            assert_eq!(examine(&data[..cut], max), Ok(Progress::NeedMore), "skipped a verdict at {cut} bytes");
        }
        match examine(&data[..cut], max) {
            Ok(Progress::NeedMore) => {}
            prefix => assert_eq!(prefix, full, "a decision on {cut} bytes must stand for all {}", data.len()),
        }
    }
});
