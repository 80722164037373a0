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
use crate::store::{
    BackendRuntime, BatchRef, BatchStore, StoreError, BATCH_EXT, COMPACTED_EXT, COMPACTION_JOURNAL,
};

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
        self.key_ext(b, BATCH_EXT)
    }

    fn key_ext(&self, b: &BatchRef, ext: &str) -> ObjectPath {
        self.prefix
            .clone()
            .join(b.study.as_str())
            .join(b.file_name(ext))
    }

    fn put_key(&self, key: ObjectPath, sealed: &[u8]) -> Result<(), StoreError> {
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

    fn get_key(&self, key: ObjectPath) -> Result<Vec<u8>, StoreError> {
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

    fn delete_key(&self, key: ObjectPath) -> Result<(), StoreError> {
        let store = self.store.clone();
        match self.rt.run(async move { store.delete(&key).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3(e)),
        }
    }

    /// Every `<prefix>/<study>/<name>` object: (study, name).
    fn list_names(&self) -> Result<Vec<(String, String)>, StoreError> {
        let store = self.store.clone();
        let prefix = self.prefix.clone();
        let metas = self
            .rt
            .run(async move { store.list(Some(&prefix)).try_collect::<Vec<_>>().await })?
            .map_err(s3)?;
        let depth = self.prefix.parts().count();
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let parts: Vec<_> = m.location.parts().collect();
                (parts.len() == depth + 2).then(|| {
                    (
                        parts[depth].as_ref().to_string(),
                        parts[depth + 1].as_ref().to_string(),
                    )
                })
            })
            .collect())
    }

    /// The `<study>/<32 hex>.<ext>` objects.
    fn list_ext(&self, ext: &str) -> Result<Vec<BatchRef>, StoreError> {
        let mut out: Vec<BatchRef> = self
            .list_names()?
            .into_iter()
            .filter_map(|(study, name)| BatchRef::from_file_name(&study, &name, ext))
            .collect();
        out.sort();
        Ok(out)
    }
}

impl BatchStore for S3BatchStore {
    fn put(&self, b: &BatchRef, sealed: &[u8]) -> Result<(), StoreError> {
        self.put_key(self.key(b), sealed)
    }

    fn get(&self, b: &BatchRef) -> Result<Vec<u8>, StoreError> {
        self.get_key(self.key(b))
    }

    fn list(&self) -> Result<Vec<BatchRef>, StoreError> {
        self.list_ext(BATCH_EXT)
    }

    fn delete(&self, b: &BatchRef) -> Result<(), StoreError> {
        self.delete_key(self.key(b))
    }

    fn list_compacted(&self) -> Result<Vec<BatchRef>, StoreError> {
        self.list_ext(COMPACTED_EXT)
    }

    fn get_compacted(&self, b: &BatchRef) -> Result<Vec<u8>, StoreError> {
        self.get_key(self.key_ext(b, COMPACTED_EXT))
    }

    fn put_compacted(&self, b: &BatchRef, sealed: &[u8]) -> Result<(), StoreError> {
        self.put_key(self.key_ext(b, COMPACTED_EXT), sealed)
    }

    fn delete_compacted(&self, b: &BatchRef) -> Result<(), StoreError> {
        self.delete_key(self.key_ext(b, COMPACTED_EXT))
    }

    fn compaction_journals(&self) -> Result<Vec<String>, StoreError> {
        let mut out: Vec<String> = self
            .list_names()?
            .into_iter()
            .filter(|(_, name)| name == COMPACTION_JOURNAL)
            .map(|(study, _)| study)
            .collect();
        out.sort();
        Ok(out)
    }

    fn clean_temporaries(&self) -> Result<usize, StoreError> {
        Ok(0)
    }
}
