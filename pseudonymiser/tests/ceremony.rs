//! The key ceremony step by step, as three instances on three machines run it, and what each
//! step refuses.

use datadonor_pseudonymiser::dkg::{self, Ceremony, DkgError, Endpoint};
use datadonor_pseudonymiser::KeyShare;
use datadonor_schemas::pseudonym::Cpr;
use datadonor_schemas::threshold::{blind, PseudonymiserConfig};

fn ceremony(index: u16) -> Ceremony {
    Ceremony {
        config_id: "dk-test".into(),
        index,
        instances: 3,
        threshold: 2,
    }
}

struct Run {
    r1: Vec<Vec<u8>>,
    states2: Vec<dkg::Round2State>,
    mail: Vec<(u16, u16, Vec<u8>)>,
}

fn through_round2() -> Run {
    let mut states = Vec::new();
    let mut r1 = Vec::new();
    for i in 1..=3 {
        let (s, m) = dkg::round1(&ceremony(i)).expect("round 1");
        states.push(s);
        r1.push(m);
    }
    let mut states2 = Vec::new();
    let mut mail = Vec::new();
    for (i, s) in states.into_iter().enumerate() {
        let from = i as u16 + 1;
        let (s2, out) = dkg::round2(s, &r1).expect("round 2");
        assert_eq!(out.len(), 2, "one sealed share per other instance");
        states2.push(s2);
        mail.extend(out.into_iter().map(|(to, m)| (from, to, m)));
    }
    Run { r1, states2, mail }
}

fn for_me(mail: &[(u16, u16, Vec<u8>)], me: u16) -> Vec<Vec<u8>> {
    mail.iter()
        .filter(|(_, to, _)| *to == me)
        .map(|(_, _, m)| m.clone())
        .collect()
}

fn config(result: &dkg::PublicResult) -> PseudonymiserConfig {
    let endpoints: Vec<Endpoint> = (1..=3)
        .map(|i| Endpoint {
            index: i,
            url: format!("https://p{i}.example"),
            operator: format!("operator {i}"),
        })
        .collect();
    dkg::assemble_config(result, 1, &endpoints, None).expect("config")
}

#[test]
fn three_instances_agree_and_any_two_give_the_same_pseudonym() {
    let run = through_round2();
    let mut shares = Vec::new();
    let mut results = Vec::new();
    for s2 in run.states2 {
        let me = shares.len() as u16 + 1;
        // The states survive being written and read back, as the CLI stores them.
        let s2 = dkg::Round2State::from_json(&s2.to_json()).expect("state");
        let (share, result) = dkg::finish(s2, &for_me(&run.mail, me)).expect("finish");
        shares.push(share);
        results.push(result);
    }
    dkg::check_agreement(&results).expect("all agree");
    let config = config(&results[0]);
    config
        .validate()
        .expect("public shares lie on one polynomial");
    // No two instances hold the same share, and no share is the group key's scalar (its
    // public share differs from the group key).
    for (i, s) in shares.iter().enumerate() {
        assert_ne!(s.public_share(), config.group_public_key);
        for t in &shares[i + 1..] {
            assert_ne!(s.public_share(), t.public_share());
        }
    }
    let cpr = Cpr::parse("0101801234").expect("cpr");
    let mut outputs = Vec::new();
    for pair in [[0usize, 1], [0, 2], [1, 2]] {
        let b = blind(&cpr).expect("blind");
        let answers: Vec<_> = pair
            .iter()
            .map(|&i| shares[i].evaluate(&b.blinded).expect("evaluate"))
            .collect();
        let c = b.combine(&config, &answers, Vec::new()).expect("combine");
        outputs.push(c.output.as_bytes().to_vec());
    }
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(outputs[1], outputs[2]);
    // Share files round-trip and never print the secret.
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("share.json");
    shares[0].write(&p).expect("write");
    let back = KeyShare::read(&p).expect("read");
    assert_eq!(back.public_share(), shares[0].public_share());
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&p).expect("text");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let secret = v["secret_share"].as_str().expect("secret").to_string();
    assert!(!format!("{:?}", shares[0]).contains(&secret));
    assert!(format!("{:?}", shares[0]).contains("redacted"));
}

#[test]
fn a_tampered_ceremony_is_refused() {
    let run = through_round2();
    let mut states = run.states2.into_iter();
    let s1 = states.next().expect("state 1");
    // A share addressed to instance 2 given to instance 1.
    let mut wrong = for_me(&run.mail, 1);
    wrong[0] = for_me(&run.mail, 2)[0].clone();
    let err = dkg::finish(s1, &wrong).expect_err("misaddressed");
    assert!(
        matches!(&err, DkgError::BadMessage { reason, .. } if reason.contains("addressed to instance 2")),
        "{err}"
    );

    // A round-2 message re-signed by a key other than the sender's round-1 identity.
    let s2 = states.next().expect("state 2");
    let mut mine = for_me(&run.mail, 2);
    let mut obj =
        datadonor_schemas::signing::SignedObject::from_bytes(&mine[0]).expect("signed object");
    let other = datadonor_schemas::signing::SigningKey::generate().expect("key");
    let body: serde_json::Value = serde_json::from_slice(&obj.payload).expect("payload");
    obj = datadonor_schemas::signing::SignedObject::sign(
        datadonor_schemas::signing::Context::DkgMessage,
        &body,
        &other,
    );
    mine[0] = obj.to_bytes();
    let err = dkg::finish(s2, &mine).expect_err("forged sender");
    assert!(err.to_string().contains("not signed by the key"), "{err}");

    // Round 2 with one round-1 message missing, or one message twice.
    let (s, _) = dkg::round1(&ceremony(1)).expect("round 1");
    let err = dkg::round2(s, &run.r1[..2]).expect_err("missing");
    assert!(matches!(err, DkgError::Messages(_)), "{err}");
    let (s, _) = dkg::round1(&ceremony(1)).expect("round 1");
    let dup = vec![run.r1[0].clone(), run.r1[0].clone(), run.r1[1].clone()];
    assert!(dkg::round2(s, &dup).is_err());
    // This instance's index with someone else's round-1 message in it.
    let (s, _) = dkg::round1(&ceremony(1)).expect("round 1");
    let err = dkg::round2(s, &run.r1).expect_err("not its own message");
    assert!(err.to_string().contains("not made by it"), "{err}");
    // Parameters that give no threshold.
    for (t, n, i) in [
        (1u16, 3u16, 1u16),
        (4, 3, 1),
        (2, 3, 0),
        (2, 3, 4),
        (2, 17, 1),
    ] {
        let c = Ceremony {
            config_id: "x".into(),
            index: i,
            instances: n,
            threshold: t,
        };
        assert!(
            matches!(dkg::round1(&c), Err(DkgError::Parameters(_))),
            "{t} {n} {i}"
        );
    }
}

#[test]
fn instances_that_disagree_are_refused() {
    let (_, a) = dkg::run_local("dk-test", 3, 2).expect("a");
    let (_, b) = dkg::run_local("dk-test", 3, 2).expect("b");
    assert!(dkg::check_agreement(&[a.clone(), a.clone()]).is_ok());
    assert!(dkg::check_agreement(&[a.clone(), b.clone()]).is_err());
    // A configuration mixing public shares of two keys does not validate.
    let mut mixed = a.clone();
    mixed.public_shares[2] = b.public_shares[2].clone();
    let endpoints: Vec<Endpoint> = (1..=3)
        .map(|i| Endpoint {
            index: i,
            url: format!("https://p{i}.example"),
            operator: "o".into(),
        })
        .collect();
    let err = dkg::assemble_config(&mixed, 1, &endpoints, None).expect_err("mixed");
    assert!(err.to_string().contains("instance 3"), "{err}");
}
