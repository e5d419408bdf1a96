//! How `list` and `show` print messages (pure).

use std::fmt::Write as _;

use super::select::Entry;
use crate::headers;

/// `s` on one line, escaped, cut to `max` characters (with `…`).
pub fn one_line(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .collect::<String>()
        .escape_debug()
        .collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

/// Bytes as quoted, escaped text (invalid UTF-8 replaced), or `-` for none.
pub fn quoted_lossy(bytes: Option<&[u8]>) -> String {
    match bytes {
        None => "-".to_string(),
        Some(b) => format!("\"{}\"", String::from_utf8_lossy(b).escape_debug()),
    }
}

/// One line of `rebound dlq list`.
pub fn list_line(e: &Entry) -> String {
    let first = e
        .first_failed_at()
        .map(headers::format_time)
        .or_else(|| e.text(headers::FIRST_FAILED_AT))
        .unwrap_or_else(|| "-".to_string());
    format!(
        "{} key={} reason={} class={} attempts={} first_failed={} error=\"{}\"",
        e.position(),
        quoted_lossy(e.key.as_deref()),
        e.reason().unwrap_or_else(|| "-".into()),
        e.error_class().unwrap_or_else(|| "-".into()),
        e.attempts().map_or("-".to_string(), |a| a.to_string()),
        first,
        one_line(&e.error_message().unwrap_or_default(), 80),
    )
}

/// One line of `rebound dlq list --json`.
pub fn list_json(e: &Entry) -> serde_json::Value {
    serde_json::json!({
        "partition": e.partition,
        "offset": e.offset,
        "timestamp": e.record_time().map(headers::format_time),
        "key": e.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
        "reason": e.reason(),
        "error_class": e.error_class(),
        "error_kind": e.text(headers::ERROR_KIND),
        "error_message": e.error_message(),
        "attempts": e.attempts(),
        "first_failed_at": e.first_failed_at().map(headers::format_time),
        "original_topic": e.original_topic(),
        "replay_count": e.replay_count().ok(),
    })
}

/// `bytes` as text if they are UTF-8 without control characters (`allow` lists the ones that
/// are fine, e.g. newlines in a payload).
pub fn as_text<'a>(bytes: &'a [u8], allow: &[char]) -> Option<&'a str> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|s| !s.chars().any(|c| c.is_control() && !allow.contains(&c)))
}

/// A classic hex dump, 16 bytes a line: offset, bytes, and the printable ASCII beside them.
pub fn hex_dump(bytes: &[u8], indent: &str) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "{indent}{:08x} ", i * 16);
        for j in 0..16 {
            if j == 8 {
                out.push(' ');
            }
            match chunk.get(j) {
                Some(b) => {
                    let _ = write!(out, " {b:02x}");
                }
                None => out.push_str("   "),
            }
        }
        out.push_str("  |");
        out.extend(chunk.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        }));
        out.push_str("|\n");
    }
    out
}

/// A key or header value on one line: quoted text, or `hex …` for anything else.
fn inline_value(v: Option<&[u8]>) -> String {
    match v {
        None => "(null)".to_string(),
        Some(b) => match as_text(b, &[]) {
            Some(s) => format!("{s:?}"),
            None if b.len() <= 32 => format!(
                "hex {} ({} bytes)",
                b.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                b.len()
            ),
            None => format!("binary, {} bytes:\n{}", b.len(), hex_dump(b, "      "))
                .trim_end()
                .to_string(),
        },
    }
}

/// `rebound dlq show`: every header, the key and the payload.
pub fn render_show(topic: &str, e: &Entry) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "topic      {topic}");
    let _ = writeln!(out, "partition  {}", e.partition);
    let _ = writeln!(out, "offset     {}", e.offset);
    match (e.record_time(), e.timestamp) {
        (Some(t), Some(ms)) => {
            let _ = writeln!(out, "timestamp  {} ({ms})", headers::format_time(t));
        }
        _ => {
            let _ = writeln!(out, "timestamp  -");
        }
    }
    let _ = writeln!(out, "key        {}", inline_value(e.key.as_deref()));
    let _ = writeln!(out, "headers    {}", e.headers.len());
    for h in &e.headers {
        let name = match as_text(&h.name, &[]) {
            Some(n) => n.to_string(),
            None => format!(
                "hex[{}]",
                h.name
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<String>()
            ),
        };
        let _ = writeln!(out, "  {name}: {}", inline_value(h.value.as_deref()));
    }
    match e.payload.as_deref() {
        None => {
            let _ = writeln!(out, "payload    (null)");
        }
        Some(p) => match as_text(p, &['\n', '\t', '\r']) {
            Some(text) => {
                let _ = writeln!(out, "payload    {} bytes, text:", p.len());
                out.push_str(text);
                if !text.ends_with('\n') {
                    out.push('\n');
                }
            }
            None => {
                let _ = writeln!(out, "payload    {} bytes, binary:", p.len());
                out.push_str(&hex_dump(p, ""));
            }
        },
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::select::fixtures::*;
    use super::*;
    use crate::headers::Header;

    #[test]
    fn list_lines_are_escaped_and_complete() {
        let mut e = dead(7, "exhausted", "http_503", "2026-11-24T12:00:00.000Z");
        e.key = Some(b"a\"b\n\xff".to_vec());
        assert_eq!(
            list_line(&e),
            "0/7 key=\"a\\\"b\\n\u{fffd}\" reason=exhausted class=http_503 attempts=3 \
             first_failed=2026-11-24T12:00:00.000Z error=\"http_503 happened\""
        );
        let j = list_json(&e);
        assert_eq!(j["offset"], 7);
        assert_eq!(j["attempts"], 3);
        assert_eq!(j["original_topic"], "orders");
        e.key = None;
        e.headers.clear();
        assert!(list_line(&e).starts_with("0/7 key=- reason=- class=- attempts=- first_failed=- "));
        assert_eq!(list_json(&e)["key"], serde_json::Value::Null);
    }

    #[test]
    fn show_prints_text_as_text_and_anything_else_as_hex() {
        let mut e = dead(1, "permanent", "http_400", "2026-11-24T12:00:00.000Z");
        e.payload = Some(b"{\"a\": 1}\n".to_vec());
        e.headers.push(Header {
            name: vec![0xff, b'k'],
            value: Some(vec![0, 1, 2]),
        });
        e.headers.push(Header {
            name: b"nothing".to_vec(),
            value: None,
        });
        let text = render_show("orders.dlq", &e);
        assert!(text.contains("key        \"k1\""), "{text}");
        assert!(
            text.contains("  rebound-dlq-reason: \"permanent\""),
            "{text}"
        );
        assert!(
            text.contains("  hex[ff6b]: hex 00 01 02 (3 bytes)"),
            "{text}"
        );
        assert!(text.contains("  nothing: (null)"), "{text}");
        assert!(
            text.ends_with("payload    9 bytes, text:\n{\"a\": 1}\n"),
            "{text}"
        );
        e.payload = Some(vec![0x7b, 0x00, 0xff, b'a']);
        let text = render_show("orders.dlq", &e);
        assert!(
            text.contains("payload    4 bytes, binary:\n00000000  7b 00 ff 61"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("|{..a|"), "{text}");
    }

    #[test]
    fn hex_dump_lines_have_sixteen_bytes() {
        let bytes: Vec<u8> = (0u8..20).collect();
        let dump = hex_dump(&bytes, "");
        let lines: Vec<&str> = dump.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            "00000000  00 01 02 03 04 05 06 07  08 09 0a 0b 0c 0d 0e 0f  |................|"
        );
        assert!(lines[1].starts_with("00000010  10 11 12 13 "));
        assert_eq!(lines[0].find('|'), lines[1].find('|'), "columns line up");
        assert!(lines[1].ends_with("|....|"));
    }

    #[test]
    fn text_detection_rejects_control_characters() {
        assert_eq!(as_text(b"plain", &[]), Some("plain"));
        assert_eq!(as_text(b"two\nlines", &[]), None);
        assert_eq!(as_text(b"two\nlines", &['\n']), Some("two\nlines"));
        assert_eq!(as_text(b"\x1b[31m", &['\n']), None);
        assert_eq!(as_text(b"\xff", &[]), None);
    }
}
