//! What the two optimisations of a donation's public-key work would save, measured on the
//! intake's own donations (one core, warm):
//!
//! * **Batch verification of a group's manifests**: `ring`'s single Ed25519 verification (what
//!   validation does, RFC 8032's cofactorless check) against `ed25519-dalek`'s `verify_batch` over
//!   the same messages, signatures and keys, for groups of 16 and 64. `verify_batch` checks one
//!   random combination `Σ z_i·([s_i]B − R_i − [k_i]A_i) = 0` of the signatures' equations, its
//!   128-bit `z_i` drawn from a transcript of the whole batch. A signature whose equation is off
//!   by a small-order point `T` (a signer can make one: add `T` to the nonce point, sign as usual)
//!   fails the single check, but passes in a batch whenever `z_i·T` vanishes — for `T` of order 2,
//!   whenever `z_i` is even, which the *other* signatures of the batch decide. The bench makes
//!   such a signature and counts, over batches that differ only in their other signatures, how
//!   often `verify_batch` accepts what `ring` and `ed25519-dalek`'s own single check refuse: a
//!   donation's acceptance would depend on the group it lands in, which PROTOCOL.md does not
//!   allow; the timing says what that would buy.
//! * **Not recomputing the recipient's public key on every HPKE open**: the `hpke` crate's
//!   receiver setup derives `pk = sk·G` from the private key on each open (RFC 9180 §4.1 puts pkR
//!   in the KEM context); its cost is measured with the crate's own `Kem::sk_to_pk`, beside the
//!   whole open.
//!
//! `cargo bench -p datadonor-intake --bench crypto_options -- [--donations N]`

use std::time::Instant;

use anyhow::{Context as _, Result};
use datadonor_intake::testkit::{self, DonationBuilder};
use datadonor_schemas::signing::{signed_bytes, Context, SignedObject};
use datadonor_schemas::time::{Clock, SystemClock};
use hpke::{Deserializable as _, Kem as _};

fn per_us(t: Instant, n: usize) -> f64 {
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--donations")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048)
        .max(64);
    let dir = tempfile::tempdir()?;
    testkit::init_test_dir(dir.path())?;
    let study = testkit::load_study(dir.path(), "t2d-dk")?;
    let hpke_key = testkit::current_hpke_key(dir.path())?;
    let now = SystemClock.now();
    let keys = datadonor_intake::keys::TransportKeys::load(dir.path(), 86_400, now)?;
    let sk = &keys
        .lookup(hpke_key.0, now)
        .context("no transport key")?
        .private_key;
    let envelopes: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            let mut b = DonationBuilder::new(&study, hpke_key);
            b.n_rows = 50;
            Ok(b.build()?.envelope)
        })
        .collect::<Result<_>>()?;

    // HPKE open, whole, and the recipient public key it derives each time.
    let t = Instant::now();
    let mut manifests = Vec::with_capacity(n);
    for e in &envelopes {
        let env = datadonor_schemas::envelope::Envelope::parse(e)?;
        manifests.push(env.open(sk)?.manifest);
    }
    let open_us = per_us(t, n);
    let hpke_sk = <hpke::kem::X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(sk.to_bytes())
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(hpke::kem::X25519HkdfSha256::sk_to_pk(std::hint::black_box(
            &hpke_sk,
        )));
    }
    let pk_us = per_us(t, n);

    // The manifests' signatures: ring one by one, ed25519-dalek in batches.
    let objects: Vec<SignedObject> = manifests
        .iter()
        .map(|m| SignedObject::from_bytes(m))
        .collect::<Result<_, _>>()?;
    let messages: Vec<Vec<u8>> = objects
        .iter()
        .map(|o| signed_bytes(Context::ConsentManifest, &o.payload))
        .collect();
    let t = Instant::now();
    for o in &objects {
        o.verify(Context::ConsentManifest)?;
    }
    let ring_us = per_us(t, n);
    let sigs: Vec<ed25519_dalek::Signature> = objects
        .iter()
        .map(|o| ed25519_dalek::Signature::from_slice(&o.signature))
        .collect::<Result<_, _>>()?;
    let vks: Vec<ed25519_dalek::VerifyingKey> = objects
        .iter()
        .map(|o| ed25519_dalek::VerifyingKey::from_bytes(&o.public_key.0))
        .collect::<Result<_, _>>()?;
    let mut batch_us = Vec::new();
    for group in [16usize, 64] {
        let t = Instant::now();
        let mut done = 0;
        for start in (0..n - n % group).step_by(group) {
            let msgs: Vec<&[u8]> = messages[start..start + group]
                .iter()
                .map(Vec::as_slice)
                .collect();
            ed25519_dalek::verify_batch(
                &msgs,
                &sigs[start..start + group],
                &vks[start..start + group],
            )?;
            done += group;
        }
        batch_us.push((group, per_us(t, done)));
    }
    println!(
        "{n} donations of 50 rows; per donation, one core: HPKE open {open_us:.1} us, of which \
         deriving the recipient's public key {pk_us:.1} us ({:.0} %)",
        100.0 * pk_us / open_us
    );
    for (group, us) in &batch_us {
        println!(
            "manifest signature: ring one by one {ring_us:.1} us; ed25519-dalek verify_batch in \
             groups of {group} {us:.1} us per signature (saves {:.1} us, {:.0} %)",
            ring_us - us,
            100.0 * (ring_us - us) / ring_us
        );
    }
    let (accepted, tried) = torsion_in_batches(&messages, &sigs, &vks, 64)?;
    println!(
        "a manifest signature off by a point of order 2: refused by ring and by ed25519-dalek one \
         by one; accepted by verify_batch in {accepted} of {tried} groups of 64 that differ only \
         in their other signatures"
    );
    let saved = pk_us + batch_us.last().map_or(0.0, |(_, us)| ring_us - us);
    println!(
        "both together would take {saved:.1} us off the {:.1} us of HPKE open and verification \
         per donation ({:.0} %)",
        open_us + ring_us,
        100.0 * saved / (open_us + ring_us)
    );
    Ok(())
}

/// A signature on `msg` whose verification equation is off by the point of order 2, `(0, -1)`:
/// its nonce point is `[r]B + T`, and `s = r + k·a` with `k = SHA-512(R || A || msg)` as RFC 8032
/// computes it, so `[s]B − R − [k]A = −T`. Returns the public key and the signature.
fn off_by_order_two(msg: &[u8]) -> Result<(ed25519_dalek::VerifyingKey, ed25519_dalek::Signature)> {
    use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
    use curve25519_dalek::edwards::CompressedEdwardsY;
    use curve25519_dalek::scalar::Scalar;
    let mut y = [0xffu8; 32];
    y[0] = 0xec;
    y[31] = 0x7f;
    let t = CompressedEdwardsY(y)
        .decompress()
        .context("(0, -1) is on the curve")?;
    let mut rng = rand::rngs::OsRng;
    let a = Scalar::random(&mut rng);
    let big_a = (&a * ED25519_BASEPOINT_TABLE).compress();
    let r = Scalar::random(&mut rng);
    let big_r = (&r * ED25519_BASEPOINT_TABLE + t).compress();
    let mut h = ring::digest::Context::new(&ring::digest::SHA512);
    h.update(big_r.as_bytes());
    h.update(big_a.as_bytes());
    h.update(msg);
    let mut wide = [0u8; 64];
    wide.copy_from_slice(h.finish().as_ref());
    let k = Scalar::from_bytes_mod_order_wide(&wide);
    let s = r + k * a;
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(big_r.as_bytes());
    sig[32..].copy_from_slice(s.as_bytes());
    Ok((
        ed25519_dalek::VerifyingKey::from_bytes(big_a.as_bytes())?,
        ed25519_dalek::Signature::from_bytes(&sig),
    ))
}

/// How many of the batches of `group` signatures (the crafted one and `group - 1` honest ones,
/// a different window of the honest ones each time) `verify_batch` accepts. Fails if `ring` or
/// the single check accepts the crafted signature.
fn torsion_in_batches(
    messages: &[Vec<u8>],
    sigs: &[ed25519_dalek::Signature],
    vks: &[ed25519_dalek::VerifyingKey],
    group: usize,
) -> Result<(usize, usize)> {
    let msg = b"a consent manifest".as_slice();
    let (vk, sig) = off_by_order_two(msg)?;
    anyhow::ensure!(
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, vk.as_bytes())
            .verify(msg, &sig.to_bytes())
            .is_err(),
        "ring accepted a signature off by a point of order 2"
    );
    anyhow::ensure!(
        vk.verify_strict(msg, &sig).is_err()
            && ed25519_dalek::Verifier::verify(&vk, msg, &sig).is_err(),
        "ed25519-dalek's single check accepted a signature off by a point of order 2"
    );
    let honest = group - 1;
    let (mut accepted, mut tried) = (0, 0);
    for start in 0..messages.len().saturating_sub(honest).min(200) {
        let mut m: Vec<&[u8]> = messages[start..start + honest]
            .iter()
            .map(Vec::as_slice)
            .collect();
        let mut s = sigs[start..start + honest].to_vec();
        let mut v = vks[start..start + honest].to_vec();
        m.push(msg);
        s.push(sig);
        v.push(vk);
        tried += 1;
        if ed25519_dalek::verify_batch(&m, &s, &v).is_ok() {
            accepted += 1;
        }
    }
    Ok((accepted, tried))
}
