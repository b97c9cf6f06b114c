//! Classification labels, as a ministry's security officer defines them and
//! as Pouch enforces them end to end. Pure: no I/O, no clock (callers pass
//! the time), so the same decision runs in the sending client, on the
//! server (which sees only the outer copy of a label) and in the receiving
//! client.
//!
//! The model is NATO STANAG 4774's, itself SDN.801c's:
//! - a **policy** ([`LabelPolicy`], read from a TOML file in the shape of an
//!   Open XML SPIF) names the classifications in rank order, the categories
//!   with their values, the default label, and the deployment's
//!   accreditation **ceiling**;
//! - a **label** ([`Label`]) is one classification plus category values;
//!   people read and write it as a *marking* (`SECRET//REL TO CZE, SVK`),
//!   machines exchange it as STANAG 4774 XML ([`Label::to_xml`],
//!   [`Label::from_xml`]);
//! - a **clearance** ([`Clearance`]) mirrors a label: the highest
//!   classification a person may read and the category values they hold.
//!
//! The access decision ([`LabelPolicy::check`]): the label is within the
//! ceiling; its classification is at most the clearance's; the reader holds
//! *every* value of each restrictive category (need-to-know compartments)
//! and *at least one* value of each permissive category (releasability:
//! `REL TO CZE, SVK` admits a reader of either); informative categories are
//! carried, not enforced. Every refusal is a [`Refusal`] whose text names
//! what is missing, for the one-line errors users see.
#![forbid(unsafe_code)]

mod policy;
pub mod sio;
pub mod statement;
mod xml;

pub use policy::{
    CategoryDef, CategoryType, Classification, Equivalence, LabelPolicy, PolicyError,
};
pub use xml::{STANAG_4774_NAMESPACE, XmlError};

use std::collections::{BTreeMap, BTreeSet};

/// A security label: one classification and the category values, all by
/// the names the policy gives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    /// The policy's identifier (STANAG 4774 `PolicyIdentifier`).
    pub policy: String,
    pub classification: String,
    /// Category tag name → the values the label carries.
    pub categories: BTreeMap<String, BTreeSet<String>>,
    /// When it was made (Unix seconds; `CreationDateTime` in the XML form).
    pub created: i64,
}

/// What a person is cleared for, as the security officer signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clearance {
    pub policy: String,
    /// The highest classification they may read.
    pub max_classification: String,
    /// Category tag name → the values they hold.
    pub categories: BTreeMap<String, BTreeSet<String>>,
    /// Unix seconds after which it no longer holds.
    pub expires: Option<i64>,
    /// Revoked by the officer.
    pub revoked: bool,
}

/// Why a label may not go to a reader (or not be sent at all).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the label is {label} but this system is accredited only up to {ceiling}")]
    AboveCeiling { label: String, ceiling: String },
    #[error("cleared only up to {cleared}, and this mail is {label}")]
    ClearanceTooLow { cleared: String, label: String },
    #[error("not cleared for {tag} {value} (the label requires it)")]
    MissingRestrictive { tag: String, value: String },
    #[error("not releasable: the label is {tag} {allowed} and the clearance holds none of them")]
    NotReleasable { tag: String, allowed: String },
    #[error("the clearance expired")]
    Expired,
    #[error("the clearance was revoked")]
    Revoked,
    #[error("no clearance on record")]
    NoClearance,
    #[error("the label is under policy {label}, the clearance under {clearance}")]
    OtherPolicy { label: String, clearance: String },
    #[error("the label does not fit the policy: {0}")]
    InvalidLabel(String),
}

/// A label that does not fit the policy (a marking or XML naming what the
/// policy does not know).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("unknown classification '{0}' (the policy has: {1})")]
    UnknownClassification(String, String),
    #[error(
        "unknown category or value '{0}' (write it as the policy's marking, e.g. REL TO CZE, or TAG:VALUE)"
    )]
    UnknownCategory(String),
    #[error("{tag} has no value '{value}' in the policy")]
    UnknownValue { tag: String, value: String },
    #[error("the label is under policy '{0}', not this deployment's '{1}'")]
    OtherPolicy(String, String),
    #[error("an empty label: give a classification, e.g. RESTRICTED")]
    Empty,
    #[error("a label is at most {max} bytes", max = MAX_LABEL_BYTES)]
    TooLong,
    #[error(
        "the label XML is not in the one form Pouch writes (a second element, a comment, another prefix or order)"
    )]
    NotCanonical,
    #[error(transparent)]
    Xml(#[from] XmlError),
}

/// The longest label text (marking or XML) Pouch reads: a label is a few
/// hundred bytes; this bounds what a hostile peer can make it parse.
pub const MAX_LABEL_BYTES: usize = 16 * 1024;

impl Label {
    /// Whether this label is at least as restrictive as `other` (what a
    /// reply or forward must carry): classification at least as high,
    /// every restrictive value of `other`, and releasability no wider (each
    /// permissive category of `other` present, with a subset of its values).
    /// Informative categories do not count.
    pub fn dominates(&self, other: &Label, policy: &LabelPolicy) -> bool {
        let rank = |c: &str| policy.classification(c).map(|c| c.rank);
        match (rank(&self.classification), rank(&other.classification)) {
            (Some(mine), Some(theirs)) if mine >= theirs => {}
            _ => return false,
        }
        for def in &policy.categories {
            let mine = self.categories.get(&def.tag);
            let theirs = other.categories.get(&def.tag);
            match def.kind {
                CategoryType::Restrictive => {
                    if let Some(theirs) = theirs
                        && !theirs.iter().all(|v| mine.is_some_and(|m| m.contains(v)))
                    {
                        return false;
                    }
                }
                CategoryType::Permissive => {
                    if let Some(theirs) = theirs.filter(|t| !t.is_empty()) {
                        match mine {
                            Some(m) if !m.is_empty() && m.is_subset(theirs) => {}
                            _ => return false,
                        }
                    }
                }
                CategoryType::Informative => {}
            }
        }
        true
    }
}

#[cfg(test)]
mod tests;
