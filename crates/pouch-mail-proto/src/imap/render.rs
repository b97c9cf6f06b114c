//! FETCH data rendered from a stored message: ENVELOPE, BODYSTRUCTURE and
//! BODY[section] (RFC 3501, 7.4.2), and IMAP strings.
//!
//! The message is another member's, so it is untrusted input: every function
//! takes any bytes, renders something valid, and stops nesting
//! message/rfc822 parts at [`MAX_NESTING`] levels.

use imap_codec::imap_types::fetch::Section;
use std::num::NonZeroU32;

/// How deep BODYSTRUCTURE follows message/rfc822 parts inside each other;
/// deeper ones are described as plain text. Each level parses its part
/// again, so without a bound a message of nested parts would cost time
/// quadratic in its size and a stack frame per level.
pub const MAX_NESTING: usize = 8;
/// How deep BODYSTRUCTURE follows multiparts inside each other (one stack
/// frame per level); deeper ones are described as plain text.
pub const MAX_MULTIPART_DEPTH: usize = 64;
/// Nested messages parsed again for one BODYSTRUCTURE, in all: several
/// message/rfc822 parts on each of [`MAX_NESTING`] levels would otherwise
/// multiply (the fuzzer found a 501-byte message taking minutes).
pub const MAX_NESTED_PARSES: usize = 32;
/// Parts described in one BODYSTRUCTURE; the rest as plain text.
pub const MAX_PARTS_DESCRIBED: usize = 2000;

/// Addresses per ENVELOPE field whose display name is taken as written
/// (the rest use the parsed name).
const RAW_NAMES_PER_FIELD: usize = 64;

/// An IMAP string: quoted when short and plain, a literal otherwise, so
/// that no byte is ever re-encoded.
pub fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    let plain = bytes.len() < 256
        && bytes
            .iter()
            .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if plain {
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
    } else {
        out.extend_from_slice(format!("{{{}}}\r\n", bytes.len()).as_bytes());
        out.extend_from_slice(bytes);
    }
}

/// An IMAP nstring: NIL or a string.
pub fn nstring(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => string(out, b),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// An IMAP date-time (`dd-Mon-yyyy hh:mm:ss +0000`) from a Unix time.
pub fn imap_date(ts: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = ts.div_euclid(86_400);
    let secs = ts.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{day:02}-{}-{year:04} {:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Offset of the blank line that ends the header (the body starts after it).
pub fn header_end(raw: &[u8]) -> usize {
    raw.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| p + 2))
        .unwrap_or(raw.len())
}

/// Header fields (with their folded lines) whose names are, or are not, in `names`.
pub fn header_fields(header: &[u8], names: &[String], keep: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut taking = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if !line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            let listed = names
                .iter()
                .any(|n| n.as_bytes().eq_ignore_ascii_case(name));
            taking = listed == keep;
        }
        if taking {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The bytes of a MIME part by its path (1-based numbers): its header and body.
pub fn part<'a>(raw: &'a [u8], path: &[NonZeroU32]) -> Option<(&'a [u8], &'a [u8])> {
    let msg = mail_parser::MessageParser::default().parse(raw)?;
    let mut id = 0usize;
    for n in path {
        let p = msg.parts.get(id)?;
        match &p.body {
            mail_parser::PartType::Multipart(children) => {
                id = *children.get(n.get() as usize - 1)? as usize;
            }
            // A single part is part 1 of itself.
            _ if n.get() == 1 && id == 0 => {}
            _ => return None,
        }
    }
    let p = msg.parts.get(id)?;
    let (h0, b0, end) = (
        p.offset_header as usize,
        p.offset_body as usize,
        p.offset_end as usize,
    );
    if id == 0 {
        // The message itself: its body is everything after the header.
        let he = header_end(raw);
        return Some((&raw[..he], &raw[he..]));
    }
    Some((raw.get(h0..b0)?, raw.get(b0..end)?))
}

pub fn section_name(s: &Option<Section<'_>>) -> String {
    let part = |p: &imap_codec::imap_types::fetch::Part| {
        p.0.as_ref()
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(".")
    };
    let names =
        |f: &imap_codec::imap_types::core::Vec1<imap_codec::imap_types::core::AString<'_>>| {
            f.as_ref()
                .iter()
                .map(|a| String::from_utf8_lossy(a.as_ref()).to_ascii_uppercase())
                .collect::<Vec<_>>()
                .join(" ")
        };
    let prefixed = |p: &Option<imap_codec::imap_types::fetch::Part>, what: String| match p {
        Some(p) => format!("{}.{what}", part(p)),
        None => what,
    };
    match s {
        None => String::new(),
        Some(Section::Part(p)) => part(p),
        Some(Section::Header(p)) => prefixed(p, "HEADER".into()),
        Some(Section::HeaderFields(p, f)) => prefixed(p, format!("HEADER.FIELDS ({})", names(f))),
        Some(Section::HeaderFieldsNot(p, f)) => {
            prefixed(p, format!("HEADER.FIELDS.NOT ({})", names(f)))
        }
        Some(Section::Text(p)) => prefixed(p, "TEXT".into()),
        Some(Section::Mime(p)) => format!("{}.MIME", part(p)),
    }
}

/// The bytes a BODY[section] asks for.
pub fn section_bytes(raw: &[u8], s: &Option<Section<'_>>) -> Vec<u8> {
    let field_names =
        |f: &imap_codec::imap_types::core::Vec1<imap_codec::imap_types::core::AString<'_>>| {
            f.as_ref()
                .iter()
                .map(|a| String::from_utf8_lossy(a.as_ref()).into_owned())
                .collect::<Vec<_>>()
        };
    let scope = |p: &Option<imap_codec::imap_types::fetch::Part>| -> Option<(Vec<u8>, Vec<u8>)> {
        match p {
            None => {
                let he = header_end(raw);
                Some((raw[..he].to_vec(), raw[he..].to_vec()))
            }
            Some(p) => {
                let (h, b) = part(raw, p.0.as_ref())?;
                Some((h.to_vec(), b.to_vec()))
            }
        }
    };
    match s {
        None => raw.to_vec(),
        Some(Section::Part(p)) => part(raw, p.0.as_ref())
            .map(|(_, b)| b.to_vec())
            .unwrap_or_default(),
        Some(Section::Header(p)) => scope(p).map(|(h, _)| h).unwrap_or_default(),
        Some(Section::Text(p)) => scope(p).map(|(_, b)| b).unwrap_or_default(),
        Some(Section::Mime(p)) => part(raw, p.0.as_ref())
            .map(|(h, _)| h.to_vec())
            .unwrap_or_default(),
        Some(Section::HeaderFields(p, f)) => scope(p)
            .map(|(h, _)| header_fields(&h, &field_names(f), true))
            .unwrap_or_default(),
        Some(Section::HeaderFieldsNot(p, f)) => scope(p)
            .map(|(h, _)| header_fields(&h, &field_names(f), false))
            .unwrap_or_default(),
    }
}

/// ENVELOPE (RFC 3501 §7.4.2) from the message's own header fields.
pub fn envelope(out: &mut Vec<u8>, raw: &[u8]) {
    let head = &raw[..header_end(raw)];
    let msg = mail_parser::MessageParser::default().parse_headers(head);
    let raw_field = |name: &str| -> Option<Vec<u8>> {
        let fields = header_fields(head, &[name.to_string()], true);
        let line = &fields[..fields.len().saturating_sub(2)];
        let colon = line.iter().position(|&b| b == b':')?;
        let value: Vec<u8> = line[colon + 1..]
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        let value = value.trim_ascii().to_vec();
        Some(value)
    };
    // Each address field once, not once per address in it.
    let fields: std::collections::HashMap<&str, Option<Vec<u8>>> =
        ["From", "Sender", "Reply-To", "To", "Cc", "Bcc"]
            .into_iter()
            .map(|f| (f, raw_field(f)))
            .collect();
    // Display names as written (encoded words and all), as ENVELOPE wants them.
    let raw_name = |field: &str, email: &str| -> Option<Vec<u8>> {
        let value = fields.get(field)?.as_deref()?;
        let needle = format!("<{email}>").into_bytes();
        let at = value
            .windows(needle.len())
            .position(|w| w.eq_ignore_ascii_case(&needle))?;
        // Back to the previous comma or colon outside quotes.
        let mut start = 0;
        let mut quoted = false;
        for (i, &b) in value[..at].iter().enumerate() {
            match b {
                b'"' => quoted = !quoted,
                b',' | b':' if !quoted => start = i + 1,
                _ => {}
            }
        }
        let name = value[start..at].trim_ascii();
        let name = match name {
            [b'"', inner @ .., b'"'] => {
                let mut out = Vec::new();
                let mut escaped = false;
                for &b in inner {
                    if b == b'\\' && !escaped {
                        escaped = true;
                        continue;
                    }
                    escaped = false;
                    out.push(b);
                }
                out
            }
            other => other.to_vec(),
        };
        (!name.is_empty()).then_some(name)
    };
    let addresses = |out: &mut Vec<u8>, field: &str, a: Option<&mail_parser::Address<'_>>| {
        let list: Vec<&mail_parser::Addr<'_>> = match a {
            Some(mail_parser::Address::List(l)) => l.iter().collect(),
            Some(mail_parser::Address::Group(g)) => {
                g.iter().flat_map(|g| g.addresses.iter()).collect()
            }
            None => Vec::new(),
        };
        if list.is_empty() {
            out.extend_from_slice(b"NIL");
            return;
        }
        out.push(b'(');
        for (i, addr) in list.into_iter().enumerate() {
            out.push(b'(');
            let email = addr.address.as_deref().unwrap_or_default();
            // Finding a name as written costs a scan of the field: done for
            // the first addresses only, so a field of 100,000 addresses
            // costs what its parsing does.
            let written = if i < RAW_NAMES_PER_FIELD {
                raw_name(field, email)
            } else {
                None
            };
            let name = written.or_else(|| addr.name.as_deref().map(|n| n.as_bytes().to_vec()));
            nstring(out, name.as_deref());
            out.extend_from_slice(b" NIL ");
            let (local, host) = email.rsplit_once('@').unwrap_or((email, ""));
            string(out, local.as_bytes());
            out.push(b' ');
            string(out, host.as_bytes());
            out.push(b')');
        }
        out.push(b')');
    };
    let (from, sender, reply_to, to, cc, bcc) = match &msg {
        Some(m) => (m.from(), m.sender(), m.reply_to(), m.to(), m.cc(), m.bcc()),
        None => (None, None, None, None, None, None),
    };
    out.extend_from_slice(b"ENVELOPE (");
    nstring(out, raw_field("Date").as_deref());
    out.push(b' ');
    nstring(out, raw_field("Subject").as_deref());
    out.push(b' ');
    addresses(out, "From", from);
    out.push(b' ');
    addresses(
        out,
        if sender.is_some() { "Sender" } else { "From" },
        sender.or(from),
    );
    out.push(b' ');
    addresses(
        out,
        if reply_to.is_some() {
            "Reply-To"
        } else {
            "From"
        },
        reply_to.or(from),
    );
    out.push(b' ');
    addresses(out, "To", to);
    out.push(b' ');
    addresses(out, "Cc", cc);
    out.push(b' ');
    addresses(out, "Bcc", bcc);
    out.push(b' ');
    nstring(out, raw_field("In-Reply-To").as_deref());
    out.push(b' ');
    nstring(out, raw_field("Message-ID").as_deref());
    out.push(b')');
}

/// BODYSTRUCTURE (extensible) or BODY (basic), RFC 3501 §7.4.2, from the MIME tree.
pub fn body_structure(out: &mut Vec<u8>, raw: &[u8], extensible: bool) {
    let mut budget = Budget {
        parses: MAX_NESTED_PARSES,
        parts: MAX_PARTS_DESCRIBED,
    };
    body_structure_at(out, raw, extensible, 0, &mut budget)
}

/// What one BODYSTRUCTURE may cost in all, whatever the shape of the
/// message: nested messages parsed again, and parts described.
struct Budget {
    parses: usize,
    parts: usize,
}

fn body_structure_at(
    out: &mut Vec<u8>,
    raw: &[u8],
    extensible: bool,
    depth: usize,
    budget: &mut Budget,
) {
    let allowed = depth == 0 || (depth < MAX_NESTING && budget.parses > 0);
    let parsed = if allowed {
        if depth > 0 {
            budget.parses -= 1;
        }
        mail_parser::MessageParser::default().parse(raw)
    } else {
        None
    };
    let Some(msg) = parsed else {
        // Not MIME at all (or nested too deep): one text/plain body.
        plain_body(out, &raw[header_end(raw).min(raw.len())..]);
        return;
    };
    let mut visited = vec![false; msg.parts.len()];
    walk_structure(
        out,
        &msg,
        raw,
        0,
        extensible,
        depth,
        0,
        &mut visited,
        budget,
    );
}

/// A body described as one text/plain part of its bytes.
fn plain_body(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(
        format!(
            "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" {} {})",
            body.len(),
            body.iter().filter(|&&b| b == b'\n').count()
        )
        .as_bytes(),
    );
}

fn structure_params(out: &mut Vec<u8>, attrs: Option<&[mail_parser::Attribute<'_>]>) {
    match attrs {
        Some(a) if !a.is_empty() => {
            out.push(b'(');
            for (i, at) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                string(out, at.name.to_ascii_uppercase().as_bytes());
                out.push(b' ');
                string(out, at.value.as_bytes());
            }
            out.push(b')');
        }
        _ => out.extend_from_slice(b"NIL"),
    }
}

fn structure_disposition(out: &mut Vec<u8>, part: &mail_parser::MessagePart<'_>) {
    use mail_parser::MimeHeaders;
    match part.content_disposition() {
        Some(d) => {
            out.push(b'(');
            string(out, d.ctype().to_ascii_uppercase().as_bytes());
            out.push(b' ');
            structure_params(out, d.attributes());
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
}

#[allow(clippy::too_many_arguments)]
fn walk_structure(
    out: &mut Vec<u8>,
    msg: &mail_parser::Message<'_>,
    raw: &[u8],
    id: usize,
    extensible: bool,
    depth: usize,
    level: usize,
    visited: &mut [bool],
    budget: &mut Budget,
) {
    use mail_parser::MimeHeaders;
    let Some(part) = msg.parts.get(id) else {
        out.extend_from_slice(b"NIL");
        return;
    };
    // Each part is described once: a malformed message can make the
    // parser list one part under several parents, and walking such a graph
    // again and again grows exponentially with its depth.
    if std::mem::replace(&mut visited[id], true) || budget.parts == 0 {
        let (b0, end) = (part.offset_body as usize, part.offset_end as usize);
        plain_body(out, raw.get(b0..end.max(b0)).unwrap_or_default());
        return;
    }
    budget.parts -= 1;
    let ct = part.content_type();
    if let mail_parser::PartType::Multipart(children) = &part.body {
        if level >= MAX_MULTIPART_DEPTH || children.is_empty() {
            let (b0, end) = (part.offset_body as usize, part.offset_end as usize);
            plain_body(out, raw.get(b0..end.max(b0)).unwrap_or_default());
            return;
        }
        out.push(b'(');
        for c in children {
            walk_structure(
                out,
                msg,
                raw,
                *c as usize,
                extensible,
                depth,
                level + 1,
                visited,
                budget,
            );
        }
        out.push(b' ');
        let sub = ct.and_then(|c| c.subtype()).unwrap_or("mixed");
        string(out, sub.to_ascii_uppercase().as_bytes());
        if extensible {
            out.push(b' ');
            structure_params(out, ct.and_then(|c| c.attributes()));
            out.push(b' ');
            structure_disposition(out, part);
            out.extend_from_slice(b" NIL NIL");
        }
        out.push(b')');
        return;
    }
    let (ctype, sub) = match ct {
        Some(c) => (
            c.ctype().to_ascii_uppercase(),
            c.subtype().unwrap_or("plain").to_ascii_uppercase(),
        ),
        None => ("TEXT".into(), "PLAIN".into()),
    };
    let (b0, end) = if id == 0 {
        (header_end(raw), raw.len())
    } else {
        (part.offset_body as usize, part.offset_end as usize)
    };
    let body = raw.get(b0..end.max(b0)).unwrap_or_default();
    out.push(b'(');
    string(out, ctype.as_bytes());
    out.push(b' ');
    string(out, sub.as_bytes());
    out.push(b' ');
    match ct.and_then(|c| c.attributes()) {
        Some(a) if !a.is_empty() => structure_params(out, Some(a)),
        _ if ctype == "TEXT" => out.extend_from_slice(b"(\"CHARSET\" \"US-ASCII\")"),
        _ => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    let id_field = part.content_id().map(|c| format!("<{c}>"));
    nstring(out, id_field.as_deref().map(str::as_bytes));
    out.push(b' ');
    nstring(out, part.content_description().map(str::as_bytes));
    out.push(b' ');
    let encoding = part
        .content_transfer_encoding()
        .unwrap_or("7bit")
        .to_ascii_uppercase();
    string(out, encoding.as_bytes());
    out.extend_from_slice(format!(" {}", body.len()).as_bytes());
    let lines = body.iter().filter(|&&b| b == b'\n').count();
    if ctype == "MESSAGE" && sub == "RFC822" {
        out.push(b' ');
        envelope_fields(out, body);
        out.push(b' ');
        body_structure_at(out, body, extensible, depth + 1, budget);
        out.extend_from_slice(format!(" {lines}").as_bytes());
    } else if ctype == "TEXT" {
        out.extend_from_slice(format!(" {lines}").as_bytes());
    }
    if extensible {
        out.extend_from_slice(b" NIL ");
        structure_disposition(out, part);
        out.extend_from_slice(b" NIL NIL");
    }
    out.push(b')');
}

/// The parenthesised ENVELOPE value (without the ENVELOPE keyword).
fn envelope_fields(out: &mut Vec<u8>, raw: &[u8]) {
    let mut with_keyword = Vec::new();
    envelope(&mut with_keyword, raw);
    out.extend_from_slice(&with_keyword[b"ENVELOPE ".len()..]);
}
