//! Envelope::from_bytes on arbitrary bytes. When it parses: the envelope keeps the input bytes
//! exactly, every header field re-encodes (per docs/protocol.md section 5) to the bytes before the
//! ciphertext, the declared ciphertext length is in bounds and matches, the accessors agree with
//! the header, and from_vec agrees with from_bytes.

use agentmesh_core::{
    check_agent_id, Envelope, Header, MessageType, FLAG_SIGNED, MAGIC, MAX_CIPHERTEXT_LEN, VERSION,
};
use sha2::{Digest, Sha256};

/// Independent encoder of the header (the core's is crate-private), written from the spec.
fn encode_header(h: &Header, ct_len: u32) -> Vec<u8> {
    let mut w = Vec::new();
    w.extend_from_slice(&MAGIC);
    w.push(VERSION);
    w.push(h.message_type as u8);
    w.push(if h.signed { FLAG_SIGNED } else { 0 });
    for id in [&h.sender, &h.recipient] {
        w.push(u8::try_from(id.len()).expect("agent id longer than 255 bytes was accepted"));
        w.extend_from_slice(id.as_bytes());
    }
    w.extend_from_slice(&h.session_id);
    w.extend_from_slice(&h.timestamp_ms.to_be_bytes());
    w.extend_from_slice(&h.ratchet_key);
    w.extend_from_slice(&h.previous_chain_length.to_be_bytes());
    w.extend_from_slice(&h.counter.to_be_bytes());
    if let Some(init) = &h.initiation {
        w.extend_from_slice(&init.base_key);
        w.extend_from_slice(&init.signed_prekey_id.to_be_bytes());
        w.extend_from_slice(&init.one_time_prekey_id.to_be_bytes());
    }
    w.extend_from_slice(&ct_len.to_be_bytes());
    w
}

/// One input (what the fuzz target runs; the corpus replay test too).
pub fn run(data: &[u8]) {
    let parsed = Envelope::from_bytes(data);
    let from_vec = Envelope::from_vec(data.to_vec());
    assert_eq!(parsed, from_vec, "from_bytes and from_vec disagree");
    let Ok(env) = parsed else { return };

    assert_eq!(
        env.as_bytes(),
        data,
        "envelope does not keep its wire bytes"
    );
    let h = env.header();
    assert_eq!(env.sender(), h.sender);
    assert_eq!(env.recipient(), h.recipient);
    assert_eq!(env.timestamp_ms(), h.timestamp_ms);
    assert!(
        check_agent_id(&h.sender).is_ok(),
        "sender id breaks the id rules"
    );
    assert!(
        check_agent_id(&h.recipient).is_ok(),
        "recipient id breaks the id rules"
    );
    assert_eq!(
        h.initiation.is_some(),
        h.message_type == MessageType::Prekey,
        "initiation fields present iff prekey message"
    );
    assert_eq!(h.signed, data[4] & FLAG_SIGNED != 0);
    assert_eq!(data[4] & !FLAG_SIGNED, 0, "unknown flag bits accepted");

    // Header length without the ciphertext: encode with a dummy length, then the real one.
    let ad_len = encode_header(h, 0).len();
    assert!(ad_len <= data.len());
    let ct_len = data.len() - ad_len;
    assert!(ct_len >= 16, "ciphertext shorter than the tag accepted");
    assert!(
        ct_len <= MAX_CIPHERTEXT_LEN,
        "ciphertext above the limit accepted"
    );
    let ad = encode_header(h, u32::try_from(ct_len).expect("length fits u32"));
    assert_eq!(
        ad.as_slice(),
        &data[..ad_len],
        "header does not re-encode to its bytes"
    );

    let digest = Sha256::digest(&ad);
    let want: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        env.message_id(),
        want,
        "message id is not SHA-256(associated data)[0..16]"
    );
    assert_eq!(env.clone().into_bytes(), data);
}
