//! Sender-key groups: one test per property of docs/protocol.md section 8 and docs/security.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use agentmesh_core::group::{
    group_chain_step, GroupEnvelope, GroupSession, Membership, MAX_GROUP_MESSAGE_GAP,
    MAX_GROUP_SKIPPED_KEYS,
};
use agentmesh_core::internals::{
    labels, message_nonce, seal_separate_tag, sign_labelled, ChainKey,
};
use agentmesh_core::{Error, IdentityKeyPair};
use common::{TestRng, T0};

struct Member {
    kp: IdentityKeyPair,
    state: GroupSession,
}

struct Team {
    rng: TestRng,
    clock: u64,
    members: Vec<Member>,
}

impl Team {
    /// `names[0]` sends; every other member installs its distribution (as the pairwise session
    /// would deliver it).
    fn new(label: &str, names: &[&str]) -> Self {
        let mut rng = TestRng::new(label);
        let members = names
            .iter()
            .map(|n| {
                let kp = IdentityKeyPair::generate(n, &mut rng).unwrap();
                let state = GroupSession::new(&kp, "research").unwrap();
                Member { kp, state }
            })
            .collect();
        let mut team = Self {
            rng,
            clock: T0,
            members,
        };
        let names: Vec<usize> = (1..names.len()).collect();
        team.distribute(0, &names);
        team
    }

    fn distribution(&mut self, from: usize) -> Vec<u8> {
        let m = &mut self.members[from];
        m.state.distribution(&m.kp, &mut self.rng).unwrap().to_vec()
    }

    fn distribute(&mut self, from: usize, to: &[usize]) {
        let d = self.distribution(from);
        let sender = self.members[from].kp.agent_id().to_owned();
        let key = self.members[from].kp.identity_key();
        for &i in to {
            self.members[i].state.install(&d, &sender, &key).unwrap();
        }
    }

    fn seal(&mut self, from: usize, payload: &[u8]) -> GroupEnvelope {
        self.clock += 1;
        let m = &mut self.members[from];
        m.state
            .seal(&m.kp, payload, self.clock, &mut self.rng)
            .unwrap()
    }

    fn open(&mut self, at: usize, env: &GroupEnvelope) -> agentmesh_core::Result<Vec<u8>> {
        // through the wire form addressed to this member, as a hub delivers it
        let name = self.members[at].kp.agent_id().to_owned();
        let wire = env.to_bytes_for(&name).unwrap();
        let parsed = GroupEnvelope::from_bytes(&wire)?;
        self.members[at]
            .state
            .open(&parsed)
            .map(|o| o.payload().to_vec())
    }

    fn export(&self, at: usize) -> Vec<u8> {
        self.members[at].state.export_state().to_vec()
    }
}

#[test]
fn every_member_opens_the_one_sealed_message() {
    let mut t = Team::new("g-roundtrip", &["alice", "bob", "carol"]);
    let env = t.seal(0, br#"{"text":"new plan"}"#);
    assert_eq!(t.open(1, &env).unwrap(), br#"{"text":"new plan"}"#);
    assert_eq!(t.open(2, &env).unwrap(), br#"{"text":"new plan"}"#);
    // the wire forms differ only in the routing recipient; the id is the same for all
    let to_bob = env.to_bytes_for("bob").unwrap();
    let to_carol = env.to_bytes_for("carol").unwrap();
    assert_ne!(to_bob, to_carol);
    let (b, c) = (
        GroupEnvelope::from_bytes(&to_bob).unwrap(),
        GroupEnvelope::from_bytes(&to_carol).unwrap(),
    );
    assert_eq!(b.message_id(), c.message_id());
    assert_eq!(b.associated_data(), c.associated_data());
    assert_eq!(b.ciphertext(), c.ciphertext());
    assert_eq!(b.recipient(), Some("bob"));
    assert_eq!(
        env.to_bytes().unwrap_err(),
        Error::InvalidInput(
            "a sealed group message has no recipient yet: address it with to_bytes_for"
        )
    );
}

#[test]
fn the_unaddressed_form_addressed_by_a_hub_is_the_senders_own_copy() {
    let mut t = Team::new("g-unaddressed", &["alice", "bob", "carol"]);
    let env = t.seal(0, br#"{"text":"fan out"}"#);
    let upload = env.to_unaddressed_bytes();
    for member in ["bob", "carol"] {
        let copy = GroupEnvelope::address(&upload, member).unwrap();
        assert_eq!(copy, env.to_bytes_for(member).unwrap());
        let parsed = GroupEnvelope::from_bytes(&copy).unwrap();
        assert_eq!(parsed.to_unaddressed_bytes(), upload);
    }
    assert_eq!(
        t.open(
            1,
            &GroupEnvelope::from_bytes(&GroupEnvelope::address(&upload, "bob").unwrap()).unwrap()
        )
        .unwrap(),
        br#"{"text":"fan out"}"#
    );
    // bad input: an error naming the problem, never a panic
    let wire = env.to_bytes_for("bob").unwrap();
    let pairwise_type = [&upload[..3], &[0x01], &upload[4..]].concat();
    for (data, recipient, want) in [
        (&upload[..], "", "agent id"),
        (&upload[..], "a\nb", "agent id"),
        (&upload[..5], "bob", "truncated"),
        (&upload[..6 + 5], "bob", "ends after its sender id"),
        (&pairwise_type[..], "bob", "not a group message"),
        (&b"XX\x01\x03\x01\x05alice"[..], "bob", "bad magic"),
    ] {
        let err = GroupEnvelope::address(data, recipient).unwrap_err();
        assert!(format!("{err}").contains(want), "{err} ({want})");
    }
    // an addressed copy is no unaddressed form: its recipient would be read as the group id
    let twice = GroupEnvelope::address(&wire, "carol").unwrap();
    assert!(GroupEnvelope::from_bytes(&twice).is_err());
}

#[test]
fn forward_secrecy_within_a_chain() {
    let mut t = Team::new("g-fs", &["alice", "bob"]);
    let first = t.distribution(0);
    let envs: Vec<_> = (0..3)
        .map(|i| t.seal(0, format!("{{\"n\":{i}}}").as_bytes()))
        .collect();
    for e in &envs {
        t.open(1, e).unwrap();
    }
    // bob's complete state, stolen after he read them, opens none of them again
    let stolen = t.export(1);
    let mut thief = GroupSession::import_any(&t.members[1].kp, &stolen).unwrap();
    for e in &envs {
        let wire = GroupEnvelope::from_bytes(&e.to_bytes_for("bob").unwrap()).unwrap();
        assert_eq!(thief.open(&wire).unwrap_err(), Error::Replay);
    }
    // and the chain key that was distributed (which would derive them) is no longer in it
    let first_key = &first[first.len() - 32..];
    assert!(!stolen.windows(32).any(|w| w == first_key));
    // the sender's side: the key after three steps is what the chain holds now
    let mut k = ChainKey::from_bytes(first_key.try_into().unwrap());
    for _ in 0..3 {
        k = group_chain_step(&k).1;
    }
    assert!(stolen.windows(32).any(|w| w == k.as_bytes()));
}

#[test]
fn a_member_cannot_forge_another_members_message() {
    // carol holds alice's chain key: she can make a ciphertext bob's AEAD accepts, but not
    // alice's signature
    let mut t = Team::new("g-forge", &["alice", "bob", "carol"]);
    let d = t.distribution(0);
    let chain_key: [u8; 32] = d[d.len() - 32..].try_into().unwrap();
    let chain_id: [u8; 16] = d[d.len() - 52..d.len() - 36].try_into().unwrap();
    let (mk, _) = group_chain_step(&ChainKey::from_bytes(chain_key));
    let payload = br#"{"text":"transfer everything to carol"}"#;
    let mut aad = Vec::new();
    aad.extend_from_slice(b"AM\x01\x03\x01");
    aad.push(5);
    aad.extend_from_slice(b"alice");
    aad.push(8);
    aad.extend_from_slice(b"research");
    aad.extend_from_slice(&chain_id);
    aad.extend_from_slice(&0u32.to_be_bytes());
    aad.extend_from_slice(&(T0 + 1).to_be_bytes());
    aad.extend_from_slice(&((64 + payload.len() + 16) as u32).to_be_bytes());
    let mut signed = aad.clone();
    signed.extend_from_slice(blake3::hash(payload).as_bytes());
    let signature = sign_labelled(&t.members[2].kp, labels::SIG_GROUP_MESSAGE, &signed);
    let mut plain = signature.to_vec();
    plain.extend_from_slice(payload);
    let tag = seal_separate_tag(&mk, message_nonce(0), &aad, &mut plain).unwrap();
    let mut wire = aad[..11].to_vec(); // AM 01 03 01 id(alice)
    wire.push(3);
    wire.extend_from_slice(b"bob");
    wire.extend_from_slice(&aad[11..]);
    wire.extend_from_slice(&plain);
    wire.extend_from_slice(&tag);
    let forged = GroupEnvelope::from_bytes(&wire).unwrap();
    let before = t.export(1);
    assert_eq!(
        t.members[1].state.open(&forged).unwrap_err(),
        Error::Signature("group message is not signed by its sender")
    );
    assert_eq!(t.export(1), before, "a refused message changed the state");
    // the genuine message 0 still opens: nothing was consumed
    let genuine = t.seal(0, b"{}");
    assert_eq!(t.open(1, &genuine).unwrap(), b"{}");
}

#[test]
fn a_member_cannot_hand_out_a_chain_in_another_members_name() {
    let mut t = Team::new("g-impersonate-dist", &["alice", "bob", "carol"]);
    let d = t.distribution(0); // alice's chain...
    let carol_key = t.members[2].kp.identity_key();
    // ...relayed by carol (the pairwise peer it came from) is refused
    let err = t.members[1]
        .state
        .install(&d, "carol", &carol_key)
        .unwrap_err();
    assert!(matches!(err, Error::Identity(_)), "{err:?}");
}

#[test]
fn replay_is_refused_and_changes_nothing() {
    let mut t = Team::new("g-replay", &["alice", "bob"]);
    let env = t.seal(0, b"{\"n\":1}");
    t.open(1, &env).unwrap();
    let before = t.export(1);
    assert_eq!(t.open(1, &env).unwrap_err(), Error::Replay);
    assert_eq!(t.export(1), before);
    // a replayed distribution cannot rewind the chain either
    let d = t.distribution(0);
    let key = t.members[0].kp.identity_key();
    assert_eq!(
        t.members[1].state.install(&d, "alice", &key).unwrap_err(),
        Error::Replay
    );
    assert_eq!(t.open(1, &env).unwrap_err(), Error::Replay);
}

#[test]
fn every_altered_byte_is_refused_except_the_routing_recipient() {
    let mut t = Team::new("g-tamper", &["alice", "bob"]);
    let env = t.seal(0, br#"{"text":"x"}"#);
    let wire = env.to_bytes_for("bob").unwrap();
    let recipient_at = 5 + 1 + 5; // after AM 01 03 01 and id(alice)
    let before = t.export(1);
    for i in 0..wire.len() {
        if (recipient_at..recipient_at + 4).contains(&i) {
            continue;
        }
        let mut bad = wire.clone();
        bad[i] ^= 0x01;
        let result = GroupEnvelope::from_bytes(&bad).and_then(|e| t.members[1].state.open(&e));
        assert!(result.is_err(), "byte {i} altered and still accepted");
        assert_eq!(
            t.export(1),
            before,
            "byte {i}: a refused message changed the state"
        );
    }
    // the recipient is routing only: readdressed, the message is still the same message
    let readdressed = GroupEnvelope::from_bytes(&env.to_bytes_for("bxb").unwrap()).unwrap();
    assert_eq!(
        t.members[1].state.open(&readdressed).unwrap().payload(),
        br#"{"text":"x"}"#
    );
}

#[test]
fn a_gap_beyond_the_bound_is_refused_before_any_derivation() {
    let mut t = Team::new("g-gap", &["alice", "bob"]);
    let mut last = None;
    for _ in 0..=MAX_GROUP_MESSAGE_GAP + 1 {
        last = Some(t.seal(0, b"{}"));
    }
    let before = t.export(1);
    let err = t.open(1, last.as_ref().unwrap()).unwrap_err();
    assert_eq!(
        err,
        Error::MessageGap {
            gap: u64::from(MAX_GROUP_MESSAGE_GAP + 1),
            limit: MAX_GROUP_MESSAGE_GAP
        }
    );
    assert_eq!(t.export(1), before);
}

#[test]
fn out_of_order_within_the_bound_opens_once_each() {
    let mut t = Team::new("g-order", &["alice", "bob"]);
    let envs: Vec<_> = (0..5)
        .map(|i| t.seal(0, format!("{{\"n\":{i}}}").as_bytes()))
        .collect();
    for i in [3, 0, 4, 1, 2] {
        assert_eq!(
            t.open(1, &envs[i]).unwrap(),
            format!("{{\"n\":{i}}}").as_bytes()
        );
    }
    for e in &envs {
        assert_eq!(t.open(1, e).unwrap_err(), Error::Replay);
    }
    assert_eq!(t.members[1].state.export_state().len(), t.export(1).len());
}

#[test]
fn the_skipped_key_store_is_bounded_per_group() {
    let mut t = Team::new("g-skipped", &["alice", "bob"]);
    let mut last = None;
    // three jumps of the full gap: more skipped keys than the bound
    for _ in 0..3 {
        for _ in 0..=MAX_GROUP_MESSAGE_GAP {
            last = Some(t.seal(0, b"{}"));
        }
        t.open(1, last.as_ref().unwrap()).unwrap();
    }
    let export = t.export(1);
    let restored = GroupSession::import_any(&t.members[1].kp, &export).unwrap();
    assert_eq!(restored.export_state().to_vec(), export);
    // 3000 skipped, 2000 kept: 36 bytes each
    assert!(export.len() > MAX_GROUP_SKIPPED_KEYS * 36);
    assert!(export.len() < (MAX_GROUP_SKIPPED_KEYS + 1) * 36 + 200);
}

#[test]
fn a_removed_member_with_its_full_state_reads_nothing_after_the_removal() {
    let mut t = Team::new("g-remove", &["alice", "bob", "carol"]);
    let before_removal = t.seal(0, b"{\"n\":0}");
    t.open(1, &before_removal).unwrap();
    t.open(2, &before_removal).unwrap();
    // bob is removed: alice starts a new chain and hands it to carol only
    let bob_state = t.export(1);
    t.members[0].state.reset_sending_chain();
    t.distribute(0, &[2]);
    let after = t.seal(0, b"{\"n\":1}");
    assert_eq!(t.open(2, &after).unwrap(), b"{\"n\":1}");
    let mut removed = GroupSession::import_any(&t.members[1].kp, &bob_state).unwrap();
    let wire = GroupEnvelope::from_bytes(&after.to_bytes_for("bob").unwrap()).unwrap();
    assert_eq!(removed.open(&wire).unwrap_err(), Error::Authentication);
    assert_eq!(t.open(1, &after).unwrap_err(), Error::Authentication);
    // and the members forget the removed member's chains
    t.members[2].state.forget_sender("bob");
    assert!(!t.members[2].state.senders().contains(&"bob".to_owned()));
}

#[test]
fn a_late_joiner_reads_nothing_sent_before_it_joined() {
    let mut t = Team::new("g-join", &["alice", "bob", "dave"]);
    // dave (index 2) got the first distribution in Team::new; start over without him
    t.members[2].state = GroupSession::new(&t.members[2].kp, "research").unwrap();
    t.members[0].state.reset_sending_chain();
    t.distribute(0, &[1]);
    let early: Vec<_> = (0..2)
        .map(|i| t.seal(0, format!("{{\"n\":{i}}}").as_bytes()))
        .collect();
    t.distribute(0, &[2]); // dave joins: the chain's state as of now
    let later = t.seal(0, b"{\"n\":2}");
    for e in &early {
        assert_eq!(t.open(2, e).unwrap_err(), Error::Replay);
        t.open(1, e).unwrap();
    }
    assert_eq!(t.open(2, &later).unwrap(), b"{\"n\":2}");
}

#[test]
fn a_loaded_state_starts_a_new_sending_chain() {
    let mut t = Team::new("g-loaded", &["alice", "bob"]);
    t.seal(0, b"{}");
    let id = t.members[0].state.sending_chain_id().unwrap();
    let export = t.export(0);
    let mut loaded = GroupSession::import_any(&t.members[0].kp, &export).unwrap();
    assert_eq!(loaded.sending_chain_id(), None);
    let env = loaded
        .seal(&t.members[0].kp, b"{}", T0, &mut t.rng)
        .unwrap();
    assert_ne!(env.header().chain_id, id);
    // bob has no key for the new chain until it is distributed
    assert_eq!(t.open(1, &env).unwrap_err(), Error::Authentication);
}

#[test]
fn sealed_exports_open_only_for_their_identity() {
    let mut t = Team::new("g-export", &["alice", "bob"]);
    let env = t.seal(0, b"{}");
    t.open(1, &env).unwrap();
    let sealed = t.members[1]
        .state
        .export_sealed(&t.members[1].kp, &mut t.rng)
        .unwrap();
    let restored = GroupSession::import_any(&t.members[1].kp, &sealed).unwrap();
    assert_eq!(restored.export_state().to_vec(), t.export(1));
    assert!(GroupSession::import_any(&t.members[0].kp, &sealed).is_err());
    let mut corrupt = t.export(1);
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 1;
    assert!(matches!(
        GroupSession::import_any(&t.members[1].kp, &corrupt).unwrap_err(),
        Error::KeyFile(_)
    ));
}

#[test]
fn debug_prints_no_secret() {
    let mut t = Team::new("g-debug", &["alice", "bob"]);
    let d = t.distribution(0);
    let key_hex = hex::encode(&d[d.len() - 32..]);
    let bytes_dbg = format!("{:?}", &d[d.len() - 32..]);
    for text in [
        format!("{:?}", t.members[0].state),
        format!("{:?}", t.members[1].state),
    ] {
        assert!(!text.contains(&key_hex));
        assert!(!text.contains(&bytes_dbg[1..bytes_dbg.len() - 1]));
        assert!(text.contains("<secret>"));
    }
}

#[test]
fn membership_is_checked_against_the_administrator() {
    let mut rng = TestRng::new("g-membership");
    let alice = IdentityKeyPair::generate("alice", &mut rng).unwrap();
    let mallory = IdentityKeyPair::generate("mallory", &mut rng).unwrap();
    let members = ["carol".to_owned(), "bob".to_owned(), "bob".to_owned()];
    let record = Membership::sign(&alice, "research", 3, &members).unwrap();
    let m = Membership::verify(&record, &alice.identity_key()).unwrap();
    assert_eq!(m.admin, "alice");
    assert_eq!(m.epoch, 3);
    assert_eq!(m.members, ["alice", "bob", "carol"]);
    // a member's own record claims nothing under the administrator's key
    let forged = Membership::sign(&mallory, "research", 4, &["mallory".to_owned()]).unwrap();
    assert!(matches!(
        Membership::verify(&forged, &alice.identity_key()).unwrap_err(),
        Error::Format(_) | Error::Signature(_)
    ));
    for i in 0..record.len() {
        let mut bad = record.clone();
        bad[i] ^= 0x01;
        assert!(
            Membership::verify(&bad, &alice.identity_key()).is_err(),
            "byte {i}"
        );
    }
}

#[test]
fn parsers_never_panic_on_truncations_and_noise() {
    let mut t = Team::new("g-parse", &["alice", "bob"]);
    let wire = t.seal(0, br#"{"text":"x"}"#).to_bytes_for("bob").unwrap();
    for n in 0..wire.len() {
        assert!(GroupEnvelope::from_bytes(&wire[..n]).is_err());
    }
    let mut extended = wire.clone();
    extended.push(0);
    assert!(GroupEnvelope::from_bytes(&extended).is_err());
    let d = t.distribution(0);
    let key = t.members[0].kp.identity_key();
    for n in 0..d.len() {
        assert!(t.members[1].state.install(&d[..n], "alice", &key).is_err());
    }
    let export = t.export(1);
    for n in 0..export.len() {
        assert!(GroupSession::import_state(&t.members[1].kp, &export[..n]).is_err());
    }
    let mut noise = TestRng::new("noise");
    for len in 0..300 {
        let mut buf = vec![0u8; len];
        rand_core::RngCore::fill_bytes(&mut noise, &mut buf);
        if len > 4 {
            buf[..5].copy_from_slice(b"AM\x01\x03\x01");
        }
        let _ = GroupEnvelope::from_bytes(&buf);
        let _ = Membership::verify(&buf, &key);
        let _ = GroupSession::import_any(&t.members[1].kp, &buf);
    }
}
