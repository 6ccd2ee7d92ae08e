//! `agentmesh_core::payload`: the plaintext payload framing (docs/protocol.md, section 5.1).
//! Input: the plaintext bytes (a framing, or anything). When it decodes as a framing: taking
//! the references in order hands out every blob once, any other index is refused, and the
//! encoding is canonical (`encode` of its parts gives the input back). Pure JSON decodes to
//! itself with no blob.

use agentmesh_core::payload::{decode, encode};

/// One input (what the fuzz target runs; the corpus replay test too).
pub fn run(data: &[u8]) {
    let Ok(mut parts) = decode(data) else {
        return;
    };
    if !parts.blobs.framed() {
        assert_eq!(parts.json, data, "pure JSON must decode to itself");
        assert!(parts.blobs.finish().is_ok());
        return;
    }
    let mut blobs = Vec::new();
    let mut index = 0u64;
    // A wrong index first (one past the next): refused, and it changes nothing.
    assert!(parts.blobs.take(index + 1).is_err());
    while let Ok(blob) = parts.blobs.take(index) {
        blobs.push(blob);
        index += 1;
        assert!(
            parts.blobs.take(index.wrapping_sub(1)).is_err(),
            "a blob handed out twice"
        );
    }
    assert!(!blobs.is_empty(), "a framing holds at least one blob");
    assert!(
        parts.blobs.finish().is_ok(),
        "every blob was taken in order"
    );
    let again = encode(parts.json, &blobs).expect("the parts of a framing encode");
    assert_eq!(&*again, data, "the framing is not canonical");
}
