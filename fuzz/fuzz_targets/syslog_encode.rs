//! The syslog encoder on hostile names and messages: every frame stays within the
//! configured size, octet counts are right, and structured data stays parseable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logroute::route::document::{SyslogConfig, SyslogFormat, SyslogFraming, SyslogTransport};
use logroute::sink::syslog::encode::Encoder;

#[path = "common.rs"]
mod common;
use common::{Input, container, record};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.byte();
    let transport = match mode % 3 {
        0 => SyslogTransport::Udp,
        1 => SyslogTransport::Tcp,
        _ => SyslogTransport::Tls,
    };
    let framing = if mode & 4 == 0 {
        SyslogFraming::OctetCounting
    } else {
        SyslogFraming::Newline
    };
    let format = if mode & 8 == 0 {
        SyslogFormat::Rfc5424
    } else {
        SyslogFormat::Rfc3164
    };
    let max = 480 + u32::from(input.u16() % 4000);
    let cfg = SyslogConfig {
        host: "receiver".into(),
        port: 514,
        transport,
        format,
        framing,
        facility: input.byte() % 24,
        severity: (mode & 16 != 0).then_some(input.byte() % 8),
        max_message_bytes: max,
        tls: None,
        egress: None,
        relp: None,
    };
    let node = input.string();
    let mut encoder = Encoder::new(&cfg, &node);
    let c = container(&mut input);
    while !input.is_empty() {
        let r = record(&mut input, &c);
        let mut out = Vec::new();
        encoder.encode(&r, &mut out);
        let message: &[u8] = match (transport, framing) {
            (SyslogTransport::Udp, _) => &out,
            (_, SyslogFraming::OctetCounting) => {
                let space = out.iter().position(|b| *b == b' ').expect("LEN SP MSG");
                let len: usize = std::str::from_utf8(&out[..space])
                    .expect("ASCII length")
                    .parse()
                    .expect("a decimal length");
                assert_eq!(
                    len,
                    out.len() - space - 1,
                    "octet count matches the message"
                );
                &out[space + 1..]
            }
            (_, SyslogFraming::Newline) => {
                assert_eq!(out.last(), Some(&b'\n'), "newline-framed");
                assert!(
                    !out[..out.len() - 1].contains(&b'\n'),
                    "no newline inside a newline-framed message"
                );
                &out[..out.len() - 1]
            }
        };
        assert!(
            message.len() <= max as usize,
            "{} bytes past maxMessageBytes {max}",
            message.len()
        );
        assert!(message.starts_with(b"<"), "a PRI first");
    }
});
