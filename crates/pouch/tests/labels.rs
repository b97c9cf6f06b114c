//! Classification labels (issue 13), as far as they are built: the policy
//! file is checked, and a label's STANAG 4774 XML is read by an independent
//! XML parser (Python's `xml.etree`) with the namespace, policy identifier,
//! classification and categories as issued.

mod common;
use common::*;

fn example_policy() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/labels/ministry-example.toml")
}

const READ_LABEL: &str = r#"
import sys, json, xml.etree.ElementTree as ET
NS = "urn:nato:stanag:4774:confidentialitymetadatalabel:1:0"
root = ET.fromstring(sys.stdin.buffer.read())
info = root.find("{%s}ConfidentialityInformation" % NS)
policy = info.find("{%s}PolicyIdentifier" % NS)
print(json.dumps({
    "root": root.tag,
    "policy": policy.text,
    "policy_uri": policy.get("URI"),
    "classification": info.find("{%s}Classification" % NS).text,
    "categories": [
        {"tag": c.get("TagName"), "type": c.get("Type"),
         "values": [v.text for v in c.findall("{%s}GenericValue" % NS)]}
        for c in info.findall("{%s}Category" % NS)
    ],
    "created": root.find("{%s}CreationDateTime" % NS).text,
}))
"#;

#[test]
fn a_labels_xml_reads_in_an_independent_parser_as_issued() {
    let policy = example_policy();
    let out = pouch()
        .args([
            "security",
            "label",
            "SECRET//TREATY//REL TO SVK, CZE//HANDLE AS EYES ONLY",
            "--xml",
            "--policy",
        ])
        .arg(&policy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let label = python_json(READ_LABEL, &out.stdout, "XML");
    assert_eq!(
        label["root"],
        "{urn:nato:stanag:4774:confidentialitymetadatalabel:1:0}originatorConfidentialityLabel"
    );
    assert_eq!(label["policy"], "MFA-EXAMPLE");
    assert_eq!(label["policy_uri"], "urn:oid:1.3.6.1.4.1.99999.4774.1");
    assert_eq!(label["classification"], "SECRET");
    assert_eq!(
        label["categories"],
        serde_json::json!([
            {"tag": "REL", "type": "PERMISSIVE", "values": ["CZE", "SVK"]},
            {"tag": "COMPARTMENT", "type": "RESTRICTIVE", "values": ["TREATY"]},
            {"tag": "HANDLING", "type": "INFORMATIVE", "values": ["EYES ONLY"]},
        ])
    );
    assert!(label["created"].as_str().unwrap().ends_with('Z'), "{label}");

    // The marking, written the policy's way.
    let out = pouch()
        .args([
            "security",
            "label",
            "SECRET REL:SVK,CZE COMPARTMENT:TREATY",
            "--policy",
        ])
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "SECRET//REL TO CZE, SVK//TREATY"
    );
}

#[test]
fn a_policy_file_is_checked_and_a_bad_label_gets_one_line() {
    let policy = example_policy();
    let out = pouch()
        .args(["security", "policy", "check"])
        .arg(&policy)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("policy MFA-EXAMPLE is valid"), "{text}");
    assert!(text.contains("accredited up to: SECRET"), "{text}");

    let dir = Scratch::new("label-policy");
    let broken = dir.path("broken.toml");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&policy)
            .unwrap()
            .replace("rank = 4", "rank = 3"),
    )
    .unwrap();
    let out = pouch()
        .args(["security", "policy", "check"])
        .arg(&broken)
        .output()
        .unwrap();
    assert_one_line_error(&out, "have the same rank 3");

    for (label, wanted) in [
        ("SEKRET", "unknown classification 'SEKRET'"),
        ("TOP SECRET", "accredited only up to SECRET"),
        ("SECRET//REL TO XXX", "REL has no value 'XXX'"),
    ] {
        let out = pouch()
            .args(["security", "label", label, "--policy"])
            .arg(&policy)
            .output()
            .unwrap();
        assert_one_line_error(&out, wanted);
    }
}

/// The security officer's key is made on the officer's machine, sealed in
/// a home of its own, and its fingerprint printed to compare.
#[test]
fn the_security_officer_makes_a_key_of_their_own() {
    let dir = Scratch::new("officer");
    let home = dir.path("officer");
    let init = |home: &std::path::Path| {
        pouch()
            .env("POUCH_PASSPHRASE", PASSPHRASE)
            .args([
                "security",
                "init",
                "--name",
                "Security Officer",
                "--officer-home",
            ])
            .arg(home)
            .output()
            .unwrap()
    };
    let out = init(&home);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    let fingerprint = said.trim().rsplit(' ').next().unwrap().to_string();
    assert!(
        said.starts_with("security officer Security Officer: key fingerprint "),
        "{said}"
    );
    assert_eq!(fingerprint.len(), 64, "{said}");
    assert!(home.join("officer.json").exists());
    // Not made twice over, nor in a directory that holds other things.
    assert_one_line_error(&init(&home), "already holds a security officer's key");
    std::fs::write(dir.path("notes.txt"), "x").unwrap();
    assert_one_line_error(&init(&dir.0), "is not empty");
}
