//! The label policy file: what a ministry's security officer writes and
//! signs (`pouch security policy publish FILE`), in the shape of an Open XML
//! SPIF, as TOML. Unknown keys are refused, and the file is checked whole
//! (ranks distinct, every name known, the default and the ceiling
//! classifications of this policy), so a typo cannot weaken a rule.

use crate::{Clearance, Label, LabelError, MAX_LABEL_BYTES, Refusal};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

/// A policy, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelPolicy {
    /// STANAG 4774 `PolicyIdentifier`.
    pub id: String,
    /// Its `URI` attribute, e.g. `urn:oid:…`.
    pub uri: Option<String>,
    /// By rank, lowest first.
    pub classifications: Vec<Classification>,
    pub categories: Vec<CategoryDef>,
    /// The label of mail sent without one.
    pub default_label: String,
    /// The highest classification this deployment is accredited for.
    pub ceiling: String,
    /// The same classification's marking under other policies (EU, NATO,
    /// an ally's national policy).
    pub equivalences: Vec<Equivalence>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Classification {
    /// The name labels use (`Classification` in the XML).
    pub name: String,
    /// Higher is more sensitive; distinct.
    pub rank: u32,
    /// What people read (defaults to the name).
    #[serde(default)]
    pub marking: Option<String>,
    /// Display colours (`#rrggbb`), for mail clients and terminals.
    #[serde(default)]
    pub fgcolor: Option<String>,
    #[serde(default)]
    pub bgcolor: Option<String>,
}

impl Classification {
    pub fn marking(&self) -> &str {
        self.marking.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CategoryType {
    /// The reader must hold every value the label carries.
    Restrictive,
    /// The reader must hold at least one value the label carries.
    Permissive,
    /// Carried and shown, not enforced.
    Informative,
}

impl CategoryType {
    /// As STANAG 4774 writes it.
    pub fn as_xml(self) -> &'static str {
        match self {
            CategoryType::Restrictive => "RESTRICTIVE",
            CategoryType::Permissive => "PERMISSIVE",
            CategoryType::Informative => "INFORMATIVE",
        }
    }

    pub fn from_xml(s: &str) -> Option<CategoryType> {
        [
            CategoryType::Restrictive,
            CategoryType::Permissive,
            CategoryType::Informative,
        ]
        .into_iter()
        .find(|t| t.as_xml() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryDef {
    /// `TagName` in the XML, and `TAG:VALUE` in typed labels.
    pub tag: String,
    #[serde(rename = "type")]
    pub kind: CategoryType,
    /// How the category reads in a marking before its values, e.g.
    /// `REL TO`; without one, each value stands alone (`//TREATY`).
    #[serde(default)]
    pub marking: Option<String>,
    #[serde(default)]
    pub uri: Option<String>,
    pub values: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Equivalence {
    /// This policy's classification…
    pub classification: String,
    /// …is, under that policy,…
    pub policy: String,
    /// …marked so.
    pub marking: String,
}

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    policy: PolicyHeader,
    #[serde(default, rename = "classification")]
    classifications: Vec<Classification>,
    #[serde(default, rename = "category")]
    categories: Vec<CategoryDef>,
    #[serde(default, rename = "equivalence")]
    equivalences: Vec<Equivalence>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyHeader {
    id: String,
    #[serde(default)]
    uri: Option<String>,
    default: String,
    ceiling: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    Toml(String),
    #[error("{0}")]
    Invalid(String),
}

/// The separator between a marking's parts (`SECRET//REL TO CZE, SVK`).
const PART: &str = "//";

/// Names and values: printable, no separators, short.
fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.trim() == s
        && !s.contains(PART)
        && !s.contains(',')
        && !s.contains(':')
        && s.chars()
            .all(|c| !c.is_control() && c != '<' && c != '&' && c != '"')
}

fn colour_ok(s: &str) -> bool {
    s.len() == 7 && s.starts_with('#') && s[1..].chars().all(|c| c.is_ascii_hexdigit())
}

impl LabelPolicy {
    /// Reads and checks a policy file's text.
    pub fn from_toml(text: &str) -> Result<LabelPolicy, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| {
            PolicyError::Toml(format!(
                "{}; fix the policy file",
                e.message().replace('\n', " ")
            ))
        })?;
        let invalid = |m: String| Err(PolicyError::Invalid(m));
        if !name_ok(&file.policy.id) {
            return invalid(format!(
                "policy.id '{}' is not a usable name",
                file.policy.id
            ));
        }
        let mut classifications = file.classifications;
        if classifications.is_empty() {
            return invalid("the policy names no classification".into());
        }
        classifications.sort_by_key(|c| c.rank);
        let mut names = BTreeSet::new();
        for (i, c) in classifications.iter().enumerate() {
            if !name_ok(&c.name) || !name_ok(c.marking()) {
                return invalid(format!("classification '{}' is not a usable name", c.name));
            }
            if i > 0 && classifications[i - 1].rank == c.rank {
                return invalid(format!(
                    "classifications '{}' and '{}' have the same rank {}",
                    classifications[i - 1].name,
                    c.name,
                    c.rank
                ));
            }
            // A name or marking may stand for one classification only:
            // names and markings share one space (a label names either).
            let mut spellings = vec![c.name.clone()];
            if c.marking() != c.name {
                spellings.push(c.marking().to_string());
            }
            for spelling in spellings {
                if !names.insert(spelling) {
                    return invalid(format!(
                        "classification '{}': its name or marking is another's",
                        c.name
                    ));
                }
            }
            for colour in [&c.fgcolor, &c.bgcolor].into_iter().flatten() {
                if !colour_ok(colour) {
                    return invalid(format!(
                        "classification '{}': colour '{colour}' is not #rrggbb",
                        c.name
                    ));
                }
            }
        }
        let mut tags = BTreeSet::new();
        for def in &file.categories {
            if !name_ok(&def.tag) || !tags.insert(def.tag.clone()) {
                return invalid(format!("category '{}' is unusable or twice", def.tag));
            }
            if def.values.is_empty() {
                return invalid(format!("category '{}' has no values", def.tag));
            }
            let mut seen = BTreeSet::new();
            for v in &def.values {
                if !name_ok(v) || !seen.insert(v) {
                    return invalid(format!(
                        "category '{}': value '{v}' is unusable or twice",
                        def.tag
                    ));
                }
            }
            if let Some(m) = &def.marking
                && !name_ok(m)
            {
                return invalid(format!("category '{}': marking '{m}' is unusable", def.tag));
            }
        }
        // Every part of a marking must read one way only.
        let mut lone_values = BTreeSet::new();
        for def in file.categories.iter().filter(|d| d.marking.is_none()) {
            for v in &def.values {
                if !lone_values.insert(v.clone()) {
                    return invalid(format!(
                        "value '{v}' stands alone in two categories: give one a marking"
                    ));
                }
            }
        }
        let category_markings: Vec<&String> = file
            .categories
            .iter()
            .filter_map(|d| d.marking.as_ref())
            .collect();
        for m in &category_markings {
            let clash = category_markings
                .iter()
                .any(|o| o != m && (o.starts_with(&format!("{m} ")) || *o == *m))
                || lone_values
                    .iter()
                    .any(|v| v == *m || v.starts_with(&format!("{m} ")));
            if clash {
                return invalid(format!(
                    "category marking '{m}' begins another marking or a value: markings must read one way"
                ));
            }
        }
        if file
            .categories
            .iter()
            .any(|d| names.contains(&d.tag) || d.values.iter().any(|v| names.contains(v)))
        {
            return invalid("a category or value has a classification's name".into());
        }
        let policy = LabelPolicy {
            id: file.policy.id,
            uri: file.policy.uri,
            classifications,
            categories: file.categories,
            default_label: file.policy.default,
            ceiling: file.policy.ceiling,
            equivalences: file.equivalences,
        };
        if policy.classification(&policy.ceiling).is_none() {
            return invalid(format!(
                "policy.ceiling '{}' is not one of the classifications",
                policy.ceiling
            ));
        }
        let default = policy
            .parse(&policy.default_label, 0)
            .map_err(|e| PolicyError::Invalid(format!("policy.default: {e}")))?;
        if policy.within_ceiling(&default).is_err() {
            return invalid("policy.default is above policy.ceiling".into());
        }
        for e in &policy.equivalences {
            if policy.classification(&e.classification).is_none() {
                return invalid(format!(
                    "equivalence for unknown classification '{}'",
                    e.classification
                ));
            }
        }
        Ok(policy)
    }

    /// A classification by its name or its marking.
    pub fn classification(&self, name: &str) -> Option<&Classification> {
        self.classifications
            .iter()
            .find(|c| c.name == name)
            .or_else(|| self.classifications.iter().find(|c| c.marking() == name))
    }

    pub fn category(&self, tag: &str) -> Option<&CategoryDef> {
        self.categories.iter().find(|c| c.tag == tag)
    }

    fn classification_names(&self) -> String {
        self.classifications
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The default label, made at `now`.
    pub fn default_label(&self, now: i64) -> Label {
        self.parse(&self.default_label, now)
            .expect("checked when the policy was read")
    }

    /// Reads a label as people write it: a marking (`SECRET//REL TO CZE,
    /// SVK//TREATY`: the classification, then each category's marking and
    /// values, or a value of a category without a marking), or typed
    /// (`SECRET REL:CZE,SVK COMPARTMENT:TREATY`). Surrounding brackets (a
    /// subject marking, `[SECRET]`) are allowed.
    pub fn parse(&self, text: &str, now: i64) -> Result<Label, LabelError> {
        if text.len() > MAX_LABEL_BYTES {
            return Err(LabelError::TooLong);
        }
        let text = text.trim();
        let text = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text)
            .trim();
        if text.is_empty() {
            return Err(LabelError::Empty);
        }
        let typed_first: String;
        let (first, rest): (&str, Vec<String>) = if text.contains(PART) {
            let mut parts = text.split(PART).map(str::trim);
            let first = parts.next().unwrap_or_default();
            (first, parts.map(str::to_string).collect())
        } else {
            // Typed: the classification may hold spaces ("TOP SECRET"), so
            // the TAG:VALUES words are taken from the end.
            let words: Vec<&str> = text.split_whitespace().collect();
            let split = words
                .iter()
                .position(|w| w.contains(':'))
                .unwrap_or(words.len());
            typed_first = words[..split].join(" ");
            let tail: Vec<String> = words[split..].iter().map(|w| w.to_string()).collect();
            (typed_first.as_str(), tail)
        };
        let class = self.classification(first).ok_or_else(|| {
            LabelError::UnknownClassification(first.to_string(), self.classification_names())
        })?;
        let mut categories: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for part in rest.iter().filter(|p| !p.is_empty()) {
            let (def, values) = self.category_part(part)?;
            if values.is_empty() {
                // "REL TO" alone would read as no restriction at all.
                return Err(LabelError::UnknownCategory(format!(
                    "{part} (no values: name at least one)"
                )));
            }
            if def.kind == CategoryType::Permissive && categories.contains_key(&def.tag) {
                return Err(LabelError::UnknownCategory(format!(
                    "{part} ({} given twice: list its values once)",
                    def.tag
                )));
            }
            let set = categories.entry(def.tag.clone()).or_default();
            for v in values {
                if !def.values.contains(&v) {
                    return Err(LabelError::UnknownValue {
                        tag: def.tag.clone(),
                        value: v,
                    });
                }
                set.insert(v);
            }
        }
        Ok(Label {
            policy: self.id.clone(),
            classification: class.name.clone(),
            categories,
            created: now,
        })
    }

    /// One part after the classification: `REL TO A, B`, `TAG:A,B`, or a
    /// lone value of a category without a marking.
    fn category_part<'a>(
        &'a self,
        part: &str,
    ) -> Result<(&'a CategoryDef, Vec<String>), LabelError> {
        let list = |s: &str| -> Vec<String> {
            s.split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect()
        };
        if let Some((tag, values)) = part.split_once(':')
            && let Some(def) = self.category(tag.trim())
        {
            return Ok((def, list(values)));
        }
        for def in &self.categories {
            if let Some(m) = &def.marking
                && let Some(values) = part.strip_prefix(m.as_str())
                && (values.is_empty() || values.starts_with(' '))
            {
                return Ok((def, list(values)));
            }
        }
        for def in self.categories.iter().filter(|d| d.marking.is_none()) {
            if def.values.iter().any(|v| v == part) {
                return Ok((def, vec![part.to_string()]));
            }
        }
        Err(LabelError::UnknownCategory(part.to_string()))
    }

    /// The label as people read it; [`Self::parse`] reads it back.
    pub fn marking(&self, label: &Label) -> String {
        let mut out = self
            .classification(&label.classification)
            .map(|c| c.marking().to_string())
            .unwrap_or_else(|| label.classification.clone());
        // In the policy's order, so that a marking is always written alike.
        for def in &self.categories {
            let Some(values) = label.categories.get(&def.tag).filter(|v| !v.is_empty()) else {
                continue;
            };
            let ordered: Vec<&str> = def
                .values
                .iter()
                .filter(|v| values.contains(*v))
                .map(String::as_str)
                .collect();
            match &def.marking {
                Some(m) => {
                    out.push_str(PART);
                    out.push_str(m);
                    out.push(' ');
                    out.push_str(&ordered.join(", "));
                }
                None => {
                    for v in ordered {
                        out.push_str(PART);
                        out.push_str(v);
                    }
                }
            }
        }
        out
    }

    /// Whether this policy can replace `older` without making mail
    /// labelled under `older` unreadable: the same identifier and URI,
    /// every classification kept in the same order, every category kept
    /// (same tag, type and URI, in the same order) with every value in the
    /// same order. New levels, categories and values may be added. Mail in
    /// queues and in people's stores carries labels in the canonical form
    /// the older policy wrote; this is what keeps them reading the same.
    pub fn keeps(&self, older: &LabelPolicy) -> Result<(), String> {
        if self.id != older.id || self.uri != older.uri {
            return Err(format!(
                "it changes the policy identifier or URI (from {}): labelled mail already sent would no longer read; publish a new policy only as an extension",
                older.id
            ));
        }
        let rank = |p: &LabelPolicy, name: &str| p.classification(name).map(|c| c.rank);
        for (i, a) in older.classifications.iter().enumerate() {
            let Some(ra) = rank(self, &a.name) else {
                return Err(format!("it drops the classification {}", a.name));
            };
            for b in &older.classifications[i + 1..] {
                match rank(self, &b.name) {
                    Some(rb) if (rb > ra) == (b.rank > a.rank) => {}
                    Some(_) => {
                        return Err(format!("it changes the order of {} and {}", a.name, b.name));
                    }
                    None => return Err(format!("it drops the classification {}", b.name)),
                }
            }
        }
        let mut from = 0;
        for old in &older.categories {
            let Some(pos) = self.categories[from..]
                .iter()
                .position(|c| c.tag == old.tag)
            else {
                return Err(format!(
                    "it drops the category {} or changes the categories' order",
                    old.tag
                ));
            };
            let new = &self.categories[from + pos];
            from += pos + 1;
            if new.kind != old.kind || new.uri != old.uri {
                return Err(format!(
                    "it changes the type or URI of the category {}",
                    old.tag
                ));
            }
            let mut at = 0;
            for v in &old.values {
                match new.values[at..].iter().position(|n| n == v) {
                    Some(p) => at += p + 1,
                    None => {
                        return Err(format!(
                            "it drops {} {v} or changes the order of its values",
                            old.tag
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether mail with this label may enter this deployment at all.
    pub fn within_ceiling(&self, label: &Label) -> Result<(), Refusal> {
        let rank = self.classification(&label.classification).map(|c| c.rank);
        let ceiling = self.classification(&self.ceiling).map(|c| c.rank);
        match (rank, ceiling) {
            (Some(r), Some(c)) if r <= c => Ok(()),
            _ => Err(Refusal::AboveCeiling {
                label: self.marking(label),
                ceiling: self.ceiling.clone(),
            }),
        }
    }

    /// Whether a reader with `clearance` may receive mail with `label` at
    /// `now` (see the crate's documentation for the rule).
    pub fn check(
        &self,
        label: &Label,
        clearance: Option<&Clearance>,
        now: i64,
    ) -> Result<(), Refusal> {
        // Fail closed on what this policy does not know.
        self.validate(label)
            .map_err(|e| Refusal::InvalidLabel(e.to_string()))?;
        self.within_ceiling(label)?;
        let clearance = clearance.ok_or(Refusal::NoClearance)?;
        if clearance.revoked {
            return Err(Refusal::Revoked);
        }
        if clearance.policy != label.policy {
            return Err(Refusal::OtherPolicy {
                label: label.policy.clone(),
                clearance: clearance.policy.clone(),
            });
        }
        if clearance.expires.is_some_and(|t| now >= t) {
            return Err(Refusal::Expired);
        }
        let rank = |c: &str| self.classification(c).map(|c| c.rank);
        match (
            rank(&label.classification),
            rank(&clearance.max_classification),
        ) {
            (Some(l), Some(c)) if l <= c => {}
            _ => {
                return Err(Refusal::ClearanceTooLow {
                    cleared: clearance.max_classification.clone(),
                    label: self.marking(label),
                });
            }
        }
        for def in &self.categories {
            let Some(needed) = label.categories.get(&def.tag).filter(|v| !v.is_empty()) else {
                continue;
            };
            let held = clearance.categories.get(&def.tag);
            let holds = |v: &String| held.is_some_and(|h| h.contains(v));
            match def.kind {
                CategoryType::Restrictive => {
                    if let Some(missing) = needed.iter().find(|v| !holds(v)) {
                        return Err(Refusal::MissingRestrictive {
                            tag: def.marking.clone().unwrap_or_else(|| def.tag.clone()),
                            value: missing.clone(),
                        });
                    }
                }
                CategoryType::Permissive => {
                    if !needed.iter().any(holds) {
                        return Err(Refusal::NotReleasable {
                            tag: def.marking.clone().unwrap_or_else(|| def.tag.clone()),
                            allowed: needed.iter().cloned().collect::<Vec<_>>().join(", "),
                        });
                    }
                }
                CategoryType::Informative => {}
            }
        }
        Ok(())
    }

    /// A clearance as the officer types it: `--max LEVEL` and
    /// `TAG:VALUE[,VALUE]` (or marking) parts, checked against the policy.
    pub fn clearance(
        &self,
        max: &str,
        categories: &[String],
        expires: Option<i64>,
    ) -> Result<Clearance, LabelError> {
        let class = self.classification(max).ok_or_else(|| {
            LabelError::UnknownClassification(max.to_string(), self.classification_names())
        })?;
        let mut held: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for part in categories {
            let (def, values) = self.category_part(part.trim())?;
            for v in values {
                if !def.values.contains(&v) {
                    return Err(LabelError::UnknownValue {
                        tag: def.tag.clone(),
                        value: v,
                    });
                }
                held.entry(def.tag.clone()).or_default().insert(v);
            }
        }
        Ok(Clearance {
            policy: self.id.clone(),
            max_classification: class.name.clone(),
            categories: held,
            expires,
            revoked: false,
        })
    }

    /// Reads a label's XML as this deployment exchanges it: well-formed,
    /// valid under this policy, and byte for byte the canonical form
    /// [`Label::to_xml`] writes — so one label has one form, and no two
    /// readers can take the same bytes for different labels (a second
    /// Classification element, a comment inside a value, a category typed
    /// otherwise than the policy says: all refused).
    pub fn read_xml(&self, xml: &str) -> Result<Label, LabelError> {
        let label = Label::from_xml(xml)?;
        self.validate(&label)?;
        if label.to_xml(self) != xml {
            return Err(LabelError::NotCanonical);
        }
        Ok(label)
    }

    /// Checks a label that came from elsewhere (XML) against this policy.
    pub fn validate(&self, label: &Label) -> Result<(), LabelError> {
        if label.policy != self.id {
            return Err(LabelError::OtherPolicy(
                label.policy.clone(),
                self.id.clone(),
            ));
        }
        // By name only: markings are for people, not for machines.
        if !self
            .classifications
            .iter()
            .any(|c| c.name == label.classification)
        {
            return Err(LabelError::UnknownClassification(
                label.classification.clone(),
                self.classification_names(),
            ));
        }
        for (tag, values) in &label.categories {
            if values.is_empty() {
                return Err(LabelError::UnknownCategory(format!("{tag} with no values")));
            }
            let def = self
                .category(tag)
                .ok_or_else(|| LabelError::UnknownCategory(tag.clone()))?;
            if let Some(v) = values.iter().find(|v| !def.values.contains(v)) {
                return Err(LabelError::UnknownValue {
                    tag: tag.clone(),
                    value: v.clone(),
                });
            }
        }
        Ok(())
    }
}
