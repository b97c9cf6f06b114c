//! A message as another member (or a mail client) can shape it: indexed,
//! stripped of Bcc, and rendered for IMAP (ENVELOPE, BODYSTRUCTURE, the
//! sections a client can ask for).
#![no_main]
use imap_codec::imap_types::core::{AString, Vec1};
use imap_codec::imap_types::fetch::{Part, Section};
use libfuzzer_sys::fuzz_target;
use pouch_mail_proto::imap::render::{
    body_structure, envelope, header_end, part, section_bytes, section_name,
};
use pouch_mail_proto::mime::{parse, without_bcc};
use std::num::NonZeroU32;

fuzz_target!(|data: &[u8]| {
    let _ = parse(data);
    // What every recipient gets holds no Bcc that Pouch itself would read.
    let stripped = without_bcc(data);
    if let Ok(p) = parse(&stripped) {
        assert!(!p.has_bcc, "a Bcc survived stripping");
    }
    assert!(header_end(data) <= data.len());

    let mut out = Vec::new();
    envelope(&mut out, data);
    body_structure(&mut out, data, true);
    body_structure(&mut out, data, false);

    let one = NonZeroU32::new(1).unwrap();
    let two = NonZeroU32::new(2).unwrap();
    for path in [vec![one], vec![two], vec![one, two], vec![two, one, one]] {
        let _ = part(data, &path);
        let p = Part(Vec1::try_from(path).unwrap());
        for section in [
            None,
            Some(Section::Part(p.clone())),
            Some(Section::Header(Some(p.clone()))),
            Some(Section::Text(Some(p.clone()))),
            Some(Section::Mime(p.clone())),
            Some(Section::Header(None)),
            Some(Section::Text(None)),
            Some(Section::HeaderFields(
                None,
                Vec1::from(AString::try_from("Subject").unwrap()),
            )),
            Some(Section::HeaderFieldsNot(
                Some(p.clone()),
                Vec1::from(AString::try_from("From").unwrap()),
            )),
        ] {
            let bytes = section_bytes(data, &section);
            assert!(bytes.len() <= data.len() + 2);
            let _ = section_name(&section);
        }
    }
});
