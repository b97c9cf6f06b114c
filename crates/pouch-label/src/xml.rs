//! A label's STANAG 4774 XML form: what rides inside the encrypted envelope
//! (bound to the content by the sender's MLS signature) and, base64, in the
//! RFC 7444 `SIO-Label` header mail clients read.
//!
//! Pouch writes one canonical form (categories and values in the policy's
//! order, no whitespace between elements), so the same label is always the
//! same bytes — receivers compare the inner label with the outer one byte
//! for byte. Reading accepts any prefix for the STANAG 4774 namespace and
//! ignores elements it does not know, but takes nothing outside that
//! namespace for a label element, and is bounded in size and depth.

use crate::{Label, LabelPolicy, MAX_LABEL_BYTES};
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use std::collections::{BTreeMap, BTreeSet};

pub const STANAG_4774_NAMESPACE: &str = "urn:nato:stanag:4774:confidentialitymetadatalabel:1:0";

/// Elements deeper than this are refused (a label is four levels deep).
const MAX_DEPTH: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("the label XML is not well-formed: {0}")]
    Malformed(String),
    #[error("the label XML is not a STANAG 4774 originatorConfidentialityLabel: {0}")]
    NotALabel(String),
}

fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

impl Label {
    /// The canonical STANAG 4774 XML of this label under `policy`.
    pub fn to_xml(&self, policy: &LabelPolicy) -> String {
        let mut out = String::with_capacity(512);
        out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
        out.push_str(&format!(
            r#"<slab:originatorConfidentialityLabel xmlns:slab="{STANAG_4774_NAMESPACE}">"#
        ));
        out.push_str("<slab:ConfidentialityInformation>");
        match &policy.uri {
            Some(uri) => out.push_str(&format!(
                r#"<slab:PolicyIdentifier URI="{}">{}</slab:PolicyIdentifier>"#,
                escape(uri),
                escape(&self.policy)
            )),
            None => out.push_str(&format!(
                "<slab:PolicyIdentifier>{}</slab:PolicyIdentifier>",
                escape(&self.policy)
            )),
        }
        out.push_str(&format!(
            "<slab:Classification>{}</slab:Classification>",
            escape(&self.classification)
        ));
        for def in &policy.categories {
            let Some(values) = self.categories.get(&def.tag).filter(|v| !v.is_empty()) else {
                continue;
            };
            out.push_str(&format!(
                r#"<slab:Category TagName="{}" Type="{}""#,
                escape(&def.tag),
                def.kind.as_xml()
            ));
            if let Some(uri) = &def.uri {
                out.push_str(&format!(r#" URI="{}""#, escape(uri)));
            }
            out.push('>');
            for v in def.values.iter().filter(|v| values.contains(*v)) {
                out.push_str(&format!(
                    "<slab:GenericValue>{}</slab:GenericValue>",
                    escape(v)
                ));
            }
            out.push_str("</slab:Category>");
        }
        out.push_str("</slab:ConfidentialityInformation>");
        out.push_str(&format!(
            "<slab:CreationDateTime>{}</slab:CreationDateTime>",
            rfc3339(self.created)
        ));
        out.push_str("</slab:originatorConfidentialityLabel>");
        out
    }

    /// Reads a STANAG 4774 label leniently (any prefix, whitespace,
    /// unknown elements). Deployments exchange labels only through
    /// [`LabelPolicy::read_xml`], which also requires the canonical bytes.
    pub fn from_xml(xml: &str) -> Result<Label, crate::LabelError> {
        if xml.len() > MAX_LABEL_BYTES {
            return Err(crate::LabelError::TooLong);
        }
        Ok(read(xml)?)
    }
}

fn read(xml: &str) -> Result<Label, XmlError> {
    let malformed = |e: &dyn std::fmt::Display| XmlError::Malformed(e.to_string());
    let mut reader = quick_xml::NsReader::from_str(xml);
    reader.config_mut().trim_text(true);
    // The path of STANAG 4774 element names from the root; None for others.
    let mut path: Vec<Option<String>> = Vec::new();
    let mut policy = None;
    let mut classification = None;
    let mut created = None;
    let mut categories: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current_tag: Option<String> = None;
    let mut saw_root = false;
    // The text of the element being read (its pieces come as text,
    // references and CDATA).
    let mut text = String::new();
    loop {
        let (resolved, event) = reader.read_resolved_event().map_err(|e| malformed(&e))?;
        let ours = matches!(resolved, ResolveResult::Bound(ns) if ns.as_ref() == STANAG_4774_NAMESPACE.as_bytes());
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                let local = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
                let name = ours.then_some(local);
                if path.is_empty() {
                    if name.as_deref() != Some("originatorConfidentialityLabel") {
                        return Err(XmlError::NotALabel(
                            "the root element is not slab:originatorConfidentialityLabel".into(),
                        ));
                    }
                    saw_root = true;
                }
                let is_category = name.as_deref() == Some("Category")
                    && path.last().and_then(|p| p.as_deref()) == Some("ConfidentialityInformation");
                if is_category {
                    let mut tag = None;
                    for a in start.attributes() {
                        let a = a.map_err(|e| malformed(&e))?;
                        if a.key.local_name().as_ref() == b"TagName" {
                            tag = Some(
                                a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                    .map_err(|e| malformed(&e))?
                                    .into_owned(),
                            );
                        }
                    }
                    let tag = tag.ok_or_else(|| {
                        XmlError::NotALabel("a Category without a TagName".into())
                    })?;
                    categories.entry(tag.clone()).or_default();
                    current_tag = Some(tag);
                }
                if matches!(event, Event::Start(_)) {
                    text.clear();
                    path.push(name);
                    if path.len() > MAX_DEPTH {
                        return Err(XmlError::NotALabel("elements nested too deep".into()));
                    }
                } else if is_category {
                    current_tag = None;
                }
            }
            Event::End(_) => {
                let here: Vec<Option<&str>> = path.iter().map(|p| p.as_deref()).collect();
                let text = std::mem::take(&mut text);
                match here.as_slice() {
                    [
                        Some("originatorConfidentialityLabel"),
                        Some("ConfidentialityInformation"),
                        Some("PolicyIdentifier"),
                    ] => policy = Some(text),
                    [
                        Some("originatorConfidentialityLabel"),
                        Some("ConfidentialityInformation"),
                        Some("Classification"),
                    ] => classification = Some(text),
                    [
                        Some("originatorConfidentialityLabel"),
                        Some("ConfidentialityInformation"),
                        Some("Category"),
                        Some("GenericValue"),
                    ] => {
                        if let Some(tag) = &current_tag {
                            categories.entry(tag.clone()).or_default().insert(text);
                        }
                    }
                    [
                        Some("originatorConfidentialityLabel"),
                        Some("CreationDateTime"),
                    ] => created = Some(text),
                    _ => {}
                }
                if let Some(Some(name)) = path.pop()
                    && name == "Category"
                {
                    current_tag = None;
                }
            }
            Event::Text(t) => {
                text.push_str(&t.decode().map_err(|e| malformed(&e))?);
                if text.len() > MAX_LABEL_BYTES {
                    return Err(XmlError::NotALabel("a value is too long".into()));
                }
            }
            Event::CData(t) => {
                text.push_str(&t.decode().map_err(|e| malformed(&e))?);
            }
            // Only XML's own entities and character references: a label
            // has no use for a DTD's (and an expansion bomb no chance).
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref().map_err(|e| malformed(&e))? {
                    Some(c) => c,
                    None => match &*r {
                        b"amp" => '&',
                        b"lt" => '<',
                        b"gt" => '>',
                        b"quot" => '"',
                        b"apos" => '\'',
                        other => {
                            return Err(XmlError::Malformed(format!(
                                "the entity &{}; is not XML's own",
                                String::from_utf8_lossy(other)
                            )));
                        }
                    },
                };
                text.push(c);
            }
            Event::DocType(_) => {
                return Err(XmlError::Malformed("a label has no DOCTYPE".into()));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_root {
        return Err(XmlError::NotALabel("no label element".into()));
    }
    let created = match created {
        Some(t) => time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
            .map_err(|_| XmlError::NotALabel(format!("CreationDateTime '{t}' is not RFC 3339")))?
            .unix_timestamp(),
        None => return Err(XmlError::NotALabel("no CreationDateTime".into())),
    };
    Ok(Label {
        policy: policy.ok_or_else(|| XmlError::NotALabel("no PolicyIdentifier".into()))?,
        classification: classification
            .ok_or_else(|| XmlError::NotALabel("no Classification".into()))?,
        categories: categories
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect(),
        created,
    })
}
