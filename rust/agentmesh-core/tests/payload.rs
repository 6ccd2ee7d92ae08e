//! Binary payload framing (docs/protocol.md, section 5.1): round trips, refusals, and the frozen
//! vectors in tests/vectors/payload-v1.json, which the Python tests read too
//! (tests/python/test_binary_payload_vectors.py). Set AGENTMESH_WRITE_VECTORS=1 to rewrite the
//! file after an intended change of the framing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::borrow::Cow;

use agentmesh_core::payload::{
    decode, encode, malformed_reference, write_reference, Blobs, Payload, BYTES_REFERENCE_KEY,
};
use agentmesh_core::{Envelope, Error, IdentityKeyPair, Mode, Session};
use common::{TestRng, T0};
use serde_json::{json, Value};

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/vectors/payload-v1.json"
);

fn h(b: &[u8]) -> String {
    hex::encode(b)
}

/// `{"key":<ref i>}`-style JSON built with the core's writer, so the vectors hold what it writes.
fn with_refs(parts: &[&str]) -> Vec<u8> {
    let mut json = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            write_reference(&mut json, i - 1);
        }
        json.extend_from_slice(part.as_bytes());
    }
    json
}

/// Resolves the references of a parsed JSON value in document order, as a reader of the
/// framing must (the vectors keep object keys sorted, so `Value`'s order is the text's).
fn resolve<'a>(v: &Value, blobs: &mut Blobs<'a>, out: &mut Vec<&'a [u8]>) -> Result<(), Error> {
    match v {
        Value::Object(map) if map.contains_key(BYTES_REFERENCE_KEY) => {
            let index = map[BYTES_REFERENCE_KEY]
                .as_u64()
                .filter(|_| map.len() == 1)
                .ok_or_else(malformed_reference)?;
            out.push(blobs.take(index)?);
            Ok(())
        }
        Value::Object(map) => map.values().try_for_each(|x| resolve(x, blobs, out)),
        Value::Array(items) => items.iter().try_for_each(|x| resolve(x, blobs, out)),
        _ => Ok(()),
    }
}

/// Decodes a plaintext payload completely: its JSON text and the blobs in reference order.
fn read(plaintext: &[u8]) -> Result<(Vec<u8>, Vec<Vec<u8>>), Error> {
    let mut parts = decode(plaintext)?;
    let mut taken = Vec::new();
    if parts.blobs.framed() {
        let value: Value = serde_json::from_slice(parts.json).expect("vector JSON parses");
        assert_eq!(
            serde_json::to_vec(&value).unwrap(),
            parts.json,
            "vector JSON must be compact with sorted keys"
        );
        resolve(&value, &mut parts.blobs, &mut taken)?;
        parts.blobs.finish()?;
    }
    Ok((
        parts.json.to_vec(),
        taken.into_iter().map(<[u8]>::to_vec).collect(),
    ))
}

/// (name, JSON text with references, binary values)
type FramingCase = (&'static str, Vec<u8>, Vec<Vec<u8>>);

fn framing_cases() -> Vec<FramingCase> {
    vec![
        (
            "no binary value: pure JSON, unchanged",
            br#"{"text":"hi"}"#.to_vec(),
            vec![],
        ),
        (
            "one binary value",
            with_refs(&[r#"{"data":"#, r#","text":"file"}"#]),
            vec![b"\x00\x01\x02\xff".to_vec()],
        ),
        (
            "empty binary value",
            with_refs(&[r#"{"data":"#, "}"]),
            vec![vec![]],
        ),
        (
            "nested in a list and a dict",
            with_refs(&[r#"{"a":["#, ",1,", r#"],"b":{"c":"#, "}}"]),
            vec![b"first".to_vec(), b"second".to_vec(), b"\xc3\x28".to_vec()],
        ),
    ]
}

fn malformed_cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let good = encode(&with_refs(&[r#"{"data":"#, "}"]), &[b"blob"])
        .unwrap()
        .into_owned();
    let mut trailing = good.clone();
    trailing.push(0);
    let mut version_2 = good.clone();
    version_2[3] = 2;
    let frame = |json: &[u8], blobs: &[&[u8]]| encode(json, blobs).unwrap().into_owned();
    vec![
        ("truncated blob", good[..good.len() - 1].to_vec(), "format"),
        ("trailing byte", trailing, "format"),
        ("unknown framing version", version_2, "version"),
        (
            "zero binary values",
            b"AMP\x01\x00\x00\x00\x00\x00\x00\x00\x02{}".to_vec(),
            "format",
        ),
        (
            "count larger than the input",
            b"AMP\x01\xff\xff\xff\xff\x00\x00\x00\x02{}".to_vec(),
            "format",
        ),
        (
            "blob never referenced",
            frame(br#"{"data":"none"}"#, &[b"blob"]),
            "format",
        ),
        (
            "references out of order",
            frame(
                br#"{"a":{"_agentmesh_bytes":1},"b":{"_agentmesh_bytes":0}}"#,
                &[b"x", b"y"],
            ),
            "format",
        ),
        (
            "reference to a missing blob",
            frame(
                br#"{"a":{"_agentmesh_bytes":0},"b":{"_agentmesh_bytes":1}}"#,
                &[b"x"],
            ),
            "format",
        ),
        (
            "reference with another key",
            frame(br#"{"a":{"_agentmesh_bytes":0,"z":1}}"#, &[b"x"]),
            "format",
        ),
        (
            "reference index not an integer",
            frame(br#"{"a":{"_agentmesh_bytes":"0"}}"#, &[b"x"]),
            "format",
        ),
    ]
}

/// One signed message carrying a framed payload, with the receiver's state before it.
fn sealed_example() -> Value {
    let mut rng = TestRng::new("agentmesh binary payload v1 vectors");
    let alice = IdentityKeyPair::generate("alice", &mut rng).unwrap();
    let bob = IdentityKeyPair::generate("bob", &mut rng).unwrap();
    let mut sender = Session::new(&alice, bob.public_bundle(), Mode::Signed).unwrap();
    let receiver = Session::new(&bob, alice.public_bundle(), Mode::Signed).unwrap();
    let json = with_refs(&[r#"{"data":"#, r#","text":"a file"}"#]);
    let blob: Vec<u8> = (0..=255u8).collect();
    let plaintext = encode(&json, &[&blob]).unwrap().into_owned();
    let env = sender.seal(&alice, &plaintext, T0, &mut rng).unwrap();
    json!({
        "receiver_secret_file": h(&bob.to_secret_bytes(None, &mut TestRng::new("unused")).unwrap()),
        "receiver_state_before": h(&receiver.export_state()),
        "envelope": h(env.as_bytes()),
        "json": String::from_utf8(json).unwrap(),
        "blobs": [h(&blob)],
        "plaintext": h(&plaintext),
    })
}

fn build() -> Value {
    let framing: Vec<Value> = framing_cases()
        .into_iter()
        .map(|(name, json, blobs)| {
            let refs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
            let plaintext = encode(&json, &refs).unwrap();
            json!({
                "name": name,
                "json": String::from_utf8(json.clone()).unwrap(),
                "blobs": blobs.iter().map(|b| h(b)).collect::<Vec<_>>(),
                "plaintext": h(&plaintext),
            })
        })
        .collect();
    let malformed: Vec<Value> = malformed_cases()
        .into_iter()
        .map(|(name, plaintext, error)| {
            json!({"name": name, "plaintext": h(&plaintext), "error": error})
        })
        .collect();
    json!({
        "description": "agentmesh binary payload framing v1 (docs/protocol.md, section 5.1). `framing`: a payload's JSON text (each binary value replaced by its reference {\"_agentmesh_bytes\": i}) and its binary values, and the plaintext payload they make. `malformed`: plaintexts a reader must refuse (`format`: malformed input, `version`: unknown framing version). `sealed`: a signed envelope carrying a framed payload and the receiver's identity and state to open it.",
        "reference_key": BYTES_REFERENCE_KEY,
        "framing": framing,
        "malformed": malformed,
        "sealed": sealed_example(),
    })
}

#[test]
fn payload_vectors_are_reproduced_byte_for_byte() {
    common::check_frozen_vectors(PATH, &build(), "framing");
}

#[test]
fn frozen_framings_decode_to_their_parts() {
    let frozen = common::frozen_vectors(PATH);
    for case in frozen["framing"].as_array().unwrap() {
        let plaintext = hex::decode(case["plaintext"].as_str().unwrap()).unwrap();
        let (json, blobs) = read(&plaintext).unwrap();
        assert_eq!(json, case["json"].as_str().unwrap().as_bytes());
        let expected: Vec<Vec<u8>> = case["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| hex::decode(b.as_str().unwrap()).unwrap())
            .collect();
        assert_eq!(blobs, expected, "{}", case["name"]);
    }
}

#[test]
fn frozen_malformed_framings_are_refused_with_their_error() {
    let frozen = common::frozen_vectors(PATH);
    for case in frozen["malformed"].as_array().unwrap() {
        let plaintext = hex::decode(case["plaintext"].as_str().unwrap()).unwrap();
        let err = read(&plaintext).expect_err(case["name"].as_str().unwrap());
        let kind = match err {
            Error::Format(_) => "format",
            Error::Version(_) => "version",
            _ => "other",
        };
        assert_eq!(kind, case["error"], "{}: {err}", case["name"]);
        assert!(err.to_string().contains("binary payload"), "{err}");
    }
}

#[test]
fn frozen_sealed_example_opens_to_its_framing() {
    let frozen = common::frozen_vectors(PATH);
    let ex = &frozen["sealed"];
    let field = |k: &str| hex::decode(ex[k].as_str().unwrap()).unwrap();
    let bob = IdentityKeyPair::from_secret_bytes(&field("receiver_secret_file"), None).unwrap();
    let mut session = Session::import_state(&bob, &field("receiver_state_before")).unwrap();
    let env = Envelope::from_bytes(&field("envelope")).unwrap();
    let opened = session.unseal(&bob, &env).unwrap();
    assert_eq!(opened.payload(), field("plaintext"));
    let (json, blobs) = read(opened.payload()).unwrap();
    assert_eq!(json, ex["json"].as_str().unwrap().as_bytes());
    assert_eq!(
        blobs,
        vec![hex::decode(ex["blobs"][0].as_str().unwrap()).unwrap()]
    );
}

#[test]
fn pure_json_is_borrowed_byte_for_byte() {
    let json = br#"{"text":"hi"}"#;
    assert!(matches!(encode(json, &[]), Ok(Cow::Borrowed(b)) if b == json));
    let parts = decode(json).unwrap();
    assert_eq!(parts.json, json);
    assert!(!parts.blobs.framed());
}

#[test]
fn every_truncation_of_a_framing_is_refused() {
    let good = encode(&with_refs(&[r#"{"data":"#, "}"]), &[b"blob", b""])
        .unwrap()
        .into_owned();
    for cut in 3..good.len() {
        assert!(
            decode(&good[..cut]).is_err(),
            "a framing cut at {cut} bytes was accepted"
        );
    }
}

#[test]
fn a_frame_without_blobs_is_never_written() {
    // (so that every payload has exactly one encoding)
    let plain = encode(b"{}", &[]).unwrap();
    assert!(!plain.starts_with(b"AMP"));
    // ... and a framing without blobs, made by hand, is refused on reading
    let mut empty = b"AMP\x01".to_vec();
    empty.extend_from_slice(&0u32.to_be_bytes());
    empty.extend_from_slice(&2u32.to_be_bytes());
    empty.extend_from_slice(b"{}");
    assert!(matches!(decode(&empty), Err(Error::Format(_))));
}

#[test]
fn envelope_grows_by_the_framing_only() {
    let mut rng = TestRng::new("size");
    let alice = IdentityKeyPair::generate("alice", &mut rng).unwrap();
    let bob = IdentityKeyPair::generate("bob", &mut rng).unwrap();
    let mut s = Session::new(&alice, bob.public_bundle(), Mode::Signed).unwrap();
    let blob = vec![0xabu8; 1 << 20];
    let json = with_refs(&[r#"{"data":"#, "}"]);
    let plaintext = encode(&json, &[&blob]).unwrap();
    let env = s.seal(&alice, &plaintext, T0, &mut rng).unwrap();
    let overhead = env.as_bytes().len() - blob.len();
    assert!(overhead < 400, "overhead {overhead} bytes");
}

#[test]
fn seal_payload_lays_out_the_same_plaintext_in_both_modes() {
    for mode in [Mode::Signed, Mode::Deniable] {
        let mut rng = TestRng::new("seal_payload");
        let alice = IdentityKeyPair::generate("alice", &mut rng).unwrap();
        let bob = IdentityKeyPair::generate("bob", &mut rng).unwrap();
        let mut a = Session::new(&alice, bob.public_bundle(), mode).unwrap();
        let mut b = Session::new(&bob, alice.public_bundle(), mode).unwrap();
        let json = with_refs(&[r#"{"a":"#, r#","b":["#, "]}"]);
        let blobs: [&[u8]; 2] = [&[0u8; 100_000], b"\xff"];
        let payload = Payload::new(&json, &blobs).unwrap();
        let expected = encode(&json, &blobs).unwrap();
        assert_eq!(payload.len(), expected.len());
        for _ in 0..3 {
            let env = a.seal_payload(&alice, &payload, T0, &mut rng).unwrap();
            assert_eq!(b.unseal(&bob, &env).unwrap().payload(), &*expected);
        }
        let plain = a
            .seal_payload(&alice, &Payload::plain(b"{}"), T0, &mut rng)
            .unwrap();
        assert_eq!(b.unseal(&bob, &plain).unwrap().payload(), b"{}");
    }
}

#[test]
fn a_payload_that_is_not_a_json_object_is_refused() {
    for text in [
        &b"[1,2]"[..],
        b"\"text\"",
        b"3",
        b"null",
        b"true",
        b"",
        b"  ",
        b" [{}]",
    ] {
        assert!(
            matches!(decode(text), Err(Error::Format(_))),
            "{:?} was accepted as a payload",
            String::from_utf8_lossy(text)
        );
    }
    for json in [
        &br#"[{"_agentmesh_bytes":0}]"#[..],
        br#" [{"_agentmesh_bytes":0}]"#,
    ] {
        let framed = encode(json, &[b"x"]).unwrap().into_owned();
        assert!(matches!(decode(&framed), Err(Error::Format(_))));
    }
    // JSON whitespace may open an object (another writer's JSON need not be compact)
    assert_eq!(decode(b" \n\t\r{}").unwrap().json, b" \n\t\r{}");
    // what a peer sealed arrives as it was sent; reading it as a payload refuses it
    let mut rng = TestRng::new("not an object");
    let alice = IdentityKeyPair::generate("alice", &mut rng).unwrap();
    let bob = IdentityKeyPair::generate("bob", &mut rng).unwrap();
    let mut a = Session::new(&alice, bob.public_bundle(), Mode::Signed).unwrap();
    let mut b = Session::new(&bob, alice.public_bundle(), Mode::Signed).unwrap();
    let env = a.seal(&alice, b"[1,2]", T0, &mut rng).unwrap();
    let opened = b.unseal(&bob, &env).unwrap();
    assert!(matches!(decode(opened.payload()), Err(Error::Format(_))));
}

#[test]
fn a_json_text_in_pieces_lays_out_as_its_concatenation() {
    let long = vec![b'x'; 70_000];
    let pieces: [&[u8]; 5] = [
        br#"{"a":""#,
        &long,
        br#"","b":["#,
        br#"{"_agentmesh_bytes":0}"#,
        b"]}",
    ];
    let json = pieces.concat();
    for blobs in [&[][..], &[&b"blob"[..]][..]] {
        let payload = Payload::from_pieces(&pieces, blobs).unwrap();
        let mut laid_out = Vec::new();
        payload.write_into(&mut laid_out);
        assert_eq!(laid_out, &*encode(&json, blobs).unwrap());
        assert_eq!(payload.len(), laid_out.len());
    }
    assert_eq!(Payload::from_pieces(&[], &[]).unwrap().len(), 0);
}
