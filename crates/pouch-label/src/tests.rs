use super::*;

const EXAMPLE: &str = include_str!("../../../dist/labels/ministry-example.toml");
const NOW: i64 = 1_796_000_000;

fn policy() -> LabelPolicy {
    LabelPolicy::from_toml(EXAMPLE).expect("the shipped example policy is valid")
}

fn label(text: &str) -> Label {
    policy().parse(text, NOW).unwrap()
}

fn cleared(max: &str, parts: &[&str]) -> Clearance {
    let parts: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
    policy().clearance(max, &parts, None).unwrap()
}

#[test]
fn markings_and_typed_labels_read_alike_and_write_back_the_same() {
    let p = policy();
    let marked = label("SECRET//TREATY//REL TO CZE, SVK");
    let typed = label("SECRET REL:SVK,CZE COMPARTMENT:TREATY");
    assert_eq!(marked, typed);
    assert_eq!(marked.classification, "SECRET");
    assert_eq!(p.marking(&marked), "SECRET//REL TO CZE, SVK//TREATY");
    assert_eq!(p.parse(&p.marking(&marked), NOW).unwrap(), marked);
    // A subject marking, and a classification of two words.
    assert_eq!(label("[TOP SECRET]").classification, "TOP SECRET");
    assert_eq!(
        label("TOP SECRET COMPARTMENT:CRYPTO").categories["COMPARTMENT"],
        ["CRYPTO".to_string()].into()
    );
    assert_eq!(p.default_label(NOW).classification, "UNCLASSIFIED");
}

#[test]
fn a_label_the_policy_does_not_know_is_refused_with_what_it_has() {
    let p = policy();
    let e = p.parse("SEKRET", NOW).unwrap_err().to_string();
    assert!(
        e.contains("unknown classification 'SEKRET'") && e.contains("CONFIDENTIAL"),
        "{e}"
    );
    let e = p.parse("SECRET//REL TO XXX", NOW).unwrap_err().to_string();
    assert!(e.contains("REL has no value 'XXX'"), "{e}");
    let e = p.parse("SECRET//ORCON", NOW).unwrap_err().to_string();
    assert!(e.contains("unknown category or value 'ORCON'"), "{e}");
    assert_eq!(p.parse("  ", NOW), Err(LabelError::Empty));
    // Whitespace and any characters: never a panic.
    assert_eq!(label("TOP  SECRET").classification, "TOP SECRET");
    for odd in [
        "A  é",
        "X\u{3000}Y",
        "A  é B:C",
        "é//é",
        "SECRET//REL TO\u{3000}CZE",
    ] {
        let _ = p.parse(odd, NOW);
    }
    // No values is no restriction: refused, as is one category given twice.
    for empty in [
        "SECRET//REL TO",
        "SECRET//REL TO ,",
        "SECRET REL:",
        "SECRET//REL TO CZE//REL TO FRA",
    ] {
        assert!(p.parse(empty, NOW).is_err(), "{empty}");
    }
    assert_eq!(
        p.parse(&"A".repeat(MAX_LABEL_BYTES + 1), NOW),
        Err(LabelError::TooLong)
    );
}

/// Every refusal of the access decision, each naming what is missing.
#[test]
fn the_access_decision_refuses_each_way_and_says_why() {
    let p = policy();
    let secret_rel = label("SECRET//REL TO CZE, SVK//TREATY");
    let ok = cleared("SECRET", &["REL:CZE", "COMPARTMENT:TREATY,CRYPTO"]);
    assert_eq!(p.check(&secret_rel, Some(&ok), NOW), Ok(()));
    // Releasable to either: a Slovak reader too.
    let slovak = cleared("TOP SECRET", &["REL TO SVK", "TREATY"]);
    assert_eq!(p.check(&secret_rel, Some(&slovak), NOW), Ok(()));

    let low = cleared("CONFIDENTIAL", &["REL:CZE", "COMPARTMENT:TREATY"]);
    assert_eq!(
        p.check(&secret_rel, Some(&low), NOW),
        Err(Refusal::ClearanceTooLow {
            cleared: "CONFIDENTIAL".into(),
            label: "SECRET//REL TO CZE, SVK//TREATY".into()
        })
    );
    let no_compartment = cleared("SECRET", &["REL:CZE"]);
    assert_eq!(
        p.check(&secret_rel, Some(&no_compartment), NOW),
        Err(Refusal::MissingRestrictive {
            tag: "COMPARTMENT".into(),
            value: "TREATY".into()
        })
    );
    let german = cleared("SECRET", &["REL:DEU", "COMPARTMENT:TREATY"]);
    let e = p.check(&secret_rel, Some(&german), NOW).unwrap_err();
    assert_eq!(
        e.to_string(),
        "not releasable: the label is REL TO CZE, SVK and the clearance holds none of them"
    );
    let expiring = p
        .clearance("SECRET", &["REL:CZE".into(), "TREATY".into()], Some(NOW))
        .unwrap();
    assert_eq!(p.check(&secret_rel, Some(&expiring), NOW - 1), Ok(()));
    assert_eq!(
        p.check(&secret_rel, Some(&expiring), NOW),
        Err(Refusal::Expired)
    );
    let revoked = Clearance {
        revoked: true,
        ..ok.clone()
    };
    assert_eq!(
        p.check(&secret_rel, Some(&revoked), NOW),
        Err(Refusal::Revoked)
    );
    assert_eq!(p.check(&secret_rel, None, NOW), Err(Refusal::NoClearance));
    // Above the accreditation ceiling: refused whoever reads it.
    let top = label("TOP SECRET");
    let everything = cleared("TOP SECRET", &[]);
    assert_eq!(
        p.check(&top, Some(&everything), NOW),
        Err(Refusal::AboveCeiling {
            label: "TOP SECRET".into(),
            ceiling: "SECRET".into()
        })
    );
    // Informative categories are shown, never enforced.
    let handled = label("RESTRICTED//HANDLE AS EYES ONLY");
    assert_eq!(
        p.check(&handled, Some(&cleared("RESTRICTED", &[])), NOW),
        Ok(())
    );
}

/// A reply or forward must carry at least what it answers.
#[test]
fn a_label_dominates_only_what_it_is_at_least_as_strict_as() {
    let p = policy();
    let original = label("CONFIDENTIAL//REL TO CZE, SVK//TREATY");
    for stricter in [
        "CONFIDENTIAL//REL TO CZE, SVK//TREATY",
        "SECRET//REL TO CZE, SVK//TREATY",
        "CONFIDENTIAL//REL TO CZE//TREATY//CRYPTO",
        "CONFIDENTIAL//REL TO CZE, SVK//TREATY//HANDLE AS EYES ONLY",
    ] {
        assert!(label(stricter).dominates(&original, &p), "{stricter}");
    }
    for weaker in [
        "RESTRICTED//REL TO CZE, SVK//TREATY",
        "CONFIDENTIAL//REL TO CZE, SVK",
        "CONFIDENTIAL//REL TO CZE, SVK, DEU//TREATY",
        "CONFIDENTIAL//TREATY",
    ] {
        assert!(!label(weaker).dominates(&original, &p), "{weaker}");
    }
}

#[test]
fn the_xml_form_is_canonical_and_reads_back() {
    let p = policy();
    let l = label("SECRET//TREATY//REL TO SVK, CZE");
    let xml = l.to_xml(&p);
    assert!(xml.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?><slab:originatorConfidentialityLabel xmlns:slab="urn:nato:stanag:4774:confidentialitymetadatalabel:1:0">"#), "{xml}");
    assert!(
        xml.contains(r#"<slab:PolicyIdentifier URI="urn:oid:1.3.6.1.4.1.99999.4774.1">MFA-EXAMPLE</slab:PolicyIdentifier>"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<slab:Category TagName="REL" Type="PERMISSIVE"><slab:GenericValue>CZE</slab:GenericValue><slab:GenericValue>SVK</slab:GenericValue></slab:Category>"#),
        "values in the policy's order: {xml}"
    );
    let back = Label::from_xml(&xml).unwrap();
    assert_eq!(back, l);
    assert_eq!(back.to_xml(&p), xml, "the same bytes again");
    p.validate(&back).unwrap();

    // Another prefix for the same namespace reads the same; elements of
    // another namespace are not taken for label parts.
    let other = xml
        .replace("slab:", "s:")
        .replace("xmlns:slab=", "xmlns:s=")
        .replace(
            "<s:ConfidentialityInformation>",
            r#"<s:ConfidentialityInformation><x:Classification xmlns:x="urn:other">UNCLASSIFIED</x:Classification>"#,
        );
    assert_eq!(Label::from_xml(&other).unwrap(), l);

    // Exchanged labels are read only in the one canonical form.
    assert_eq!(p.read_xml(&xml).unwrap(), l);
    let variants = [
        other.clone(),
        xml.replace(
            "<slab:Classification>SECRET</slab:Classification>",
            "<slab:Classification>SECRET</slab:Classification><slab:Classification>UNCLASSIFIED</slab:Classification>",
        ),
        xml.replace(">SECRET<", ">SEC<!---->RET<"),
        xml.replace(
            r#"TagName="COMPARTMENT" Type="RESTRICTIVE""#,
            r#"TagName="COMPARTMENT" Type="INFORMATIVE""#,
        ),
        xml.replace(
            "<slab:ConfidentialityInformation>",
            "\n<slab:ConfidentialityInformation>",
        ),
        format!(
            "{xml}{}",
            xml.trim_start_matches(r#"<?xml version="1.0" encoding="UTF-8"?>"#)
        ),
    ];
    for v in variants {
        assert_ne!(v, xml);
        assert!(p.read_xml(&v).is_err(), "accepted: {v}");
    }
}

#[test]
fn hostile_label_xml_is_refused_without_harm() {
    for (xml, wanted) in [
        ("<not xml", "not well-formed"),
        (
            r#"<label xmlns="urn:other"><Classification>SECRET</Classification></label>"#,
            "root element",
        ),
        (
            r#"<s:originatorConfidentialityLabel xmlns:s="urn:nato:stanag:4774:confidentialitymetadatalabel:1:0"><s:ConfidentialityInformation><s:PolicyIdentifier>MFA-EXAMPLE</s:PolicyIdentifier></s:ConfidentialityInformation></s:originatorConfidentialityLabel>"#,
            "not a STANAG 4774",
        ),
        (
            r#"<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><s:originatorConfidentialityLabel xmlns:s="urn:nato:stanag:4774:confidentialitymetadatalabel:1:0"><s:ConfidentialityInformation><s:PolicyIdentifier>&b;</s:PolicyIdentifier><s:Classification>SECRET</s:Classification></s:ConfidentialityInformation></s:originatorConfidentialityLabel>"#,
            "not well-formed",
        ),
    ] {
        let e = Label::from_xml(xml).unwrap_err().to_string();
        assert!(e.contains(wanted), "{xml}: {e}");
    }
    let deep = format!(
        r#"<s:originatorConfidentialityLabel xmlns:s="{STANAG_4774_NAMESPACE}">{}{}</s:originatorConfidentialityLabel>"#,
        "<s:x>".repeat(40),
        "</s:x>".repeat(40)
    );
    assert!(
        Label::from_xml(&deep)
            .unwrap_err()
            .to_string()
            .contains("too deep")
    );
    assert_eq!(
        Label::from_xml(&"<".repeat(MAX_LABEL_BYTES + 1)),
        Err(LabelError::TooLong)
    );
    // Well-formed, but naming what the policy does not have.
    let p = policy();
    let mut l = label("SECRET");
    l.classification = "COSMIC".into();
    let e = p
        .validate(&Label::from_xml(&l.to_xml(&p)).unwrap())
        .unwrap_err();
    assert!(
        e.to_string().contains("unknown classification 'COSMIC'"),
        "{e}"
    );
}

#[test]
fn a_policy_with_a_mistake_is_refused_whole() {
    let broken = [
        (EXAMPLE.replace("rank = 4", "rank = 3"), "the same rank 3"),
        (
            EXAMPLE.replace(r#"ceiling = "SECRET""#, r#"ceiling = "SECERT""#),
            "policy.ceiling 'SECERT'",
        ),
        (
            EXAMPLE.replace(r#"default = "UNCLASSIFIED""#, r#"default = "TOP SECRET""#),
            "above policy.ceiling",
        ),
        (
            EXAMPLE.replace("type = \"permissive\"", "type = \"permisive\""),
            "permisive",
        ),
        (
            EXAMPLE.replace("[policy]", "[policy]\nceilling = 1"),
            "ceilling",
        ),
        (
            EXAMPLE.replace(r##"bgcolor = "#f0e442""##, r#"bgcolor = "yellow""#),
            "not #rrggbb",
        ),
        (
            EXAMPLE.replace(r#""CZE", "SVK""#, r#""CZE", "CZE""#),
            "'CZE' is unusable or twice",
        ),
        // A marking that is another classification's name.
        (
            EXAMPLE.replace(
                "name = \"TOP SECRET\"",
                "name = \"TOP SECRET\"\nmarking = \"RESTRICTED\"",
            ),
            "its name or marking is another's",
        ),
        // A value standing alone in two categories (HANDLING's marking
        // removed, a value it shares with COMPARTMENT).
        (
            EXAMPLE
                .replace(r#"marking = "HANDLE AS""#, "")
                .replace(r#""EYES ONLY", "NO FORWARD""#, r#""EYES ONLY", "TREATY""#),
            "stands alone in two categories",
        ),
        // A category marking that begins another.
        (
            EXAMPLE.replace(r#"marking = "HANDLE AS""#, r#"marking = "REL""#),
            "begins another marking",
        ),
    ];
    for (text, wanted) in broken {
        let e = LabelPolicy::from_toml(&text).unwrap_err().to_string();
        assert!(e.contains(wanted), "{wanted}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

mod statements {
    use super::*;
    use crate::statement::*;
    use ed25519_dalek::SigningKey;

    fn officer(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn only_the_pinned_officer_signs_what_devices_believe() {
        let officer_key = officer(7);
        let pinned = officer_key.verifying_key();
        let p = policy();
        let c = p
            .clearance(
                "SECRET",
                &["REL:CZE".into(), "TREATY".into()],
                Some(NOW + 86_400),
            )
            .unwrap();
        let signed = SignedStatement::sign(
            &Statement::clearance("bob@mfa.example", &c, 1, NOW),
            &officer_key,
        );
        let mut known = Clearances::default();
        known.apply(signed.verify(&pinned).unwrap()).unwrap();
        assert_eq!(known.clearance("bob@mfa.example"), Some(&c));

        // Another key (an administrator's, the server's): refused, naming the trusted key.
        let forged = SignedStatement::sign(
            &Statement::clearance("mallory@mfa.example", &c, 1, NOW),
            &officer(8),
        );
        let e = forged.verify(&pinned).unwrap_err().to_string();
        assert!(
            e.contains("not signed by the security officer")
                && e.contains(&officer_fingerprint(&pinned)),
            "{e}"
        );
        // A signed clearance edited afterwards (raised to TOP SECRET): refused.
        let raised = SignedStatement {
            body: signed.body.replace("\"SECRET\"", "\"TOP SECRET\""),
            ..signed.clone()
        };
        assert_ne!(raised.body, signed.body);
        assert!(raised.verify(&pinned).is_err());
        // Garbage signatures and oversized bodies.
        let junk = SignedStatement {
            signature: "zz".into(),
            ..signed.clone()
        };
        assert!(junk.verify(&pinned).is_err());
        let big = SignedStatement {
            body: "x".repeat(MAX_STATEMENT_BYTES + 1),
            ..signed
        };
        assert_eq!(big.verify(&pinned), Err(StatementError::TooLarge));
    }

    #[test]
    fn the_latest_statement_counts_and_an_older_policy_is_not_taken_back() {
        let key = officer(3);
        let pinned = key.verifying_key();
        let apply = |known: &mut Clearances, s: Statement| {
            known.apply(SignedStatement::sign(&s, &key).verify(&pinned).unwrap())
        };
        let mut known = Clearances::default();
        apply(
            &mut known,
            Statement::Policy {
                sequence: 2,
                version: 2,
                policy: EXAMPLE.into(),
                issued_at: NOW,
            },
        )
        .unwrap();
        assert_eq!(known.policy().unwrap().id, "MFA-EXAMPLE");
        let e = apply(
            &mut known,
            Statement::Policy {
                sequence: 1,
                version: 1,
                policy: EXAMPLE.into(),
                issued_at: NOW,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("an older policy replayed"), "{e}");
        let e = apply(
            &mut known,
            Statement::Policy {
                sequence: 3,
                version: 3,
                policy: EXAMPLE.replace("rank = 4", "rank = 3"),
                issued_at: NOW,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("same rank"), "{e}");

        let p = known.policy().unwrap().clone();
        let secret = p.clearance("SECRET", &["REL:CZE".into()], None).unwrap();
        apply(
            &mut known,
            Statement::clearance("bob@mfa.example", &secret, 1, NOW),
        )
        .unwrap();
        let label = p.parse("SECRET//REL TO CZE", NOW).unwrap();
        assert_eq!(
            p.check(&label, known.clearance("bob@mfa.example"), NOW),
            Ok(())
        );
        // Lowered, then revoked: each is what counts from then on.
        let lower = p
            .clearance("RESTRICTED", &["REL:CZE".into()], None)
            .unwrap();
        apply(
            &mut known,
            Statement::clearance("bob@mfa.example", &lower, 2, NOW + 1),
        )
        .unwrap();
        assert!(matches!(
            p.check(&label, known.clearance("bob@mfa.example"), NOW),
            Err(Refusal::ClearanceTooLow { .. })
        ));
        apply(
            &mut known,
            Statement::Revocation {
                sequence: 3,
                address: "bob@mfa.example".into(),
                issued_at: NOW + 2,
            },
        )
        .unwrap();
        assert_eq!(
            p.check(
                &p.parse("UNCLASSIFIED", NOW).unwrap(),
                known.clearance("bob@mfa.example"),
                NOW
            ),
            Err(Refusal::Revoked)
        );
        assert_eq!(
            p.check(&label, known.clearance("nobody@mfa.example"), NOW),
            Err(Refusal::NoClearance)
        );
        // The old SECRET clearance replayed after the revocation: refused,
        // and Bob stays revoked (whatever case his address is written in).
        let e = apply(
            &mut known,
            Statement::clearance("Bob@MFA.example", &secret, 1, NOW),
        )
        .unwrap_err();
        assert!(e.to_string().contains("an older statement replayed"), "{e}");
        assert_eq!(
            p.check(&label, known.clearance("BOB@mfa.example"), NOW),
            Err(Refusal::Revoked)
        );
        // A newer clearance from the officer clears him again.
        apply(
            &mut known,
            Statement::clearance("bob@mfa.example", &secret, 4, NOW + 3),
        )
        .unwrap();
        assert_eq!(
            p.check(&label, known.clearance("bob@mfa.example"), NOW),
            Ok(())
        );
    }
}

#[test]
fn the_sio_label_header_carries_one_label_both_ways() {
    let p = policy();
    let l = label("SECRET//REL TO CZE, SVK");
    let value = sio::header_value(&l, &p);
    // Folded into lines a mail client accepts, with the display hints.
    assert!(value.lines().all(|line| line.len() <= 78), "{value}");
    assert!(
        value.contains("marking=\"SECRET//REL TO CZE, SVK\""),
        "{value}"
    );
    assert!(value.contains("bgcolor=\"#d55e00\""), "{value}");
    assert_eq!(sio::read_header(&value, &p).unwrap(), l);
    // Unfolded, parameters reordered, names in another case: the same label.
    let unfolded = value.replace("\r\n ", " ");
    let label_param = unfolded
        .split(';')
        .find(|p| p.trim().starts_with("label="))
        .unwrap()
        .trim()
        .replace("label=", "LABEL=");
    let reordered = format!("marking=\"x;y\"; {label_param}; Type=\":xml\"");
    assert_eq!(sio::read_header(&reordered, &p).unwrap(), l);
    // Other forms are refused with what is wrong.
    assert_eq!(
        sio::read_header("type=\":ess\"; label=\"MAA=\"", &p),
        Err(sio::SioError::NotXml)
    );
    assert_eq!(
        sio::read_header("type=\":xml\"", &p),
        Err(sio::SioError::NoLabel)
    );
    assert_eq!(
        sio::read_header("type=\":xml\"; label=\"%%%\"", &p),
        Err(sio::SioError::NotBase64)
    );
    assert!(sio::read_header(&"x".repeat(100_000), &p).is_err());
}

#[test]
fn a_subject_marking_names_a_label_only_when_the_policy_knows_it() {
    let p = policy();
    let l = label("RESTRICTED");
    let subject = sio::marked_subject("Visit of the delegation", &l, &p);
    assert_eq!(subject, "[RESTRICTED] Visit of the delegation");
    assert_eq!(
        sio::marked_subject(&subject, &l, &p),
        subject,
        "marked once"
    );
    assert_eq!(
        sio::subject_label(&subject, &p, NOW)
            .unwrap()
            .unwrap()
            .classification,
        "RESTRICTED"
    );
    for forwarded in [
        "Re: [SECRET//REL TO CZE] Talks",
        "FW: RE: [SECRET//REL TO CZE] Talks",
        "Odp: PŘ: [SECRET//REL TO CZE] Talks",
        "[secret//rel to cze] Talks",
    ] {
        assert_eq!(
            sio::subject_label(forwarded, &p, NOW).unwrap(),
            Some(label("SECRET//REL TO CZE")),
            "{forwarded}"
        );
    }
    assert_eq!(sio::subject_label("[draft] minutes", &p, NOW), Ok(None));
    assert_eq!(sio::subject_label("Minutes [SECRET]", &p, NOW), Ok(None));
    // A marking that begins with a level but does not read is refused, not
    // taken for the default label.
    assert!(sio::subject_label("[SECRET//REL TO XXX] Talks", &p, NOW).is_err());
    assert!(sio::subject_label("Re: [TOP SECRET//NOFORN] x", &p, NOW).is_err());
}

#[test]
fn mail_clients_are_shown_the_verified_label_and_the_subject_marking() {
    let p = policy();
    let l = label("CONFIDENTIAL//REL TO CZE");
    let head = b"From: <a@x.y>\r\nSubject: Talks\r\n on Tuesday\r\nSIO-Label: type=\":xml\"; label=\"forged\"\r\n\r\n";
    assert_eq!(sio::head_end(b"A: b\r\n\r\nbody"), Some(8));
    assert_eq!(sio::head_end(b"A: b\n\nbody"), Some(6));
    let shown = String::from_utf8(sio::label_head(head, &l, &p, true)).unwrap();
    assert!(
        shown.starts_with(
            "From: <a@x.y>\r\nSubject: [CONFIDENTIAL//REL TO CZE] Talks\r\n on Tuesday\r\n"
        ),
        "{shown}"
    );
    assert!(
        !shown.contains("forged"),
        "the sender's own SIO-Label is replaced: {shown}"
    );
    assert!(shown.ends_with("\r\n\r\n"));
    let value = shown.split("SIO-Label: ").nth(1).unwrap().trim_end();
    assert_eq!(
        sio::read_header(&value.replace("\r\n ", " "), &p).unwrap(),
        l
    );
    // Marked once; no subject marking when not asked; a subject made when absent.
    let again = sio::label_head(shown.as_bytes(), &l, &p, true);
    assert_eq!(
        String::from_utf8(again)
            .unwrap()
            .matches("[CONFIDENTIAL//REL TO CZE]")
            .count(),
        1
    );
    let plain = String::from_utf8(sio::label_head(head, &l, &p, false)).unwrap();
    assert!(plain.contains("Subject: Talks\r\n"), "{plain}");
    let none = String::from_utf8(sio::label_head(b"From: <a@x.y>\r\n\r\n", &l, &p, true)).unwrap();
    assert!(
        none.contains("Subject: [CONFIDENTIAL//REL TO CZE]\r\n"),
        "{none}"
    );
}

#[test]
fn a_new_policy_may_extend_the_old_but_not_make_its_labels_unreadable() {
    let old = policy();
    assert_eq!(old.keeps(&old), Ok(()));
    let extended = LabelPolicy::from_toml(&EXAMPLE.replace(
        r#"values = ["CZE", "SVK", "POL", "DEU", "FRA", "EU", "NATO"]"#,
        r#"values = ["CZE", "SVK", "POL", "DEU", "FRA", "EU", "NATO", "AUT"]"#,
    ))
    .unwrap();
    assert_eq!(extended.keeps(&old), Ok(()));
    for (what, text) in [
        (
            "identifier",
            EXAMPLE.replace(r#"id = "MFA-EXAMPLE""#, r#"id = "MFA-2""#),
        ),
        (
            "drops REL",
            EXAMPLE.replace(r#""CZE", "SVK","#, r#""SVK","#),
        ),
        (
            "order of its values",
            EXAMPLE.replace(r#""CZE", "SVK","#, r#""SVK", "CZE","#),
        ),
    ] {
        let new = LabelPolicy::from_toml(&text).unwrap();
        let e = new.keeps(&old).unwrap_err();
        assert!(e.contains(what), "{what}: {e}");
    }
}
