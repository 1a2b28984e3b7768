use std::sync::Arc;

use super::*;
use crate::record::{ContainerInfo, PodInfo, Timestamp};

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// 2024-01-02T03:04:05.123456789Z
const TS: Timestamp = Timestamp {
    secs: 1_704_164_645,
    nanos: 123_456_789,
};

fn config(
    format: SyslogFormat,
    transport: SyslogTransport,
    framing: SyslogFraming,
) -> SyslogConfig {
    SyslogConfig {
        host: "127.0.0.1".into(),
        port: 514,
        transport,
        format,
        framing,
        facility: 16,
        severity: None,
        max_message_bytes: 65536,
        tls: None,
        relp: None,
        egress: None,
    }
}

fn rfc5424() -> SyslogConfig {
    config(
        SyslogFormat::Rfc5424,
        SyslogTransport::Tcp,
        SyslogFraming::OctetCounting,
    )
}

fn pod_container() -> Arc<ContainerInfo> {
    Arc::new(ContainerInfo {
        id: ID.into(),
        name: "k8s_api_payments-7d9f_payments_uid-1_0".into(),
        image: "payments:1".into(),
        node: "node-1".into(),
        pod: Some(PodInfo {
            namespace: "payments".into(),
            name: "payments-7d9f".into(),
            uid: "uid-1".into(),
            container_name: "api".into(),
            ..PodInfo::default()
        }),
        ..ContainerInfo::default()
    })
}

fn host_container() -> Arc<ContainerInfo> {
    Arc::new(ContainerInfo {
        id: ID.into(),
        name: "nginx".into(),
        node: "node-1".into(),
        ..ContainerInfo::default()
    })
}

fn record(container: Arc<ContainerInfo>, stream: StreamName, message: &str) -> Record {
    Record {
        container,
        stream,
        timestamp: TS,
        message: message.into(),
        truncated: false,
    }
}

fn encode(cfg: &SyslogConfig, node: &str, rec: &Record) -> (String, bool) {
    let mut out = Vec::new();
    let cut = Encoder::new(cfg, node).encode(rec, &mut out);
    (String::from_utf8(out).expect("frames are UTF-8"), cut)
}

/// Strip and check the RFC 6587 octet count; return the message.
fn unframe(frame: &str) -> &str {
    let (len, msg) = frame.split_once(' ').expect("octet count and a space");
    assert_eq!(
        len.parse::<usize>().expect("numeric octet count"),
        msg.len(),
        "octet count of {frame:?}"
    );
    msg
}

#[test]
fn rfc5424_pod_record_has_every_field() {
    let rec = record(pod_container(), StreamName::Stdout, "hello world");
    let (frame, cut) = encode(&rfc5424(), "node-1", &rec);
    assert!(!cut);
    assert_eq!(
        unframe(&frame),
        "<134>1 2024-01-02T03:04:05.123456Z node-1 payments-7d9f 0123456789ab stdout \
         [logroute@32473 namespace=\"payments\" pod=\"payments-7d9f\" container=\"api\" node=\"node-1\"] hello world"
    );
}

#[test]
fn host_container_has_docker_name_and_no_pod_fields() {
    let rec = record(host_container(), StreamName::Stderr, "boom");
    let (frame, _) = encode(&rfc5424(), "node-1", &rec);
    assert_eq!(
        unframe(&frame),
        "<131>1 2024-01-02T03:04:05.123456Z node-1 nginx 0123456789ab stderr \
         [logroute@32473 container=\"nginx\" node=\"node-1\"] boom"
    );
}

#[test]
fn severity_follows_stream_unless_configured() {
    let mut cfg = rfc5424();
    cfg.facility = 1;
    let out =
        |cfg: &SyslogConfig, stream| encode(cfg, "n", &record(host_container(), stream, "m")).0;
    assert!(
        unframe(&out(&cfg, StreamName::Stderr)).starts_with("<11>1 "),
        "user.err = 8+3"
    );
    assert!(
        unframe(&out(&cfg, StreamName::Stdout)).starts_with("<14>1 "),
        "user.info = 8+6"
    );
    cfg.severity = Some(4);
    assert!(unframe(&out(&cfg, StreamName::Stderr)).starts_with("<12>1 "));
    assert!(unframe(&out(&cfg, StreamName::Stdout)).starts_with("<12>1 "));
    cfg.facility = 23;
    cfg.severity = Some(7);
    assert!(
        unframe(&out(&cfg, StreamName::Stdout)).starts_with("<191>1 "),
        "local7.debug is the largest PRI"
    );
}

#[test]
fn timestamp_is_utc_microseconds_zero_padded() {
    let mut rec = record(host_container(), StreamName::Stdout, "m");
    rec.timestamp = Timestamp {
        secs: 0,
        nanos: 5_000,
    };
    let (frame, _) = encode(&rfc5424(), "n", &rec);
    assert!(
        unframe(&frame).starts_with("<134>1 1970-01-01T00:00:00.000005Z n "),
        "{frame}"
    );
}

#[test]
fn header_fields_are_sanitized_and_limited() {
    let long_pod = "p".repeat(60);
    let mut container = (*pod_container()).clone();
    if let Some(pod) = container.pod.as_mut() {
        pod.name = long_pod.clone();
    }
    let rec = record(Arc::new(container), StreamName::Stdout, "m");
    let node = format!("my node\tÄ{}", "h".repeat(300));
    let (frame, _) = encode(&rfc5424(), &node, &rec);
    let msg = unframe(&frame);
    let fields: Vec<&str> = msg.splitn(7, ' ').collect();
    assert_eq!(fields[2].len(), 255, "HOSTNAME is at most 255 bytes");
    assert!(
        fields[2].starts_with("my_node__hhh"),
        "spaces, tabs and non-ASCII become _: {}",
        fields[2]
    );
    assert_eq!(fields[3], &long_pod[..48], "APP-NAME is at most 48 bytes");
    assert_eq!(
        fields[4], "0123456789ab",
        "PROCID is the short container id"
    );
    // The full pod name and the unsanitized node are still in the structured data.
    assert!(fields[6].contains(&format!("pod=\"{long_pod}\"")), "{msg}");
    assert!(fields[6].contains("node=\"my node\tÄhhh"), "{msg}");
}

#[test]
fn empty_fields_become_nil() {
    let container = Arc::new(ContainerInfo::default());
    let rec = record(container, StreamName::Stdout, "");
    let (frame, _) = encode(&rfc5424(), "", &rec);
    assert_eq!(
        unframe(&frame),
        "<134>1 2024-01-02T03:04:05.123456Z - - - stdout [logroute@32473 container=\"\" node=\"\"]",
        "nil fields are '-', and an empty MSG leaves no trailing space"
    );
}

#[test]
fn sd_values_are_escaped() {
    let mut container = (*pod_container()).clone();
    if let Some(pod) = container.pod.as_mut() {
        pod.namespace = r#"a"b\c]d"#.into();
    }
    let rec = record(
        Arc::new(container),
        StreamName::Stdout,
        r#"msg with "quotes" ] and \ stay raw"#,
    );
    let (frame, _) = encode(&rfc5424(), "n", &rec);
    let msg = unframe(&frame);
    assert!(msg.contains(r#"namespace="a\"b\\c\]d""#), "{msg}");
    assert!(
        msg.ends_with(r#"] msg with "quotes" ] and \ stay raw"#),
        "MSG is not escaped: {msg}"
    );
}

#[test]
fn octet_counting_keeps_newlines_and_counts_bytes() {
    let rec = record(
        host_container(),
        StreamName::Stderr,
        "Exception: é\n  at a()\n  at b()",
    );
    let (frame, _) = encode(&rfc5424(), "n", &rec);
    assert!(
        unframe(&frame).ends_with("] Exception: é\n  at a()\n  at b()"),
        "{frame:?}"
    );
}

#[test]
fn newline_framing_escapes_embedded_newlines() {
    let cfg = config(
        SyslogFormat::Rfc5424,
        SyslogTransport::Tls,
        SyslogFraming::Newline,
    );
    let rec = record(host_container(), StreamName::Stderr, "line 1\nline 2\n");
    let (frame, _) = encode(&cfg, "n", &rec);
    assert!(frame.ends_with("] line 1#012line 2#012\n"), "{frame:?}");
    assert_eq!(
        frame.matches('\n').count(),
        1,
        "only the frame delimiter: {frame:?}"
    );
}

#[test]
fn udp_is_one_bare_message() {
    // The configured framing does not apply to datagrams.
    let cfg = config(
        SyslogFormat::Rfc5424,
        SyslogTransport::Udp,
        SyslogFraming::Newline,
    );
    let rec = record(host_container(), StreamName::Stdout, "a\nb");
    let (frame, _) = encode(&cfg, "n", &rec);
    assert!(frame.starts_with("<134>1 "), "{frame:?}");
    assert!(frame.ends_with("] a\nb"), "{frame:?}");
}

#[test]
fn rfc3164_header_and_tag() {
    let cfg = config(
        SyslogFormat::Rfc3164,
        SyslogTransport::Tcp,
        SyslogFraming::OctetCounting,
    );
    let rec = record(pod_container(), StreamName::Stdout, "hello");
    let (frame, _) = encode(&cfg, "node-1", &rec);
    assert_eq!(
        unframe(&frame),
        "<134>Jan  2 03:04:05 node-1 payments-7d9f[0123456789ab]: hello"
    );

    let mut container = (*host_container()).clone();
    container.name = format!("we:ird[name]{}", "x".repeat(40));
    let rec = record(Arc::new(container), StreamName::Stderr, "x");
    let mut rec_late = rec.clone();
    rec_late.timestamp = Timestamp {
        secs: 1_703_980_799,
        nanos: 0,
    }; // 2023-12-30T23:59:59Z
    let (frame, _) = encode(&cfg, "node-1", &rec_late);
    let tag = format!("we_ird_name_{}", "x".repeat(20));
    assert_eq!(
        unframe(&frame),
        format!("<131>Dec 30 23:59:59 node-1 {tag}[0123456789ab]: x")
    );
}

#[test]
fn long_message_is_cut_visibly_within_the_limit() {
    let mut cfg = rfc5424();
    cfg.max_message_bytes = 1000;
    let message = "0123456789".repeat(300);
    let rec = record(pod_container(), StreamName::Stdout, &message);
    let (frame, cut) = encode(&cfg, "node-1", &rec);
    assert!(cut);
    let msg = unframe(&frame);
    assert_eq!(
        msg.len(),
        1000,
        "the cut message fills the limit exactly with ASCII"
    );
    let (_, body) = msg.split_once("] ").expect("structured data then MSG");
    let (kept, marker) = body.split_once('…').expect("cut marker");
    assert!(
        message.starts_with(kept),
        "kept part is a prefix of the message"
    );
    assert_eq!(
        marker,
        format!("[cut {} bytes]", message.len() - kept.len())
    );
}

#[test]
fn message_that_fits_exactly_is_not_cut() {
    let mut cfg = rfc5424();
    let rec = record(host_container(), StreamName::Stdout, "");
    let header_len = unframe(&encode(&cfg, "n", &rec).0).len();
    cfg.max_message_bytes = (header_len + 1 + 100) as u32;
    let rec = record(host_container(), StreamName::Stdout, &"m".repeat(100));
    let (frame, cut) = encode(&cfg, "n", &rec);
    assert!(!cut);
    assert_eq!(unframe(&frame).len(), header_len + 101);
    let rec = record(host_container(), StreamName::Stdout, &"m".repeat(101));
    let (frame, cut) = encode(&cfg, "n", &rec);
    assert!(cut);
    assert!(unframe(&frame).ends_with("…[cut 19 bytes]"), "{frame}");
}

#[test]
fn cutting_never_splits_a_character_and_never_exceeds_the_limit() {
    for format in [SyslogFormat::Rfc5424, SyslogFormat::Rfc3164] {
        for framing in [SyslogFraming::OctetCounting, SyslogFraming::Newline] {
            let mut cfg = config(format, SyslogTransport::Tcp, framing);
            for max in (480..560).chain([1000, 4096]) {
                cfg.max_message_bytes = max;
                for len in [0, 1, 200, 400, 479, 480, 481, 999, 5000] {
                    let message: String = "é€😀a\n".chars().cycle().take(len).collect();
                    let rec = record(pod_container(), StreamName::Stderr, &message);
                    let mut out = Vec::new();
                    let cut = Encoder::new(&cfg, "node-1").encode(&rec, &mut out);
                    let frame = std::str::from_utf8(&out).expect("valid UTF-8 after cutting");
                    let msg = match framing {
                        SyslogFraming::OctetCounting => unframe(frame),
                        SyslogFraming::Newline => frame.strip_suffix('\n').expect("LF-terminated"),
                    };
                    assert!(
                        msg.len() <= max as usize,
                        "{format:?} {framing:?} max {max} len {len}: {}",
                        msg.len()
                    );
                    assert_eq!(
                        cut,
                        msg.contains("[cut "),
                        "cut flag matches the marker: {msg:?}"
                    );
                    if !cut {
                        let sent = match framing {
                            SyslogFraming::Newline => message.replace('\n', "#012"),
                            SyslogFraming::OctetCounting => message.clone(),
                        };
                        assert!(msg.ends_with(&sent), "uncut message is whole");
                    }
                }
            }
        }
    }
}

#[test]
fn limit_below_header_drops_structured_data_first() {
    let mut container = (*pod_container()).clone();
    if let Some(pod) = container.pod.as_mut() {
        pod.name = "p".repeat(253);
        pod.namespace = "n".repeat(63);
    }
    let rec = record(Arc::new(container), StreamName::Stdout, "hello");
    let mut cfg = rfc5424();
    cfg.max_message_bytes = 480;
    let (frame, cut) = encode(&cfg, &"h".repeat(200), &rec);
    assert!(cut, "losing the structured data counts as a cut");
    let msg = unframe(&frame);
    assert!(msg.len() <= 480);
    assert!(msg.ends_with(" stdout - hello"), "nil SD, whole MSG: {msg}");

    // A limit smaller than any header still holds.
    cfg.max_message_bytes = 20;
    let (frame, cut) = encode(&cfg, "node", &rec);
    assert!(cut);
    assert_eq!(unframe(&frame).len(), 20);
}

#[test]
fn frames_are_appended_to_the_batch_buffer() {
    let mut enc = Encoder::new(&rfc5424(), "n");
    let mut out = Vec::new();
    enc.encode(
        &record(host_container(), StreamName::Stdout, "one"),
        &mut out,
    );
    let first = out.len();
    enc.encode(
        &record(host_container(), StreamName::Stdout, "two"),
        &mut out,
    );
    let text = String::from_utf8(out).expect("UTF-8");
    assert!(unframe(&text[..first]).ends_with("] one"));
    assert!(unframe(&text[first..]).ends_with("] two"));
}

/// The cached-header path must write exactly what the general path writes, for every
/// format and framing, across seconds, containers, streams and cache evictions.
#[test]
fn the_fast_path_writes_what_the_general_path_writes() {
    let containers: Vec<Arc<ContainerInfo>> = (0..HEAD_CACHE + 3)
        .map(|i| {
            if i % 2 == 0 {
                pod_container()
            } else {
                host_container()
            }
        })
        .collect();
    for format in [SyslogFormat::Rfc5424, SyslogFormat::Rfc3164] {
        for (transport, framing) in [
            (SyslogTransport::Tcp, SyslogFraming::OctetCounting),
            (SyslogTransport::Tcp, SyslogFraming::Newline),
            (SyslogTransport::Udp, SyslogFraming::OctetCounting),
        ] {
            let cfg = config(format, transport, framing);
            let mut fast = Encoder::new(&cfg, "node-1");
            let mut general = Encoder::new(&cfg, "node-1");
            for i in 0..200u32 {
                let stream = if i % 3 == 0 {
                    StreamName::Stderr
                } else {
                    StreamName::Stdout
                };
                let mut rec = record(
                    containers[i as usize % containers.len()].clone(),
                    stream,
                    if i % 7 == 0 { "" } else { "a message é]\"" },
                );
                rec.timestamp = Timestamp {
                    secs: TS.secs + i64::from(i / 10),
                    nanos: i * 4_999_999 % 1_000_000_000,
                };
                let (mut a, mut b) = (Vec::new(), Vec::new());
                assert!(!fast.encode(&rec, &mut a));
                assert!(!general.encode_with_limits(&rec, &mut b));
                assert_eq!(
                    String::from_utf8_lossy(&a),
                    String::from_utf8_lossy(&b),
                    "{format:?} {framing:?} record {i}"
                );
            }
        }
    }
}

/// Found by the syslog_encode fuzz target (fuzz/seeds/syslog_encode/sd-newline): a
/// newline in a structured-data value (here the node name) ended the message early
/// under newline framing.
#[test]
fn a_newline_in_a_structured_data_value_does_not_break_newline_framing() {
    let cfg = config(
        SyslogFormat::Rfc5424,
        SyslogTransport::Tcp,
        SyslogFraming::Newline,
    );
    let mut encoder = Encoder::new(&cfg, "node\n-1");
    let mut out = Vec::new();
    encoder.encode(
        &record(pod_container(), StreamName::Stdout, "hello"),
        &mut out,
    );
    let text = String::from_utf8(out).expect("UTF-8");
    assert_eq!(text.matches('\n').count(), 1, "{text:?}");
    assert!(text.ends_with("hello\n"), "{text:?}");
    assert!(text.contains("node=\"node#012-1\""), "{text:?}");
}
