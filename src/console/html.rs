//! The console's pages as HTML text (pure): escaping, the layout, and the pieces that show
//! message bytes. No script, no stylesheet from elsewhere: every page is complete by itself.

use std::fmt::Write as _;

use crate::dlq::{as_text, hex_dump};

/// `s` escaped for HTML text and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` percent-encoded for a query string value.
pub fn url_enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#1d2330;color:#fff;padding:8px 16px;display:flex;gap:18px;align-items:center}\
header a{color:#cfe3ff;text-decoration:none;font-weight:600}header .mode{margin-left:auto;font-size:12px;\
padding:2px 8px;border-radius:10px;background:#3b4252}header .mode.rw{background:#a33}\
main{padding:12px 16px}h1{font-size:20px}h2{font-size:16px;margin-top:22px}\
table{border-collapse:collapse;background:#fff;margin:6px 0}td,th{border:1px solid #d8dce3;padding:3px 8px;\
text-align:left;vertical-align:top}th{background:#eef0f4}td.n{text-align:right;font-variant-numeric:tabular-nums}\
pre{background:#fff;border:1px solid #d8dce3;padding:8px;overflow:auto;max-height:480px}\
.err{color:#a33;font-weight:600}.ok{color:#276738;font-weight:600}.muted{color:#667}\
form.filter label{margin-right:10px;display:inline-block}input[type=text]{width:11em}\
button{padding:4px 12px}.warn{background:#fff4d6;border:1px solid #e8c869;padding:6px 10px}";

/// A whole page: the navigation, a badge saying whether redrive is allowed, and `body`.
pub fn page(title: &str, allow_replay: bool, body: &str) -> String {
    let mode = if allow_replay {
        r#"<span class="mode rw">redrive allowed</span>"#
    } else {
        r#"<span class="mode">read-only</span>"#
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{t} · rebound console</title>\
         <style>{STYLE}</style></head><body><header><strong>rebound</strong>\
         <a href=\"/\">Topology</a><a href=\"/dlq\">Dead letters</a><a href=\"/redrive/job\">Redrive</a>{mode}\
         </header><main><h1>{t}</h1>{body}</main></body></html>",
        t = esc(title)
    )
}

/// Bytes shown inline: escaped text, or hex for anything that is not plain text.
pub fn inline_bytes(b: Option<&[u8]>, max_chars: usize) -> String {
    match b {
        None => "<span class=\"muted\">(null)</span>".to_string(),
        Some(b) => match as_text(b, &[]) {
            Some(s) if s.chars().count() > max_chars => {
                format!("{}…", esc(&s.chars().take(max_chars).collect::<String>()))
            }
            Some(s) => esc(s),
            None => {
                let shown: Vec<String> = b.iter().take(32).map(|x| format!("{x:02x}")).collect();
                format!(
                    "<span class=\"muted\">hex</span> <code>{}{}</code> ({} bytes)",
                    shown.join(" "),
                    if b.len() > 32 { " …" } else { "" },
                    b.len()
                )
            }
        },
    }
}

/// A payload as a block: text (newlines and tabs allowed) or a hex dump.
pub fn payload_block(p: Option<&[u8]>) -> String {
    match p {
        None => "<p class=\"muted\">(null payload)</p>".to_string(),
        Some(p) => match as_text(p, &['\n', '\t', '\r']) {
            Some(text) => format!(
                "<p>{} bytes, text:</p><pre id=\"payload\">{}</pre>",
                p.len(),
                esc(text)
            ),
            None => format!(
                "<p>{} bytes, binary (hex):</p><pre id=\"payload\">{}</pre>",
                p.len(),
                esc(&hex_dump(p, ""))
            ),
        },
    }
}

/// A table with a header row; cells are HTML already (escape text before).
pub fn table(id: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("<table id=\"{}\"><tr>", esc(id));
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            if !cell.is_empty()
                && cell
                    .trim_start_matches('-')
                    .chars()
                    .all(|c| c.is_ascii_digit())
            {
                let _ = write!(out, "<td class=\"n\">{cell}</td>");
            } else {
                let _ = write!(out, "<td>{cell}</td>");
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    out
}

/// A hidden form field.
pub fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
        esc(name),
        esc(value)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(url_enc("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn bytes_show_as_text_or_hex() {
        assert_eq!(inline_bytes(Some(b"k<1>"), 10), "k&lt;1&gt;");
        assert_eq!(inline_bytes(Some(b"abcdef"), 3), "abc…");
        assert!(inline_bytes(Some(&[0, 0xff]), 10).contains("00 ff</code> (2 bytes)"));
        assert!(inline_bytes(None, 10).contains("(null)"));
        assert!(payload_block(Some(b"line1\nline2<")).contains("line1\nline2&lt;"));
        let bin = payload_block(Some(&[0x7b, 0, 0xff]));
        assert!(
            bin.contains("binary (hex)") && bin.contains("7b 00 ff"),
            "{bin}"
        );
    }

    #[test]
    fn pages_say_whether_they_can_write() {
        assert!(page("T", false, "x").contains("read-only"));
        assert!(page("T", true, "x").contains("redrive allowed"));
        assert!(page("<b>", false, "").contains("&lt;b&gt;"));
        let t = table("t", &["a", "b"], &[vec!["1".into(), "x".into()]]);
        assert!(t.contains("<td class=\"n\">1</td><td>x</td>"), "{t}");
    }
}
