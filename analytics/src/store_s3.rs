//! A study's sealed batches in an S3-compatible bucket: `s3://bucket/prefix`, where the intake
//! with `[storage] batches = "s3"` writes `<prefix>/<study>/<batch id>.ddb` (so a study's
//! location is `s3://bucket/<prefix>/<study>`). The endpoint, region and credentials come from
//! the standard variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, and `AWS_ALLOW_HTTP=true` for a loopback test server only).
//!
//! * Listing pages through the prefix and reads each batch's header with one ranged `GET` of its
//!   first bytes (64 at once); nothing is decrypted. A batch is read whole with one `GET` when a
//!   run opens it, in memory only, in the groups the engine bounds; the next batches' `GET`s are
//!   already under way ([`Bucket::read_ahead`], at most `store::READ_AHEAD_BYTES` of them), so
//!   many small batches do not cost one round trip each in turn.
//! * Writes are `PUT`s with `If-None-Match: *`: an object appears whole or not at all, and never
//!   replaces another.
//! * Replacement (compaction) cannot rename, so its journal comes first: `compact.journal`
//!   (naming the batches to remove and to add) is created with `If-None-Match: *`, then the new
//!   batches are written, then the old ones deleted, then the journal. The replacement takes
//!   effect when the last new batch exists: a listing that finds the journal hides the old
//!   batches if every new one is there, and the new ones otherwise, so a reader never counts a
//!   row twice or misses one. A listing is taken twice between two reads of the journal and
//!   kept only when they agree. A journal whose new batches are all written is finished by the
//!   next replacement; one whose new batches are not (a compaction still writing, or one that
//!   died) blocks further replacements until [`Bucket::abandon_interrupted`] deletes what it
//!   wrote (S3 has no lock to tell the two apart; the steward says which).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datadonor_schemas::batch::BatchHeader;
use datadonor_service::blocking::BlockingRuntime;
use futures_util::StreamExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore as _, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};

use crate::sealed::{read_header, BatchError, BatchErrorKind};
use crate::store::{
    is_batch_name, store_err, BatchFile, Journal, BATCH_EXT, JOURNAL, MAX_HEADER_LEN,
};
use crate::AnalyticsError;

/// Header reads in flight at once while listing.
const HEADER_READS: usize = 64;
/// Listings retried when a replacement changes the prefix while one is taken.
const LIST_TRIES: usize = 5;

/// A bucket prefix holding one study's batches.
pub struct Bucket {
    rt: BlockingRuntime,
    store: Arc<AmazonS3>,
    prefix: ObjectPath,
    url: String,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bucket({})", self.url)
    }
}

fn remote(label: &str, e: impl std::fmt::Display) -> AnalyticsError {
    // object_store's messages name the bucket and key, never the credentials.
    store_err(Path::new(label), e)
}

impl Bucket {
    /// A client of `s3://bucket/prefix` (no request is made until the first call), configured
    /// from the `AWS_*` environment variables, then from `options` (object_store's S3 keys:
    /// `aws_endpoint`, `aws_access_key_id`, `aws_allow_http`, ...).
    pub fn open(url: &str, options: &[(&str, &str)]) -> Result<Self, AnalyticsError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| remote(url, "not an s3:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(remote(url, "the URL names no bucket"));
        }
        let prefix = ObjectPath::parse(prefix.trim_matches('/'))
            .map_err(|e| remote(url, format!("prefix: {e}")))?;
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch);
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            b = b.with_region("us-east-1");
        }
        for (k, v) in options {
            let key: AmazonS3ConfigKey = k
                .parse()
                .map_err(|e| remote(url, format!("option {k}: {e}")))?;
            b = b.with_config(key, *v);
        }
        let rt = BlockingRuntime::new("s3").map_err(|e| remote(url, e))?;
        // The builder's HTTP client needs a runtime context.
        let store = rt
            .run(async move { b.build() })
            .map_err(|e| remote(url, e))?
            .map_err(|e| remote(url, e))?;
        Ok(Self {
            rt,
            store: Arc::new(store),
            url: format!("s3://{bucket}/{prefix}"),
            prefix,
        })
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, name: &str) -> ObjectPath {
        self.prefix.clone().join(name)
    }

    fn label(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("{}/{name}", self.url.trim_end_matches('/')))
    }

    fn run<F>(&self, f: F) -> Result<F::Output, AnalyticsError>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.run(f).map_err(|e| remote(&self.url, e))
    }

    /// The journal, if one exists.
    fn journal(&self) -> Result<Option<Journal>, AnalyticsError> {
        let store = self.store.clone();
        let key = self.key(JOURNAL);
        let got = self.run(async move {
            match store.get(&key).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        let label = self.label(JOURNAL);
        let Some(bytes) = got.map_err(|e| store_err(&label, e))? else {
            return Ok(None);
        };
        let j: Journal = serde_json::from_slice(&bytes).map_err(|e| store_err(&label, e))?;
        // It names batches of this prefix only: nothing else is ever deleted through it.
        if let Some(bad) = j.remove.iter().chain(&j.add).find(|n| !is_batch_name(n)) {
            return Err(store_err(
                &label,
                format!("names {bad:?}, which is not a batch"),
            ));
        }
        Ok(Some(j))
    }

    /// Names and sizes of the objects directly under the prefix.
    fn names(&self) -> Result<Vec<(String, u64)>, AnalyticsError> {
        let store = self.store.clone();
        let prefix = self.prefix.clone();
        let listed = self
            .run(async move { store.list_with_delimiter(Some(&prefix)).await })?
            .map_err(|e| remote(&self.url, e))?;
        Ok(listed
            .objects
            .into_iter()
            .filter_map(|m| m.location.filename().map(|n| (n.to_string(), m.size)))
            .collect())
    }

    /// Every batch with its header, as the journal (if any) says the prefix now stands.
    pub(crate) fn all(&self) -> Result<Vec<BatchFile>, AnalyticsError> {
        for _ in 0..LIST_TRIES {
            // Journal, listing, journal, listing: a replacement that began or ended anywhere in
            // between changes one of the two pairs (a whole one between the journal reads
            // leaves the second listing unlike a first taken half way).
            let before = self.journal()?;
            let names = self.names()?;
            if self.journal()? != before || self.names()? != names {
                continue;
            }
            let hidden: Vec<String> = match &before {
                Some(j) if j.written(&names) => j.remove.clone(),
                Some(j) => j.add.clone(),
                None => Vec::new(),
            };
            let batches: Vec<(String, u64)> = names
                .into_iter()
                .filter(|(n, _)| is_batch_name(n) && !hidden.contains(n))
                .collect();
            return self.headers(batches);
        }
        Err(remote(
            &self.url,
            "the compaction journal kept changing while the batches were listed",
        ))
    }

    /// Read the headers of `batches` with ranged `GET`s.
    fn headers(&self, batches: Vec<(String, u64)>) -> Result<Vec<BatchFile>, AnalyticsError> {
        let store = self.store.clone();
        let keys: Vec<(String, ObjectPath, u64)> = batches
            .into_iter()
            .map(|(n, len)| {
                let k = self.key(&n);
                (n, k, len)
            })
            .collect();
        let heads = self.run(async move {
            futures_util::stream::iter(keys.into_iter().map(|(name, key, len)| {
                let store = store.clone();
                async move {
                    let range: Range<u64> = 0..len.min(MAX_HEADER_LEN as u64);
                    let r = store.get_range(&key, range).await;
                    (name, len, r)
                }
            }))
            .buffered(HEADER_READS)
            .collect::<Vec<_>>()
            .await
        })?;
        let mut out = Vec::with_capacity(heads.len());
        for (name, len, r) in heads {
            let path = self.label(&name);
            match r {
                Ok(head) => {
                    let header = read_header(&path, &head)?;
                    out.push(BatchFile { path, header, len });
                }
                // Removed between the listing and the read (a compaction finishing): the
                // journal's rule already hid it, or its replacement is listed.
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(
                        BatchError::new(&path, BatchErrorKind::Remote(e.to_string())).into(),
                    )
                }
            }
        }
        Ok(out)
    }

    /// Read one batch whole.
    pub(crate) fn read(&self, path: &Path) -> Result<Vec<u8>, BatchError> {
        let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            BatchError::new(path, BatchErrorKind::Remote("no object name".into()))
        })?;
        let key = self.key(name);
        let store = self.store.clone();
        let r = self
            .rt
            .run(async move { store.get(&key).await?.bytes().await })
            .map_err(|e| BatchError::new(path, BatchErrorKind::Remote(e.to_string())))?;
        r.map(|b| b.to_vec())
            .map_err(|e| BatchError::new(path, BatchErrorKind::Remote(e.to_string())))
    }

    /// Read the batches `paths` names, in order, with up to `in_flight` `GET`s outstanding and
    /// as many finished ones waiting: a run does not pay each object's first-byte latency in
    /// turn. Dropping the iterator stops the reads.
    pub(crate) fn read_ahead(
        &self,
        paths: Vec<PathBuf>,
        in_flight: usize,
    ) -> impl Iterator<Item = (PathBuf, Result<Vec<u8>, BatchError>)> + '_ {
        let in_flight = in_flight.max(1);
        let (tx, mut rx) = tokio::sync::mpsc::channel(in_flight);
        let reads: Vec<(PathBuf, Option<ObjectPath>)> = paths
            .into_iter()
            .map(|p| {
                let key = p.file_name().and_then(|n| n.to_str()).map(|n| self.key(n));
                (p, key)
            })
            .collect();
        let store = self.store.clone();
        let started = self.rt.spawn(async move {
            let mut reads = futures_util::stream::iter(reads)
                .map(|(path, key)| {
                    let store = store.clone();
                    async move {
                        let got = match key {
                            None => Err("no object name".to_string()),
                            Some(key) => async { store.get(&key).await?.bytes().await }
                                .await
                                .map(|b| b.to_vec())
                                .map_err(|e| e.to_string()),
                        };
                        (path, got)
                    }
                })
                .buffered(in_flight);
            while let Some(item) = reads.next().await {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        // A runtime that has stopped answers every read with its error.
        let mut failed = started.err().map(|e| e.to_string());
        std::iter::from_fn(move || match failed.take() {
            Some(e) => Some((PathBuf::from(&self.url), Err(e))),
            None => rx.blocking_recv(),
        })
        .map(|(path, got)| {
            let got = got.map_err(|e| BatchError::new(&path, BatchErrorKind::Remote(e)));
            (path, got)
        })
    }

    fn create(&self, name: &str, bytes: Vec<u8>) -> Result<(), AnalyticsError> {
        let store = self.store.clone();
        let key = self.key(name);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let r =
            self.run(async move { store.put_opts(&key, PutPayload::from(bytes), opts).await })?;
        let label = self.label(name);
        match r {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                Err(store_err(&label, "exists already; nothing was overwritten"))
            }
            Err(e) => Err(store_err(&label, e)),
        }
    }

    fn delete(&self, name: &str) -> Result<(), AnalyticsError> {
        let store = self.store.clone();
        let key = self.key(name);
        match self.run(async move { store.delete(&key).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(&self.label(name), e)),
        }
    }

    /// Write one new batch (`If-None-Match: *`).
    pub(crate) fn write(
        &self,
        header: &BatchHeader,
        bytes: &[u8],
    ) -> Result<PathBuf, AnalyticsError> {
        let name = format!("{}.{BATCH_EXT}", header.batch_id_hex());
        self.create(&name, bytes.to_vec())?;
        Ok(self.label(&name))
    }

    /// Finish a journal whose new batches are all written; refuse one whose are not.
    fn finish_journal(&self) -> Result<(), AnalyticsError> {
        let Some(j) = self.journal()? else {
            return Ok(());
        };
        if !j.written(&self.names()?) {
            return Err(store_err(
                &self.label(JOURNAL),
                "a compaction is still writing its batches, or it stopped before it had written \
                 them all; if none is running, run compact again with --abandon-interrupted",
            ));
        }
        self.roll_forward(&j)
    }

    fn roll_forward(&self, j: &Journal) -> Result<(), AnalyticsError> {
        for name in &j.remove {
            self.delete(name)?;
        }
        self.delete(JOURNAL)
    }

    /// Delete the new batches of an interrupted replacement and its journal.
    pub(crate) fn abandon_interrupted(&self) -> Result<bool, AnalyticsError> {
        let Some(j) = self.journal()? else {
            return Ok(false);
        };
        if j.written(&self.names()?) {
            // Complete: finishing it is the only safe way out.
            self.roll_forward(&j)?;
            return Ok(true);
        }
        for name in &j.add {
            self.delete(name)?;
        }
        self.delete(JOURNAL)?;
        Ok(true)
    }

    /// Replace `remove` by `add` through the journal.
    pub(crate) fn replace(
        &self,
        remove: &[PathBuf],
        add: &[(BatchHeader, Vec<u8>)],
    ) -> Result<Vec<PathBuf>, AnalyticsError> {
        self.finish_journal()?;
        let j = self.replace_steps(remove, add, usize::MAX)?;
        Ok(j.add.iter().map(|n| self.label(n)).collect())
    }

    /// The replacement's steps in order (the journal, each new batch, each deletion, the
    /// journal's deletion), the first `steps` of them only. Fewer than all leave the bucket as
    /// a compaction killed there would (tests).
    #[doc(hidden)]
    pub fn replace_steps(
        &self,
        remove: &[PathBuf],
        add: &[(BatchHeader, Vec<u8>)],
        steps: usize,
    ) -> Result<Journal, AnalyticsError> {
        let j = Journal {
            remove: remove
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
                .collect(),
            add: add
                .iter()
                .map(|(h, _)| format!("{}.{BATCH_EXT}", h.batch_id_hex()))
                .collect(),
        };
        let jbytes = serde_json::to_vec(&j).map_err(|e| store_err(&self.label(JOURNAL), e))?;
        let mut left = steps;
        let mut go = |f: &dyn Fn() -> Result<(), AnalyticsError>| -> Result<bool, AnalyticsError> {
            if left == 0 {
                return Ok(false);
            }
            left -= 1;
            f().map(|()| true)
        };
        if !go(&|| self.create(JOURNAL, jbytes.clone()))? {
            return Ok(j);
        }
        for ((_, bytes), name) in add.iter().zip(&j.add) {
            if !go(&|| self.create(name, bytes.clone()))? {
                return Ok(j);
            }
        }
        for name in &j.remove {
            if !go(&|| self.delete(name))? {
                return Ok(j);
            }
        }
        go(&|| self.delete(JOURNAL))?;
        Ok(j)
    }
}
