//! Sealed batches in S3-compatible object storage (`[storage] batches = "s3"`).
//!
//! Layout: `<prefix>/<study>/<batch id hex>.ddb` in one bucket, the same names as the local
//! directory.
//!
//! * [`BatchStore::put`] is one `PUT` with `If-None-Match: *` (`PutMode::Create`): S3 makes an
//!   object visible whole or not at all, and acknowledges it once it is stored durably, so
//!   there is no temporary object and no rename. A name that exists is refused
//!   ([`StoreError::Conflict`]): two writers never overwrite one batch. The store must honour
//!   the precondition (AWS S3 since 2024, MinIO, Cloudflare R2, s3s); a store that ignores it
//!   would silently overwrite, which the conformance suite checks.
//! * [`BatchStore::list`] lists the prefix (every page) and keeps the names of that shape;
//!   [`BatchStore::delete`] is idempotent, as S3's `DELETE` is; recovery deletes orphans with it.
//! * [`BatchStore::clean_temporaries`] has nothing to clean: no multipart upload is ever
//!   started, so an interrupted `put` leaves nothing behind.

use std::sync::Arc;

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::config::S3Config;
use crate::store::{BackendRuntime, BatchRef, BatchStore, StoreError};

const BATCH_EXT: &str = "ddb";

fn s3(e: object_store::Error) -> StoreError {
    // object_store's messages name the bucket and key, never the credentials.
    StoreError::Remote {
        backend: "s3",
        message: e.to_string(),
    }
}

/// Batches in an S3 bucket.
pub struct S3BatchStore {
    rt: BackendRuntime,
    store: Arc<AmazonS3>,
    prefix: ObjectPath,
}

impl std::fmt::Debug for S3BatchStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3BatchStore")
            .field("prefix", &self.prefix.as_ref())
            .finish_non_exhaustive()
    }
}

impl S3BatchStore {
    /// A client of the bucket `[storage.s3]` names (no request is made until the first call).
    pub fn open(opts: &S3Config) -> Result<Self, StoreError> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&opts.bucket)
            .with_allow_http(opts.allow_http)
            .with_conditional_put(S3ConditionalPut::ETagMatch);
        if let Some(e) = &opts.endpoint {
            b = b.with_endpoint(e);
        }
        b = b.with_region(opts.region.as_deref().unwrap_or("us-east-1"));
        b = b.with_retry(object_store::RetryConfig {
            retry_timeout: std::time::Duration::from_secs(opts.retry_timeout_secs),
            ..object_store::RetryConfig::default()
        });
        if let Some(k) = &opts.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &opts.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        let rt = BackendRuntime::new("s3")?;
        // The builder's HTTP client needs a runtime context.
        let store = rt.run(async move { b.build() })?.map_err(s3)?;
        let prefix =
            ObjectPath::parse(opts.prefix.trim_matches('/')).map_err(|e| StoreError::Remote {
                backend: "s3",
                message: format!("prefix: {e}"),
            })?;
        Ok(Self {
            rt,
            store: Arc::new(store),
            prefix,
        })
    }

    fn key(&self, b: &BatchRef) -> ObjectPath {
        self.prefix
            .clone()
            .join(b.study.as_str())
            .join(format!("{}.{BATCH_EXT}", b.id_hex()))
    }
}

impl BatchStore for S3BatchStore {
    fn put(&self, b: &BatchRef, sealed: &[u8]) -> Result<(), StoreError> {
        let key = self.key(b);
        let store = self.store.clone();
        let payload = PutPayload::from(sealed.to_vec());
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let k2 = key.clone();
        match self
            .rt
            .run(async move { store.put_opts(&k2, payload, opts).await })?
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                Err(StoreError::Conflict(format!("s3 object {key}")))
            }
            Err(e) => Err(s3(e)),
        }
    }

    fn get(&self, b: &BatchRef) -> Result<Vec<u8>, StoreError> {
        let key = self.key(b);
        let store = self.store.clone();
        let r = self.rt.run(async move {
            let r = store.get(&key).await?;
            r.bytes().await
        })?;
        match r {
            Ok(bytes) => Ok(bytes.to_vec()),
            Err(object_store::Error::NotFound { .. }) => Err(StoreError::NotFound),
            Err(e) => Err(s3(e)),
        }
    }

    fn list(&self) -> Result<Vec<BatchRef>, StoreError> {
        let store = self.store.clone();
        let prefix = self.prefix.clone();
        let metas = self
            .rt
            .run(async move { store.list(Some(&prefix)).try_collect::<Vec<_>>().await })?
            .map_err(s3)?;
        let depth = self.prefix.parts().count();
        let mut out = Vec::new();
        for m in metas {
            let parts: Vec<_> = m.location.parts().collect();
            if parts.len() != depth + 2 {
                continue;
            }
            let study = parts[depth].as_ref();
            let Some(stem) = parts[depth + 1]
                .as_ref()
                .strip_suffix(&format!(".{BATCH_EXT}"))
            else {
                continue;
            };
            let mut id = [0u8; 16];
            if stem.len() == 32 && hex::decode_to_slice(stem, &mut id).is_ok() {
                out.push(BatchRef {
                    study: study.to_string(),
                    batch_id: id,
                });
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, b: &BatchRef) -> Result<(), StoreError> {
        let key = self.key(b);
        let store = self.store.clone();
        match self.rt.run(async move { store.delete(&key).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3(e)),
        }
    }

    fn clean_temporaries(&self) -> Result<usize, StoreError> {
        Ok(0)
    }
}
