//! `s3://` table locations: object_store's S3 client plugged into deltalake's registries.
//!
//! deltalake's own S3 support (the `deltalake-aws` crate) brings the AWS SDK and a DynamoDB
//! locking client; commits need neither with S3's conditional writes, which object_store
//! uses for deltalake's put-if-absent commit (`If-None-Match`). Options come from
//! `[sinks.lake.storage]` (object_store's names: `aws_endpoint`, `aws_region`,
//! `aws_allow_http`, ...) and the usual `AWS_*` environment variables.

use deltalake::logstore::{
    default_logstore, logstore_factories, object_store_factories, LogStore, LogStoreFactory,
    ObjectStoreFactory, ObjectStoreRef, StorageConfig,
};
use deltalake::{DeltaResult, DeltaTableError, Path};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use std::str::FromStr as _;
use std::sync::{Arc, Once};
use url::Url;

struct S3;

impl ObjectStoreFactory for S3 {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, Path)> {
        let mut builder = AmazonS3Builder::from_env().with_url(url.as_str());
        for (key, value) in &config.raw {
            match AmazonS3ConfigKey::from_str(&key.to_ascii_lowercase()) {
                Ok(k) => builder = builder.with_config(k, value),
                Err(_) => {
                    return Err(DeltaTableError::Generic(format!(
                        "sinks.lake.storage: \"{key}\" is not an S3 option (e.g. aws_endpoint, aws_region, aws_allow_http, aws_access_key_id)"
                    )))
                }
            }
        }
        let store = builder
            .build()
            .map_err(|e| DeltaTableError::Generic(format!("S3 location {url}: {e}")))?;
        let path = Path::from_url_path(url.path())
            .map_err(|e| DeltaTableError::Generic(format!("S3 location {url}: {e}")))?;
        Ok((Arc::new(store), path))
    }
}

impl LogStoreFactory for S3 {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

/// Makes `s3://` and `s3a://` locations known to deltalake (once per process).
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in ["s3://", "s3a://"] {
            let url = Url::parse(scheme).expect("scheme URL");
            object_store_factories().insert(url.clone(), Arc::new(S3));
            logstore_factories().insert(url, Arc::new(S3));
        }
    });
}
