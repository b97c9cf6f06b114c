//! The RFC 7444 `SIO-Label` header field: how a label reaches mail clients
//! that know nothing of Pouch, and how one composed in them comes back.
//!
//! Pouch writes `type=":xml"`, the label's canonical STANAG 4774 XML in
//! base64, and the display hints `marking`, `fgcolor`, `bgcolor`. It reads
//! the same form (folded or not, parameters in any order, names in any
//! case); the XML is then read only through [`LabelPolicy::read_xml`], so a
//! header says exactly one label or is refused.

use crate::{Label, LabelError, LabelPolicy, MAX_LABEL_BYTES};
use base64::Engine;

/// The header field's name.
pub const HEADER: &str = "SIO-Label";

/// Why an `SIO-Label` value cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SioError {
    #[error("the SIO-Label header is not type=\":xml\" (Pouch reads STANAG 4774 XML labels only)")]
    NotXml,
    #[error("the SIO-Label header has no label")]
    NoLabel,
    #[error("the SIO-Label header's label is not base64")]
    NotBase64,
    #[error("the SIO-Label header is longer than {} bytes", 4 * MAX_LABEL_BYTES)]
    TooLong,
    #[error("the SIO-Label header: {0}")]
    Label(#[from] LabelError),
}

/// The header's value for `label` (without the field name), folded into
/// lines a mail client accepts.
pub fn header_value(label: &Label, policy: &LabelPolicy) -> String {
    let xml = label.to_xml(policy);
    let b64 = base64::engine::general_purpose::STANDARD.encode(xml.as_bytes());
    let mut value = String::from("type=\":xml\";\r\n label=\"");
    for (i, chunk) in b64.as_bytes().chunks(64).enumerate() {
        if i > 0 {
            value.push_str("\r\n ");
        }
        value.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
    }
    value.push('"');
    let marking = policy.marking(label).replace(['"', '\\'], "");
    value.push_str(&format!(";\r\n marking=\"{marking}\""));
    if let Some(c) = policy.classification(&label.classification) {
        if let Some(fg) = &c.fgcolor {
            value.push_str(&format!("; fgcolor=\"{fg}\""));
        }
        if let Some(bg) = &c.bgcolor {
            value.push_str(&format!("; bgcolor=\"{bg}\""));
        }
    }
    value
}

/// The label an `SIO-Label` value carries, read under `policy`.
pub fn read_header(value: &str, policy: &LabelPolicy) -> Result<Label, SioError> {
    if value.len() > 4 * MAX_LABEL_BYTES {
        return Err(SioError::TooLong);
    }
    let mut kind = None;
    let mut label = None;
    for param in split_params(value) {
        let Some((name, v)) = param.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"');
        match name.trim().to_ascii_lowercase().as_str() {
            "type" => kind = Some(v.to_string()),
            "label" => label = Some(v.to_string()),
            _ => {}
        }
    }
    if kind.as_deref() != Some(":xml") {
        return Err(SioError::NotXml);
    }
    let b64: String = label
        .ok_or(SioError::NoLabel)?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let xml = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| SioError::NotBase64)?;
    let xml = String::from_utf8(xml).map_err(|_| SioError::NotBase64)?;
    Ok(policy.read_xml(&xml)?)
}

/// `a=1; b="x;y"` → `a=1`, `b="x;y"`: semicolons inside quotes do not split.
fn split_params(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ';' if !quoted => out.push(std::mem::take(&mut current)),
            '\r' | '\n' => {}
            _ => current.push(c),
        }
    }
    out.push(current);
    out
}

/// The subject with the label's marking in front, as `[SECRET] …`, unless
/// the subject already begins with it (a reply keeps one marking).
pub fn marked_subject(subject: &str, label: &Label, policy: &LabelPolicy) -> String {
    let mark = format!("[{}]", policy.marking(label));
    if subject.trim_start().starts_with(&mark) {
        subject.to_string()
    } else if subject.is_empty() {
        mark
    } else {
        format!("{mark} {subject}")
    }
}

/// The subject without the reply and forward prefixes mail clients put
/// before it, in any language and any number ("FW: RE: ", "Odp: ", "PŘ: ",
/// "AW: ", "SV: "): each a word of at most five letters and a colon.
pub fn strip_reply_prefixes(subject: &str) -> &str {
    let mut rest = subject.trim_start();
    for _ in 0..16 {
        let Some((word, after)) = rest.split_once(':') else {
            break;
        };
        let letters = word.chars().count();
        if letters == 0 || letters > 5 || !word.chars().all(char::is_alphabetic) {
            break;
        }
        rest = after.trim_start();
    }
    rest
}

/// The label a subject's leading `[MARKING]` names (after any reply or
/// forward prefixes). `Ok(None)`: the subject names none (it does not begin
/// with a bracket, or the bracket does not begin with one of the policy's
/// classifications, as in "[draft]"); an error: it begins with a
/// classification but does not read as a label ("[SECRET//REL TO XXX]") —
/// refused rather than taken as the default.
pub fn subject_label(
    subject: &str,
    policy: &LabelPolicy,
    now: i64,
) -> Result<Option<Label>, LabelError> {
    let rest = strip_reply_prefixes(subject);
    let Some(inner) = rest.strip_prefix('[') else {
        return Ok(None);
    };
    let Some(end) = inner.find(']') else {
        return Ok(None);
    };
    let text = inner[..end].trim();
    if let Ok(label) = policy.parse(text, now) {
        return Ok(Some(label));
    }
    let upper = text.to_uppercase();
    match policy.parse(&upper, now) {
        Ok(label) => Ok(Some(label)),
        Err(e) => {
            let names_a_level = policy.classifications.iter().any(|c| {
                let m = c.marking().to_uppercase();
                upper == m
                    || upper.starts_with(&format!("{m}/"))
                    || upper.starts_with(&format!("{m} "))
            });
            if names_a_level { Err(e) } else { Ok(None) }
        }
    }
}

/// Where a message's header section ends (after its blank line), if it
/// ends within `raw`.
pub fn head_end(raw: &[u8]) -> Option<usize> {
    // One pass, stopping at the first blank line (CRLF or bare LF): the
    // bytes after it may be a whole mail's body.
    let mut from = 0;
    while let Some(i) = raw[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| from + i)
    {
        match &raw[i + 1..] {
            [b'\n', ..] => return Some(i + 2),
            [b'\r', b'\n', ..] if i > 0 && raw[i - 1] == b'\r' => return Some(i + 3),
            _ => from = i + 1,
        }
    }
    None
}

/// The header section (`head`, up to and with its blank line) as mail
/// clients are shown it: every `SIO-Label` field the sender wrote replaced
/// by one for `label` (the label Pouch verified), and, with
/// `subject_marking`, the subject prefixed with the marking unless it
/// already carries it.
pub fn label_head(
    head: &[u8],
    label: &Label,
    policy: &LabelPolicy,
    subject_marking: bool,
) -> Vec<u8> {
    HeadMarking::new(label, policy).apply(head, subject_marking)
}

/// What [`label_head`] writes for one label, worked out once: a receiver
/// shows many mails under the same few labels.
#[derive(Debug, Clone)]
pub struct HeadMarking {
    /// `[MARKING]`, the subject's prefix.
    mark: String,
    /// The `SIO-Label` field's value.
    field: String,
}

impl HeadMarking {
    pub fn new(label: &Label, policy: &LabelPolicy) -> Self {
        HeadMarking {
            mark: format!("[{}]", policy.marking(label)),
            field: header_value(label, policy),
        }
    }

    /// `head` as [`label_head`] shows it.
    pub fn apply(&self, head: &[u8], subject_marking: bool) -> Vec<u8> {
        let mark = &self.mark;
        let text = String::from_utf8_lossy(head);
        let body_start = text.trim_end_matches(['\r', '\n']).len();
        let fields_text = &text[..body_start];
        // Header fields with their folded lines.
        let mut fields: Vec<String> = Vec::new();
        for line in fields_text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.starts_with([' ', '\t']) && !fields.is_empty() {
                let last = fields.last_mut().expect("not empty");
                last.push_str("\r\n");
                last.push_str(line);
            } else {
                fields.push(line.to_string());
            }
        }
        let mut out = String::with_capacity(head.len() + self.field.len() + 64);
        let mut had_subject = false;
        for f in fields.iter().filter(|f| !f.is_empty()) {
            let name = f.split(':').next().unwrap_or_default().trim();
            if name.eq_ignore_ascii_case(HEADER) {
                continue;
            }
            // Every Subject field (a mail client may show either of two).
            if subject_marking && name.eq_ignore_ascii_case("subject") {
                had_subject = true;
                let value = f
                    .split_once(':')
                    .map(|(_, v)| v.trim_start())
                    .unwrap_or_default();
                if strip_reply_prefixes(value).starts_with(mark.as_str()) {
                    out.push_str(f);
                } else {
                    out.push_str(&format!("Subject: {mark} {value}"));
                }
            } else {
                out.push_str(f);
            }
            out.push_str("\r\n");
        }
        if subject_marking && !had_subject {
            out.push_str(&format!("Subject: {mark}\r\n"));
        }
        out.push_str(HEADER);
        out.push_str(": ");
        out.push_str(&self.field);
        out.push_str("\r\n\r\n");
        out.into_bytes()
    }
}
