//! RFC 9162 (RFC 6962) Merkle tree hashing, proofs and verification for the
//! Datadonor transparency log.
//!
//! Leaves are hashed as `SHA-256(0x00 || data)` and interior nodes as
//! `SHA-256(0x01 || left || right)`; the hash of the empty tree is
//! `SHA-256("")`. The tree shape is the one of RFC 9162 §2.1.1: a tree of `n`
//! leaves splits at the largest power of two strictly smaller than `n`.
//!
//! The module offers:
//!
//! * slice-based reference functions ([`root`], [`inclusion_proof`],
//!   [`consistency_proof`]) that take O(n) hash operations;
//! * [`MerkleLog`], an append-only in-memory log that caches every complete
//!   (perfect) subtree, so roots and proofs for any past size cost O(log n)
//!   hash operations and cache look-ups;
//! * verifiers ([`verify_inclusion`], [`verify_consistency`]) implementing
//!   RFC 9162 §2.1.3.2 and §2.1.4.2 on raw byte slices.
//!
//! The verifiers apply a policy that is stricter than a bare RFC 9162
//! verifier (and match the published Datadonor test vectors):
//!
//! * in an inclusion proof, a leaf hash or root that is not 32 bytes long is
//!   rejected ([`MerkleError::WrongHashLength`]);
//! * every proof element must be 32 bytes long;
//! * a consistency proof from the empty tree (`size1 == 0`) is rejected
//!   ([`MerkleError::Size1Zero`]), even when `size2 == 0`: it proves nothing;
//! * when `size1 == size2` the proof must be empty and only the two roots are
//!   compared, byte for byte (whatever their length).

use std::fmt;

use ring::digest;

/// Length in bytes of every hash in the tree (SHA-256).
pub const HASH_LEN: usize = 32;

/// A SHA-256 hash: a leaf hash, an interior node hash or a tree root.
///
/// `Debug` and `Display` print it as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; HASH_LEN]);

impl Hash {
    /// Reads a hash from a byte slice that must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, MerkleError> {
        Self::from_named_slice(bytes, "hash")
    }

    fn from_named_slice(bytes: &[u8], field: &'static str) -> Result<Self, MerkleError> {
        <[u8; HASH_LEN]>::try_from(bytes)
            .map(Hash)
            .map_err(|_| MerkleError::WrongHashLength {
                field,
                length: bytes.len(),
            })
    }

    /// The 32 bytes of the hash.
    pub fn as_bytes(&self) -> &[u8; HASH_LEN] {
        &self.0
    }

    /// Lowercase hex encoding of the hash (64 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl AsRef<[u8]> for Hash {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<[u8; HASH_LEN]> for Hash {
    fn from(bytes: [u8; HASH_LEN]) -> Self {
        Hash(bytes)
    }
}

/// Errors from Merkle proof generation and verification.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// A leaf index is not smaller than the tree size (or the tree size
    /// exceeds the number of leaves available).
    #[error("leaf index {index} out of range for tree size {size}")]
    IndexOutOfRange {
        /// The requested leaf index.
        index: u64,
        /// The tree size it was checked against.
        size: u64,
    },
    /// A requested tree size is larger than the log or leaf list.
    #[error("tree size {size} exceeds the {available} leaves available")]
    SizeOutOfRange {
        /// The requested tree size.
        size: u64,
        /// The number of leaves actually available.
        available: u64,
    },
    /// A hash (leaf hash, root or proof element) is not 32 bytes long.
    #[error("{field} is {length} bytes long, expected 32")]
    WrongHashLength {
        /// Which input had the wrong length ("root", "leaf hash", "proof element", ...).
        field: &'static str,
        /// Its actual length in bytes.
        length: usize,
    },
    /// The proof does not have the number of elements the sizes require.
    #[error("proof has {actual} elements, expected {expected}")]
    ProofLength {
        /// Number of elements required by the leaf index and tree sizes.
        expected: usize,
        /// Number of elements supplied.
        actual: usize,
    },
    /// The root recomputed from the proof (for a consistency proof: the
    /// root of the larger tree) differs from the expected root.
    #[error("recomputed root does not match the expected root")]
    RootMismatch,
    /// In a consistency proof, the root recomputed for the smaller tree
    /// differs from `root1`.
    #[error("recomputed root of the first tree does not match root1")]
    Root1Mismatch,
    /// A consistency proof from the empty tree was requested or supplied;
    /// this policy rejects it because it proves nothing.
    #[error("consistency proof with size1 = 0 is not accepted")]
    Size1Zero,
    /// A consistency proof with `size1 > size2` was requested or supplied.
    #[error("size1 ({size1}) is greater than size2 ({size2})")]
    Size1GreaterThanSize2 {
        /// The first (older) tree size.
        size1: u64,
        /// The second (newer) tree size.
        size2: u64,
    },
}

fn sha256_parts(parts: &[&[u8]]) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    let digest = ctx.finish();
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(digest.as_ref());
    Hash(out)
}

/// Hash of a leaf: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    sha256_parts(&[&[0x00], data])
}

/// Hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256_parts(&[&[0x01], &left.0, &right.0])
}

/// Root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    sha256_parts(&[])
}

/// Largest power of two strictly smaller than `n`; `n` must be at least 2.
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    let bits = 63u32.saturating_sub(n.saturating_sub(1).leading_zeros());
    1u64 << bits
}

fn to_usize(value: u64, size: u64) -> Result<usize, MerkleError> {
    usize::try_from(value).map_err(|_| MerkleError::IndexOutOfRange { index: value, size })
}

/// Root of the tree whose leaf hashes are `leaves` (RFC 9162 MTH).
///
/// The root of the empty tree is `SHA-256("")`. Takes `n - 1` node hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [only] => *only,
        _ => {
            let len = leaves.len() as u64;
            let k = usize::try_from(split_point(len)).unwrap_or(leaves.len() / 2);
            match leaves.split_at_checked(k) {
                Some((left, right)) => node_hash(&root(left), &root(right)),
                None => empty_root(), // unreachable: k < leaves.len()
            }
        }
    }
}

/// Source of subtree roots over leaf ranges `[start, end)` that are nodes of
/// the RFC 9162 tree shape (`start` aligned to the subtree's size class).
trait SubtreeSource {
    /// Number of leaves available.
    fn available(&self) -> u64;
    /// MTH of leaves `[start, end)`, `start < end <= available()`.
    fn mth(&self, start: u64, end: u64) -> Result<Hash, MerkleError>;
}

struct SliceSource<'a>(&'a [Hash]);

impl SubtreeSource for SliceSource<'_> {
    fn available(&self) -> u64 {
        self.0.len() as u64
    }

    fn mth(&self, start: u64, end: u64) -> Result<Hash, MerkleError> {
        let s = to_usize(start, end)?;
        let e = to_usize(end, end)?;
        self.0
            .get(s..e)
            .map(root)
            .ok_or(MerkleError::IndexOutOfRange {
                index: end,
                size: self.available(),
            })
    }
}

fn check_size<S: SubtreeSource>(src: &S, size: u64) -> Result<(), MerkleError> {
    let available = src.available();
    if size > available {
        return Err(MerkleError::SizeOutOfRange { size, available });
    }
    Ok(())
}

/// RFC 9162 §2.1.3.1 PATH(m, D[0:size]).
fn inclusion_path<S: SubtreeSource>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, MerkleError> {
    check_size(src, size)?;
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let mut path = Vec::with_capacity(64);
    let (mut a, mut b, mut m) = (0u64, size, index);
    while b - a > 1 {
        let k = split_point(b - a);
        if m < k {
            path.push(src.mth(a + k, b)?);
            b = a + k;
        } else {
            path.push(src.mth(a, a + k)?);
            a += k;
            m -= k;
        }
    }
    path.reverse();
    Ok(path)
}

/// RFC 9162 §2.1.4.1 PROOF(size1, D[0:size2]).
fn consistency_path<S: SubtreeSource>(
    src: &S,
    size1: u64,
    size2: u64,
) -> Result<Vec<Hash>, MerkleError> {
    check_size(src, size2)?;
    if size1 > size2 {
        return Err(MerkleError::Size1GreaterThanSize2 { size1, size2 });
    }
    if size1 == 0 {
        return Err(MerkleError::Size1Zero);
    }
    let mut path = Vec::with_capacity(64);
    let (mut a, mut b, mut m, mut complete) = (0u64, size2, size1, true);
    loop {
        let len = b - a;
        if m == len {
            if !complete {
                path.push(src.mth(a, b)?);
            }
            break;
        }
        // Here 1 <= m < len, so len >= 2.
        let k = split_point(len);
        if m <= k {
            path.push(src.mth(a + k, b)?);
            b = a + k;
        } else {
            path.push(src.mth(a, a + k)?);
            a += k;
            m -= k;
            complete = false;
        }
    }
    path.reverse();
    Ok(path)
}

/// Inclusion proof (RFC 9162 §2.1.3.1) for leaf `index` in the tree made of
/// all of `leaves`. O(n) hash operations; see [`MerkleLog`] for O(log n).
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Result<Vec<Hash>, MerkleError> {
    inclusion_path(&SliceSource(leaves), index, leaves.len() as u64)
}

/// Consistency proof (RFC 9162 §2.1.4.1) from the tree of the first `size1`
/// leaves to the tree made of all of `leaves`.
///
/// `size1 == 0` is rejected ([`MerkleError::Size1Zero`]); `size1 ==
/// leaves.len()` gives the empty proof. O(n) hash operations.
pub fn consistency_proof(leaves: &[Hash], size1: u64) -> Result<Vec<Hash>, MerkleError> {
    consistency_path(&SliceSource(leaves), size1, leaves.len() as u64)
}

/// Number of elements in an inclusion proof for `index < size`.
fn inclusion_proof_len(index: u64, size: u64) -> usize {
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    (inner + border) as usize
}

/// Number of elements in a consistency proof for `0 < size1 < size2`.
fn consistency_proof_len(size1: u64, size2: u64) -> usize {
    let shift = size1.trailing_zeros();
    let inner = 64 - ((size1 - 1) ^ (size2 - 1)).leading_zeros();
    let border = (size1 - 1).checked_shr(inner).unwrap_or(0).count_ones();
    let start = u32::from(!size1.is_power_of_two());
    (start + inner.saturating_sub(shift) + border) as usize
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2): that `leaf_hash` is the
/// leaf at `leaf_index` of the tree of size `tree_size` with root `root`.
///
/// `leaf_hash`, `root` and every proof element must be 32 bytes long.
pub fn verify_inclusion<P: AsRef<[u8]>>(
    leaf_index: u64,
    tree_size: u64,
    leaf_hash: &[u8],
    proof: &[P],
    root: &[u8],
) -> Result<(), MerkleError> {
    let leaf = Hash::from_named_slice(leaf_hash, "leaf hash")?;
    let root = Hash::from_named_slice(root, "root")?;
    if leaf_index >= tree_size {
        return Err(MerkleError::IndexOutOfRange {
            index: leaf_index,
            size: tree_size,
        });
    }
    let expected = inclusion_proof_len(leaf_index, tree_size);
    if proof.len() != expected {
        return Err(MerkleError::ProofLength {
            expected,
            actual: proof.len(),
        });
    }
    let mut f = leaf_index;
    let mut s = tree_size - 1;
    let mut r = leaf;
    for p in proof {
        let p = Hash::from_named_slice(p.as_ref(), "proof element")?;
        if s == 0 {
            return Err(MerkleError::ProofLength {
                expected,
                actual: proof.len(),
            });
        }
        if f & 1 == 1 || f == s {
            r = node_hash(&p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, &p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(MerkleError::ProofLength {
            expected,
            actual: proof.len(),
        });
    }
    if r != root {
        return Err(MerkleError::RootMismatch);
    }
    Ok(())
}

/// Verifies a consistency proof (RFC 9162 §2.1.4.2) between the tree of size
/// `size1` with root `root1` and the tree of size `size2` with root `root2`.
///
/// Policy: `size1 == 0` is rejected; when `size1 == size2` the proof must be
/// empty and the roots are compared byte for byte; otherwise both roots and
/// every proof element must be 32 bytes long.
pub fn verify_consistency<P: AsRef<[u8]>>(
    size1: u64,
    size2: u64,
    proof: &[P],
    root1: &[u8],
    root2: &[u8],
) -> Result<(), MerkleError> {
    if size1 > size2 {
        return Err(MerkleError::Size1GreaterThanSize2 { size1, size2 });
    }
    if size1 == 0 {
        return Err(MerkleError::Size1Zero);
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(MerkleError::ProofLength {
                expected: 0,
                actual: proof.len(),
            });
        }
        if root1 != root2 {
            return Err(MerkleError::RootMismatch);
        }
        return Ok(());
    }
    let root1 = Hash::from_named_slice(root1, "root1")?;
    let root2 = Hash::from_named_slice(root2, "root2")?;
    let expected = consistency_proof_len(size1, size2);
    if proof.len() != expected || proof.is_empty() {
        return Err(MerkleError::ProofLength {
            expected,
            actual: proof.len(),
        });
    }
    let length_error = MerkleError::ProofLength {
        expected,
        actual: proof.len(),
    };

    let mut elements = proof.iter();
    let first = if size1.is_power_of_two() {
        root1
    } else {
        match elements.next() {
            Some(p) => Hash::from_named_slice(p.as_ref(), "proof element")?,
            None => return Err(length_error),
        }
    };
    let mut f = size1 - 1;
    let mut s = size2 - 1;
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let mut fr = first;
    let mut sr = first;
    for c in elements {
        let c = Hash::from_named_slice(c.as_ref(), "proof element")?;
        if s == 0 {
            return Err(length_error);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(&c, &fr);
            sr = node_hash(&c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, &c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(length_error);
    }
    if fr != root1 {
        return Err(MerkleError::Root1Mismatch);
    }
    if sr != root2 {
        return Err(MerkleError::RootMismatch);
    }
    Ok(())
}

/// Largest proof answer accepted by [`ProofAnswer::from_json`], in bytes.
pub const MAX_PROOF_ANSWER_LEN: usize = 65536;

/// The JSON answer of the intake's public proof endpoints, `GET /v1/ledger/inclusion` and
/// `GET /v1/ledger/consistency`: `{"proof":["<64 lowercase hex digits>",...]}`, the proof's
/// hashes in order.
///
/// Parsing checks only the form; whether the number of hashes fits the sizes asked for, and
/// whether they lead to the expected roots, is [`verify_inclusion`]'s and
/// [`verify_consistency`]'s business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofAnswer {
    /// The proof's hashes, in the order of the answer.
    pub proof: Vec<Hash>,
}

/// Why a proof answer does not parse.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofAnswerError {
    /// Not one strict JSON object with the single member `proof`, an array of strings, or
    /// longer than [`MAX_PROOF_ANSWER_LEN`].
    #[error(transparent)]
    Malformed(#[from] crate::WireError),
    /// Element `index` (from 0) holds a character other than `0-9a-f` (uppercase included).
    #[error("proof element {index} is not lowercase hex")]
    BadHex {
        /// Position of the element in `proof`.
        index: usize,
    },
    /// Element `index` (from 0) is lowercase hex of other than 32 bytes (64 digits).
    #[error("proof element {index} has {digits} hex digits, expected 64")]
    WrongLength {
        /// Position of the element in `proof`.
        index: usize,
        /// Its number of characters.
        digits: usize,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofAnswerWire {
    proof: Vec<String>,
}

impl ProofAnswer {
    /// Parses an answer strictly (see "Conventions" in `PROTOCOL.md`): at most
    /// [`MAX_PROOF_ANSWER_LEN`] bytes, one JSON object, nothing after it; then every element,
    /// in order, must be 64 lowercase hex digits (the first failing element is reported).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ProofAnswerError> {
        let wire: ProofAnswerWire =
            crate::wire::parse_json(bytes, "proof answer", MAX_PROOF_ANSWER_LEN)?;
        let proof = wire
            .proof
            .iter()
            .enumerate()
            .map(|(index, h)| {
                if !h
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return Err(ProofAnswerError::BadHex { index });
                }
                let mut out = [0u8; HASH_LEN];
                match hex::decode_to_slice(h, &mut out) {
                    Ok(()) => Ok(Hash(out)),
                    Err(_) => Err(ProofAnswerError::WrongLength {
                        index,
                        digits: h.len(),
                    }),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { proof })
    }

    /// The answer as the intake writes it: compact JSON, hashes in lowercase hex.
    pub fn to_json(&self) -> Vec<u8> {
        let wire = ProofAnswerWire {
            proof: self.proof.iter().map(Hash::to_hex).collect(),
        };
        serde_json::to_vec(&wire).unwrap_or_default()
    }
}

/// An append-only, in-memory Merkle log that grows one leaf at a time.
///
/// Besides the leaf hashes it stores the hash of every complete (perfect,
/// power-of-two-sized, aligned) subtree, about one extra hash per leaf.
/// Appending costs amortised O(1) hash operations (one leaf hash plus at most
/// one node hash on average). The root at any past size and inclusion /
/// consistency proofs between any past sizes cost O(log n) hash operations:
/// every proof element is a cached perfect subtree except at most one, on the
/// right edge of the tree, which is folded from O(log n) cached subtrees.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MerkleLog {
    /// `levels[h][i]` is the root of the perfect subtree of `2^h` leaves
    /// starting at leaf `i * 2^h`; `levels[0]` are the leaf hashes. Invariant:
    /// `levels[h].len() == size >> h` for every stored level.
    levels: Vec<Vec<Hash>>,
}

impl MerkleLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// A log holding `leaves`, in order.
    pub fn from_leaves<I: IntoIterator<Item = Hash>>(leaves: I) -> Self {
        let mut log = Self::new();
        for leaf in leaves {
            log.push(leaf);
        }
        log
    }

    /// Appends a leaf hash and returns its index.
    pub fn push(&mut self, leaf: Hash) -> u64 {
        let mut carry = leaf;
        let mut level = 0usize;
        let index = self.size();
        loop {
            if self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            let Some(row) = self.levels.get_mut(level) else {
                break;
            };
            row.push(carry);
            let len = row.len();
            if len % 2 != 0 {
                break;
            }
            match (row.get(len - 2), row.get(len - 1)) {
                (Some(left), Some(right)) => carry = node_hash(left, right),
                _ => break,
            }
            level += 1;
        }
        index
    }

    /// Number of leaves in the log.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaves.len() as u64)
    }

    /// Whether the log has no leaves.
    pub fn is_empty(&self) -> bool {
        self.size() == 0
    }

    /// The leaf hashes, in order.
    pub fn leaves(&self) -> &[Hash] {
        self.levels.first().map_or(&[], Vec::as_slice)
    }

    /// The leaf hash at `index`, if any.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        let i = usize::try_from(index).ok()?;
        self.leaves().get(i).copied()
    }

    /// Root of the whole log.
    pub fn root(&self) -> Hash {
        self.root_at(self.size()).unwrap_or_else(|_| empty_root())
    }

    /// Root of the tree made of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, MerkleError> {
        check_size(self, size)?;
        if size == 0 {
            return Ok(empty_root());
        }
        self.mth(0, size)
    }

    /// Inclusion proof for leaf `index` in the tree of the first `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, MerkleError> {
        inclusion_path(self, index, size)
    }

    /// Consistency proof from the tree of size `size1` to the tree of size
    /// `size2` (`0 < size1 <= size2 <= self.size()`).
    pub fn consistency_proof(&self, size1: u64, size2: u64) -> Result<Vec<Hash>, MerkleError> {
        consistency_path(self, size1, size2)
    }

    fn perfect(&self, height: u32, start: u64) -> Result<Hash, MerkleError> {
        let row = usize::try_from(height)
            .ok()
            .and_then(|h| self.levels.get(h));
        let i = usize::try_from(start >> height).ok();
        match (row, i) {
            (Some(row), Some(i)) => row.get(i).copied(),
            _ => None,
        }
        .ok_or(MerkleError::IndexOutOfRange {
            index: start,
            size: self.size(),
        })
    }
}

impl SubtreeSource for MerkleLog {
    fn available(&self) -> u64 {
        self.size()
    }

    fn mth(&self, start: u64, end: u64) -> Result<Hash, MerkleError> {
        mth_of_perfect(start, end, self.size(), |h, pos| self.perfect(h, pos))
    }
}

/// MTH of `[start, end)` folded from the perfect subtrees it decomposes into, largest first;
/// for a node of the RFC 9162 tree shape `start` is aligned to each of them, and MTH folds them
/// from the right. `perfect(height, start)` gives the root of the perfect subtree of `2^height`
/// leaves from leaf `start`.
fn mth_of_perfect(
    start: u64,
    end: u64,
    size: u64,
    perfect: impl Fn(u32, u64) -> Result<Hash, MerkleError>,
) -> Result<Hash, MerkleError> {
    if start >= end || end > size {
        return Err(MerkleError::IndexOutOfRange { index: end, size });
    }
    let mut pieces: Vec<Hash> = Vec::with_capacity(64);
    let mut pos = start;
    let mut remaining = end - start;
    while remaining > 0 {
        let height = 63 - remaining.leading_zeros();
        debug_assert_eq!(pos % (1u64 << height), 0, "unaligned subtree");
        pieces.push(perfect(height, pos)?);
        let width = 1u64 << height;
        pos += width;
        remaining -= width;
    }
    let mut acc = match pieces.pop() {
        Some(last) => last,
        None => return Ok(empty_root()),
    };
    while let Some(left) = pieces.pop() {
        acc = node_hash(&left, &acc);
    }
    Ok(acc)
}

/// A position in the tree of perfect subtrees: `(height, index)` is the root of the `2^height`
/// leaves from leaf `index << height` (height 0: the leaf hashes).
pub type NodeId = (u32, u64);

/// Perfect-subtree roots kept somewhere else (a database table): proofs are computed from them
/// in O(log n) lookups, asking first which nodes they need ([`inclusion_nodes`],
/// [`consistency_nodes`]) so a store can fetch them in one read.
pub trait PerfectNodes {
    /// The root of perfect subtree `node`, if known.
    fn node(&self, node: NodeId) -> Option<Hash>;
}

impl PerfectNodes for std::collections::HashMap<NodeId, Hash> {
    fn node(&self, node: NodeId) -> Option<Hash> {
        self.get(&node).copied()
    }
}

struct NodeSource<'a, P: PerfectNodes> {
    nodes: &'a P,
    size: u64,
}

impl<P: PerfectNodes> SubtreeSource for NodeSource<'_, P> {
    fn available(&self) -> u64 {
        self.size
    }
    fn mth(&self, start: u64, end: u64) -> Result<Hash, MerkleError> {
        mth_of_perfect(start, end, self.size, |h, pos| {
            self.nodes
                .node((h, pos >> h))
                .ok_or(MerkleError::IndexOutOfRange {
                    index: pos,
                    size: self.size,
                })
        })
    }
}

/// Records the nodes a proof asks for (answering with a placeholder).
struct Recorder {
    size: u64,
    asked: std::cell::RefCell<Vec<NodeId>>,
}

impl SubtreeSource for Recorder {
    fn available(&self) -> u64 {
        self.size
    }
    fn mth(&self, start: u64, end: u64) -> Result<Hash, MerkleError> {
        mth_of_perfect(start, end, self.size, |h, pos| {
            self.asked.borrow_mut().push((h, pos >> h));
            Ok(empty_root())
        })
    }
}

fn recorded(
    size: u64,
    run: impl FnOnce(&Recorder) -> Result<Vec<Hash>, MerkleError>,
) -> Result<Vec<NodeId>, MerkleError> {
    let r = Recorder {
        size,
        asked: std::cell::RefCell::new(Vec::new()),
    };
    run(&r)?;
    let mut v = r.asked.into_inner();
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// The perfect subtrees an inclusion proof of `index` in the tree of `size` is made from.
pub fn inclusion_nodes(index: u64, size: u64) -> Result<Vec<NodeId>, MerkleError> {
    recorded(size, |r| inclusion_path(r, index, size))
}

/// The perfect subtrees a consistency proof from `size1` to `size2` is made from.
pub fn consistency_nodes(size1: u64, size2: u64) -> Result<Vec<NodeId>, MerkleError> {
    recorded(size2, |r| consistency_path(r, size1, size2))
}

/// The perfect subtrees the root of the tree of `size` is folded from (its right edge).
pub fn root_nodes(size: u64) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    let mut remaining = size;
    while remaining > 0 {
        let height = 63 - remaining.leading_zeros();
        out.push((height, pos >> height));
        pos += 1u64 << height;
        remaining -= 1u64 << height;
    }
    out
}

/// Inclusion proof (RFC 9162 §2.1.3.1) of `index` in the tree of `size`, from stored nodes
/// (at least those [`inclusion_nodes`] names).
pub fn inclusion_proof_from<P: PerfectNodes>(
    nodes: &P,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, MerkleError> {
    inclusion_path(&NodeSource { nodes, size }, index, size)
}

/// Consistency proof (RFC 9162 §2.1.4.1) from `size1` to `size2`, from stored nodes (at least
/// those [`consistency_nodes`] names).
pub fn consistency_proof_from<P: PerfectNodes>(
    nodes: &P,
    size1: u64,
    size2: u64,
) -> Result<Vec<Hash>, MerkleError> {
    consistency_path(&NodeSource { nodes, size: size2 }, size1, size2)
}

/// Root of the tree of `size` from stored nodes (at least those [`root_nodes`] names).
pub fn root_from<P: PerfectNodes>(nodes: &P, size: u64) -> Result<Hash, MerkleError> {
    if size == 0 {
        return Ok(empty_root());
    }
    NodeSource { nodes, size }.mth(0, size)
}

/// The right edge of a log: the roots of the perfect subtrees of the binary decomposition of
/// its size, which is all an append needs. [`Frontier::push`] returns every perfect subtree the
/// new leaf completes, for a store to keep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `(height, root)` of each perfect subtree on the right edge, largest (leftmost) first.
    edge: Vec<(u32, Hash)>,
}

impl Frontier {
    /// An empty log's.
    pub fn new() -> Self {
        Self::default()
    }

    /// The frontier of the tree of `size` from stored nodes (those [`root_nodes`] names).
    pub fn from_nodes<P: PerfectNodes>(nodes: &P, size: u64) -> Result<Self, MerkleError> {
        let edge = root_nodes(size)
            .into_iter()
            .map(|(h, i)| {
                nodes
                    .node((h, i))
                    .map(|hash| (h, hash))
                    .ok_or(MerkleError::IndexOutOfRange {
                        index: i << h,
                        size,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { size, edge })
    }

    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect subtrees on the right edge, with their ids (those [`root_nodes`] names).
    pub fn edge(&self) -> Vec<(NodeId, Hash)> {
        root_nodes(self.size)
            .into_iter()
            .zip(self.edge.iter().map(|(_, h)| *h))
            .collect()
    }

    /// Append a leaf hash; returns its index and the perfect subtrees it completed (the leaf
    /// itself at height 0 first, then each parent it closed).
    pub fn push(&mut self, leaf: Hash) -> (u64, Vec<(NodeId, Hash)>) {
        let index = self.size;
        let mut done = vec![((0, index), leaf)];
        let mut carry = (0u32, leaf);
        while let Some(&(h, left)) = self.edge.last() {
            if h != carry.0 {
                break;
            }
            self.edge.pop();
            let parent = node_hash(&left, &carry.1);
            let height = h + 1;
            done.push(((height, index >> height), parent));
            carry = (height, parent);
        }
        self.edge.push(carry);
        self.size += 1;
        (index, done)
    }

    /// Root of the tree so far.
    pub fn root(&self) -> Hash {
        let mut it = self.edge.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return empty_root();
        };
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

impl FromIterator<Hash> for MerkleLog {
    fn from_iter<I: IntoIterator<Item = Hash>>(iter: I) -> Self {
        Self::from_leaves(iter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn log_matches_slice_functions() {
        let all = leaves(70);
        let log: MerkleLog = all.iter().copied().collect();
        for n in 0..=70u64 {
            let prefix = &all[..n as usize];
            assert_eq!(log.root_at(n).unwrap(), root(prefix), "root {n}");
            for i in 0..n {
                assert_eq!(
                    log.inclusion_proof(i, n).unwrap(),
                    inclusion_proof(prefix, i).unwrap()
                );
            }
            for m in 1..=n {
                assert_eq!(
                    log.consistency_proof(m, n).unwrap(),
                    consistency_proof(prefix, m).unwrap()
                );
            }
        }
    }

    /// Proofs and roots from stored perfect nodes (as a database keeps them, filled by
    /// `Frontier::push`) equal the in-memory log's, asking only for the nodes they name.
    #[test]
    fn stored_nodes_give_the_logs_proofs() {
        let all = leaves(70);
        let log: MerkleLog = all.iter().copied().collect();
        let mut frontier = Frontier::new();
        let mut stored: std::collections::HashMap<NodeId, Hash> = Default::default();
        for (n, leaf) in all.iter().enumerate() {
            assert_eq!(frontier.root(), log.root_at(n as u64).unwrap(), "root {n}");
            let (i, done) = frontier.push(*leaf);
            assert_eq!(i, n as u64);
            stored.extend(done);
        }
        assert_eq!(frontier.root(), log.root());
        for n in 1..=70u64 {
            let only = |ids: Vec<NodeId>| -> std::collections::HashMap<NodeId, Hash> {
                ids.into_iter().map(|id| (id, stored[&id])).collect()
            };
            assert_eq!(
                root_from(&only(root_nodes(n)), n).unwrap(),
                log.root_at(n).unwrap()
            );
            let f = Frontier::from_nodes(&only(root_nodes(n)), n).unwrap();
            assert_eq!((f.size(), f.root()), (n, log.root_at(n).unwrap()));
            for (id, h) in f.edge() {
                assert_eq!(stored[&id], h, "edge node {id:?} of {n}");
            }
            for i in 0..n {
                let nodes = only(inclusion_nodes(i, n).unwrap());
                assert_eq!(
                    inclusion_proof_from(&nodes, i, n).unwrap(),
                    log.inclusion_proof(i, n).unwrap(),
                    "inclusion {i} in {n}"
                );
            }
            for m in 1..=n {
                let nodes = only(consistency_nodes(m, n).unwrap());
                assert_eq!(
                    consistency_proof_from(&nodes, m, n).unwrap(),
                    log.consistency_proof(m, n).unwrap(),
                    "consistency {m} to {n}"
                );
            }
        }
        // A missing node is an error, not a wrong proof.
        assert!(inclusion_proof_from(&std::collections::HashMap::new(), 3, 9).is_err());
        // A frontier continued from stored nodes goes on like the original.
        let mut f = Frontier::from_nodes(&stored, 37).unwrap();
        let mut g = Frontier::new();
        for leaf in &all[..37] {
            g.push(*leaf);
        }
        for leaf in &all[37..] {
            assert_eq!(f.push(*leaf), g.push(*leaf));
        }
        assert_eq!(f.root(), log.root());
    }

    #[test]
    fn proof_lengths_match_generated() {
        let all = leaves(40);
        for n in 1..=40u64 {
            let prefix = &all[..n as usize];
            for i in 0..n {
                let p = inclusion_proof(prefix, i).unwrap();
                assert_eq!(p.len(), inclusion_proof_len(i, n));
            }
            for m in 1..n {
                let p = consistency_proof(prefix, m).unwrap();
                assert_eq!(p.len(), consistency_proof_len(m, n));
            }
        }
    }

    #[test]
    fn split_points() {
        assert_eq!(split_point(2), 1);
        assert_eq!(split_point(3), 2);
        assert_eq!(split_point(4), 2);
        assert_eq!(split_point(5), 4);
        assert_eq!(split_point(u64::MAX), 1 << 63);
    }

    #[test]
    fn log_errors() {
        let log = MerkleLog::from_leaves(leaves(5));
        assert!(matches!(
            log.root_at(6),
            Err(MerkleError::SizeOutOfRange { .. })
        ));
        assert!(matches!(
            log.inclusion_proof(5, 5),
            Err(MerkleError::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            log.consistency_proof(0, 5),
            Err(MerkleError::Size1Zero)
        ));
        assert!(matches!(
            log.consistency_proof(3, 2),
            Err(MerkleError::Size1GreaterThanSize2 { .. })
        ));
        assert_eq!(log.consistency_proof(5, 5).unwrap(), Vec::<Hash>::new());
    }
}
