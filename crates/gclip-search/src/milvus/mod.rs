//! Collections on a Milvus server or cluster (`milvus://HOST:PORT/NAME`), behind the same
//! [`Store`] trait as the embedded backend, through the official client (`milvus-sdk-rust`,
//! gRPC).
//!
//! One Milvus collection per gclip collection:
//!
//! | Milvus field | type | holds |
//! | --- | --- | --- |
//! | `id` | VARCHAR primary key (at most [`MAX_ID_BYTES`]) | the document id |
//! | `vector` | FLOAT_VECTOR(dim), HNSW, inner product | the unit vector (inner product = cosine) |
//! | `fields` | JSON | the document's fields |
//! | `source` | JSON | the file it was indexed from (`{}` when none) |
//! | the tenant field, when declared | VARCHAR partition key (at most [`MAX_TENANT_BYTES`]) | a copy of the document's field of that name ([`MilvusOptions::partition_key`]) |
//! | each declared scalar field | VARCHAR (`Trie` index), INT64, DOUBLE (`STL_SORT`) or BOOL | a copy of the document's field of that name ([`MilvusOptions::scalar_fields`]); for an optional one the zero of its type when the document lacks it |
//! | `NAME__present`, for each optional scalar field `NAME` | BOOL | whether the document holds that field |
//!
//! The collection's description holds [`DESCRIPTION_PREFIX`] and the [`CollectionInfo`] (model,
//! embedding spec) as JSON; opening reads it back, so the same model guard applies as for a
//! directory, and refuses a collection that another tool made with other fields.
//!
//! Consistency: the collection is created with, and every read asks for, Milvus' *Strong*
//! level by default: a read sees every write acknowledged before it started
//! ([`MilvusOptions::consistency`], `GCLIP_MILVUS_CONSISTENCY`, trades that for latency). A write returns once Milvus
//! has accepted it (it is in Milvus' log); `flush` does nothing (Milvus seals segments itself).
//!
//! The client is asynchronous; each store runs it on its own one-thread runtime and waits for
//! each call with a deadline ([`MilvusOptions::timeout`]), so a lost server is an error, not a
//! hang, and the store's methods may be called from any thread (an async server's blocking pool
//! included). A panic inside the client (it has a few `panic!`s on unexpected replies) ends that
//! call's task only, and is reported as an error.

pub(crate) mod address;
mod check;
mod expr;
mod scalar;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use milvus::client::{Client, ConsistencyLevel};
use milvus::data::FieldColumn;
use milvus::index::{IndexParams, IndexType, MetricType};
use milvus::options::LoadOptions;
use milvus::query::{QueryOptions, SearchOptions};
use milvus::schema::{CollectionSchema, CollectionSchemaBuilder, FieldSchema};
use milvus::value::{Value, ValueVec};
use serde_json::Value as Json;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

pub use address::{is_milvus_address, MilvusAddress, Token, TOKEN_VAR};
pub use check::check_collection;
pub use expr::{to_milvus_expr, to_milvus_expr_for};
pub use scalar::{
    parse_scalar_fields, presence_name, ScalarField, ScalarType, DEFAULT_STRING_BYTES,
    MAX_EXACT_INT, MAX_SCALAR_FIELDS, MAX_STRING_BYTES, PRESENCE_SUFFIX, SCALAR_FIELDS_VAR,
};

use crate::ann::AnnParams;
use crate::document::{Document, Fields};
use crate::error::{Result, SearchError};
use crate::store::{
    CollectionInfo, FileState, Hit, NewDocument, SearchMode, SearchRequest, Store, WriteReceipt,
};
use expr::{string_literal, FIELDS_FIELD, ID_FIELD};
use scalar::ScalarValue;

/// The vector field.
const VECTOR_FIELD: &str = "vector";
/// The field with the file a document was indexed from.
const SOURCE_FIELD: &str = "source";
/// What a gclip collection's description starts with; the [`CollectionInfo`] JSON follows.
pub const DESCRIPTION_PREFIX: &str = "gclip collection v1 ";
/// The longest document id, in bytes (the VARCHAR primary key's `max_length`).
pub const MAX_ID_BYTES: usize = 4096;
/// Milvus refuses a search or query window (`offset + limit`) beyond this.
pub const MAX_WINDOW: usize = 16_384;
/// The fewest rows of a sealed segment that Milvus builds an index for (its default
/// `indexCoord.segment.minSegmentNumRowsToEnableIndex`); smaller ones are searched exhaustively.
const MIN_ROWS_FOR_AN_INDEX: i64 = 1024;

/// Milvus' largest HNSW `ef`; `SearchMode::Exact` searches with it.
const MAX_EF: usize = 32_768;
/// Ids in one `id in [...]` expression.
const IDS_PER_EXPR: usize = 512;
/// Bytes of documents in one upsert request (the server takes 64 MiB by default; smaller
/// requests are retried cheaply).
const UPSERT_BYTES: usize = 8 << 20;

/// How the store talks to the server.
#[derive(Debug, Clone)]
pub struct MilvusOptions {
    /// Deadline of one call (connecting included).
    pub timeout: Duration,
    /// Retries of an idempotent write after a connection error (upserts by id, deletes by id).
    pub retries: u32,
    /// Wait before the first retry; doubled for each next one.
    pub backoff: Duration,
    /// Documents fetched per request when walking the collection in id order (listing, file
    /// states). Each reply must stay under the client's 4 MiB message limit.
    pub page: usize,
    /// HNSW parameters: M and efConstruction when creating, ef when searching; the embedded
    /// index's defaults.
    pub hnsw: AnnParams,
    /// What a read waits for.
    pub consistency: Consistency,
    /// Shards (write channels) of a collection this creates; `None`: the server's default
    /// (one). Fixed at creation: a collection keeps the shards it was made with.
    pub shards: Option<u32>,
    /// In-memory replicas to load the collection with (each on its own query nodes, for read
    /// throughput and availability); `None`: keep a loaded collection as it is, load an
    /// unloaded one with one.
    pub replicas: Option<u32>,
    /// A PEM file of certificates to trust for `milvuss://` besides the system's roots (a
    /// cluster with a certificate of its own CA); `GCLIP_MILVUS_CA`.
    pub ca: Option<std::path::PathBuf>,
    /// The document field that names each document's tenant, declared when this creates a
    /// collection (`GCLIP_MILVUS_PARTITION_KEY`): the collection gets a VARCHAR field of that
    /// name marked as Milvus' partition key, filled from the document field on every write.
    /// Fixed at creation: opening reads the collection's own declaration, and asking for
    /// another key than it has is an error. Checked by [`check_partition_key_name`].
    pub partition_key: Option<String>,
    /// The partitions Milvus makes for the partition key of a collection this creates
    /// (`GCLIP_MILVUS_PARTITIONS`, 1 to [`MAX_PARTITIONS`]); `None`: the server's default (64).
    /// Fixed at creation: opening a collection with another number asked for is an error.
    pub partitions: Option<u32>,
    /// The document fields that get typed Milvus fields of their own, declared when this
    /// creates a collection (`GCLIP_MILVUS_SCALAR_FIELDS`, read by [`parse_scalar_fields`]):
    /// filters on them read those fields (which Milvus can index) instead of the JSON field,
    /// and every document must hold each with a value of its type (an optional one, `name:type?`,
    /// may be missing or null). `None`: none when creating,
    /// and whatever the collection has when opening; `Some` (even empty) when opening must be
    /// what the collection was created with.
    pub scalar_fields: Option<Vec<ScalarField>>,
}

/// The most shards [`MilvusOptions::shards`] may ask for (Milvus' own `proxy.maxShardNum` is 16
/// by default; a server configured for more still gets at most this many from gclip).
pub const MAX_SHARDS: u32 = 64;
/// The most replicas [`MilvusOptions::replicas`] may ask for.
pub const MAX_REPLICAS: u32 = 64;
/// The environment variable of [`MilvusOptions::shards`].
pub const SHARDS_VAR: &str = "GCLIP_MILVUS_SHARDS";
/// The environment variable of [`MilvusOptions::replicas`].
pub const REPLICAS_VAR: &str = "GCLIP_MILVUS_REPLICAS";
/// The environment variable of [`MilvusOptions::ca`].
pub const CA_VAR: &str = "GCLIP_MILVUS_CA";
/// The environment variable of [`MilvusOptions::partition_key`].
pub const PARTITION_KEY_VAR: &str = "GCLIP_MILVUS_PARTITION_KEY";
/// The longest partition key field name.
pub const MAX_PARTITION_KEY_NAME: usize = scalar::MAX_FIELD_NAME;
/// The environment variable of [`MilvusOptions::partitions`].
pub const PARTITIONS_VAR: &str = "GCLIP_MILVUS_PARTITIONS";
/// The most partitions [`MilvusOptions::partitions`] may ask for (Milvus' own
/// `rootCoord.maxPartitionNum` is 4,096 by default).
pub const MAX_PARTITIONS: u32 = 4096;
/// The longest tenant value, in bytes (the partition key field's VARCHAR `max_length`).
pub const MAX_TENANT_BYTES: usize = 512;

/// Why `name` cannot be a partition key field, if it cannot: it must be 1 to
/// [`MAX_PARTITION_KEY_NAME`] ASCII letters, digits and `_`, not starting with a digit (a Milvus
/// field name that reads as itself in an expression), and neither one of gclip's own fields
/// (`id`, `vector`, `fields`, `source`) nor a word of Milvus' expression language (`and`, `in`,
/// `like`, `json_contains`, ...), in any case.
pub fn check_partition_key_name(name: &str) -> std::result::Result<(), String> {
    scalar::check_field_name(name, "a partition key")
}

/// Milvus consistency levels a read may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Sees every write acknowledged before the read started, from any client; waits for the
    /// server's clock to pass the read's start (up to a time tick, 200 ms by default).
    #[default]
    Strong,
    /// Sees this process's own writes; other clients' after a time tick or so.
    Session,
    /// May miss writes of the last few seconds (Milvus' `gracefulTime`, 5 s by default).
    Bounded,
}

impl Consistency {
    /// `strong`, `session` or `bounded`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "strong" => Some(Self::Strong),
            "session" => Some(Self::Session),
            "bounded" => Some(Self::Bounded),
            _ => None,
        }
    }

    fn level(self) -> i32 {
        match self {
            Self::Strong => ConsistencyLevel::Strong,
            Self::Session => ConsistencyLevel::Session,
            Self::Bounded => ConsistencyLevel::Bounded,
        }
        .into()
    }
}

impl Default for MilvusOptions {
    /// 30 s per call, or `GCLIP_MILVUS_TIMEOUT` seconds; 4 retries from 0.25 s; pages of 128;
    /// Strong consistency, or `GCLIP_MILVUS_CONSISTENCY` (`strong`, `session`, `bounded`; an
    /// unknown value is a warning and Strong).
    fn default() -> Self {
        let timeout = std::env::var("GCLIP_MILVUS_TIMEOUT")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(Duration::from_secs(30));
        Self {
            timeout,
            retries: 4,
            backoff: Duration::from_millis(250),
            page: 128,
            hnsw: AnnParams::default(),
            shards: None,
            replicas: None,
            ca: None,
            partition_key: None,
            partitions: None,
            scalar_fields: None,
            consistency: std::env::var("GCLIP_MILVUS_CONSISTENCY")
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| {
                    Consistency::parse(&v).unwrap_or_else(|| {
                        tracing::warn!(
                            "GCLIP_MILVUS_CONSISTENCY={v:?} is not strong, session or bounded; \
                             using strong"
                        );
                        Consistency::Strong
                    })
                })
                .unwrap_or_default(),
        }
    }
}

impl MilvusOptions {
    /// [`MilvusOptions::default`] with the cluster settings of the environment:
    /// `GCLIP_MILVUS_SHARDS` and `GCLIP_MILVUS_REPLICAS` (whole numbers from 1 to 64). A value
    /// that is not one is an error naming the variable: shards cannot be changed once a
    /// collection exists, so a mistyped value must not quietly create it with the default.
    /// `GCLIP_MILVUS_CA` names a CA file to trust for `milvuss://` (read when connecting).
    /// `GCLIP_MILVUS_PARTITION_KEY` names the tenant field of a collection this creates (a
    /// name [`check_partition_key_name`] refuses is an error naming the variable), and
    /// `GCLIP_MILVUS_PARTITIONS` its number of partitions (1 to 4,096).
    /// `GCLIP_MILVUS_SCALAR_FIELDS` declares its scalar fields (`price:int,brand:string(64)`;
    /// a declaration [`parse_scalar_fields`] refuses, or one naming the partition key, is an
    /// error naming the variable).
    pub fn from_env() -> Result<Self> {
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// [`MilvusOptions::from_env`] reading variables through `var`.
    pub fn from_env_with(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let count = |name: &str, max: u32| -> Result<Option<u32>> {
            let Some(v) = var(name).filter(|v| !v.trim().is_empty()) else {
                return Ok(None);
            };
            match v.trim().parse::<u32>() {
                Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
                _ => Err(SearchError::Invalid(format!(
                    "{name}={v:?}: give a whole number from 1 to {max}"
                ))),
            }
        };
        let partition_key = match var(PARTITION_KEY_VAR).filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(v) => {
                let name = v.trim();
                check_partition_key_name(name).map_err(|why| {
                    // Quoted at most in part: the value is the user's, of any length.
                    let shown: String = name.chars().take(MAX_PARTITION_KEY_NAME + 8).collect();
                    let more = if shown.len() < name.len() { "…" } else { "" };
                    SearchError::Invalid(format!("{PARTITION_KEY_VAR}={shown:?}{more}: {why}"))
                })?;
                Some(name.to_string())
            }
        };
        let scalar_fields =
            match var(SCALAR_FIELDS_VAR).filter(|v| !v.trim().is_empty()) {
                None => None,
                Some(v) => {
                    let fields = parse_scalar_fields(&v).and_then(|fields| {
                        check_typed_fields(partition_key.as_deref(), &fields)?;
                        Ok(fields)
                    });
                    Some(fields.map_err(|why| {
                        SearchError::Invalid(format!("{SCALAR_FIELDS_VAR}: {why}"))
                    })?)
                }
            };
        Ok(Self {
            shards: count(SHARDS_VAR, MAX_SHARDS)?,
            replicas: count(REPLICAS_VAR, MAX_REPLICAS)?,
            partitions: count(PARTITIONS_VAR, MAX_PARTITIONS)?,
            scalar_fields,
            partition_key,
            ca: var(CA_VAR)
                .filter(|v| !v.trim().is_empty())
                .map(std::path::PathBuf::from),
            ..Self::default()
        })
    }
}

/// A collection on a Milvus server.
pub struct MilvusStore {
    conn: Conn,
    info: CollectionInfo,
    schema: CollectionSchema,
    /// The collection's partition key field (its tenant field), as the server describes it.
    partition_key: Option<String>,
    /// The typed copies of document fields, as the server describes them: the partition key
    /// (a string of at most [`MAX_TENANT_BYTES`]) first when there is one, then the declared
    /// scalar fields.
    typed: Vec<ScalarField>,
    /// The last count read, for `len` when the server cannot be asked.
    last_len: AtomicUsize,
}

/// A failure of one call: the client's error, the deadline, or a panic in the client.
enum CallError {
    /// Boxed: the client's error is large, and most calls succeed.
    Client(Box<milvus::error::Error>),
    Deadline,
    Panicked,
}

impl CallError {
    /// Whether retrying may help: the connection failed or the server is unavailable.
    fn is_transient(&self) -> bool {
        match self {
            CallError::Deadline => true,
            CallError::Panicked => false,
            CallError::Client(e) => match e.as_ref() {
                milvus::error::Error::Communication(_) => true,
                milvus::error::Error::Grpc(status) => matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
                ),
                _ => false,
            },
        }
    }

    fn describe(&self, timeout: Duration) -> String {
        match self {
            CallError::Client(e) => match e.as_ref() {
                // The transport's own words, cause by cause (the client shows its Debug form).
                milvus::error::Error::Communication(t) => with_causes(t.to_string(), t),
                milvus::error::Error::Grpc(status)
                    if status.code() == tonic::Code::Unauthenticated =>
                {
                    format!(
                        "the server refused the credentials ({}); give the right \
                         ?token=USER:PASSWORD or {TOKEN_VAR}",
                        status.message()
                    )
                }
                milvus::error::Error::Grpc(status) => with_causes(
                    format!("{} (gRPC status {:?})", status.message(), status.code()),
                    status,
                ),
                other => other.to_string(),
            },
            CallError::Deadline => format!("no answer within {:.1} s", timeout.as_secs_f64()),
            CallError::Panicked => "the Milvus client failed on the server's reply".into(),
        }
    }
}

/// `said`, then each cause of `e` that it does not end with already (an I/O error shows its
/// inner error and also gives it as its cause).
fn with_causes(mut said: String, e: &dyn std::error::Error) -> String {
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_said = c.to_string();
        if !said.ends_with(&c_said) {
            said.push_str(": ");
            said.push_str(&c_said);
        }
        cause = c.source();
    }
    said
}

/// The typed fields of a collection: its partition key (a string of at most
/// [`MAX_TENANT_BYTES`]) first, then its declared scalar fields.
fn typed_fields(partition_key: Option<&str>, scalar_fields: &[ScalarField]) -> Vec<ScalarField> {
    let key = partition_key.map(|k| ScalarField {
        name: k.to_string(),
        ty: ScalarType::String(MAX_TENANT_BYTES as u32),
        optional: false,
    });
    key.into_iter()
        .chain(scalar_fields.iter().cloned())
        .collect()
}

/// Why a collection cannot have these typed fields, if it cannot: the declared fields as
/// [`scalar::check_declared`] says, none of them the partition key.
fn check_typed_fields(
    partition_key: Option<&str>,
    scalar_fields: &[ScalarField],
) -> std::result::Result<(), String> {
    scalar::check_declared(scalar_fields)?;
    match (partition_key, scalar_fields) {
        (Some(key), fields) => match fields.iter().find(|f| f.name.eq_ignore_ascii_case(key)) {
            Some(f) => Err(format!(
                "the scalar field {f} is the partition key `{key}`, a string field already; \
                 declare it once"
            )),
            None => Ok(()),
        },
        (None, _) => Ok(()),
    }
}

/// Marks the declared fields named in `presence` (the fields whose presence fields a collection
/// has) optional; false when one names no declared field (the partition key is never
/// optional, nor among `fields`).
fn mark_optional(fields: &mut [ScalarField], presence: &[&str]) -> bool {
    presence.iter().all(|name| {
        fields
            .iter_mut()
            .find(|f| f.name == *name)
            .map(|f| f.optional = true)
            .is_some()
    })
}

fn schema_for(
    name: &str,
    info_json: &str,
    dim: usize,
    partition_key: Option<&str>,
    scalar_fields: &[ScalarField],
) -> Result<CollectionSchema> {
    let json = |name: &str| {
        let mut f = FieldSchema::empty();
        f.name = name.to_string();
        f.dtype = milvus::proto::schema::DataType::Json;
        f
    };
    let mut builder =
        CollectionSchemaBuilder::new(name, &format!("{DESCRIPTION_PREFIX}{info_json}"));
    builder
        .add_field(FieldSchema::new_primary_varchar(
            ID_FIELD,
            "document id",
            false,
            MAX_ID_BYTES as i32,
        ))
        .add_field(FieldSchema::new_float_vector(
            VECTOR_FIELD,
            "unit vector",
            dim as i64,
        ))
        .add_field(json(FIELDS_FIELD))
        .add_field(json(SOURCE_FIELD));
    if let Some(key) = partition_key {
        builder.add_field(FieldSchema::new_varchar(
            key,
            "tenant: the partition key, a copy of the document field of this name",
            MAX_TENANT_BYTES as i32,
        ));
    }
    for f in scalar_fields {
        let what = "gclip scalar field: a copy of the document field of this name";
        builder.add_field(match f.ty {
            // At least 1 (parse_scalar_fields' bound): the client panics on 0.
            ScalarType::String(max) => FieldSchema::new_varchar(&f.name, what, max.max(1) as i32),
            ScalarType::Int => FieldSchema::new_int64(&f.name, what),
            ScalarType::Float => FieldSchema::new_double(&f.name, what),
            ScalarType::Bool => FieldSchema::new_bool(&f.name, what),
        });
        if f.optional {
            builder.add_field(FieldSchema::new_bool(
                &presence_name(&f.name),
                "gclip presence field: whether the document holds the optional scalar field \
                 of the name before __present",
            ));
        }
    }
    builder
        .build()
        .map_err(|e| SearchError::Invalid(format!("Milvus schema: {e}")))
}

/// The request that creates a collection of `schema`, its field `partition_key` (if any)
/// marked as the partition key. The client's own `create_collection` cannot mark one (its
/// schema conversion always writes `is_partition_key: false`), so gclip sends the client's
/// protocol message itself, through the client's generated gRPC stub.
fn create_request(
    schema: CollectionSchema,
    partition_key: Option<&str>,
    shards: i32,
    partitions: i64,
) -> Result<milvus::proto::milvus::CreateCollectionRequest> {
    use prost::Message;
    let name = schema.name().to_string();
    let mut proto: milvus::proto::schema::CollectionSchema = schema.into();
    if let Some(key) = partition_key {
        let field = proto
            .fields
            .iter_mut()
            .find(|f| f.name == key)
            .ok_or_else(|| SearchError::Invalid(format!("Milvus schema has no field {key}")))?;
        field.is_partition_key = true;
    }
    Ok(milvus::proto::milvus::CreateCollectionRequest {
        base: Some(milvus::proto::common::MsgBase::new(
            milvus::proto::common::MsgType::CreateCollection,
        )),
        collection_name: name,
        schema: proto.encode_to_vec(),
        shards_num: shards,
        consistency_level: ConsistencyLevel::Strong.into(),
        // 0: the server's default number of partitions for a partition key (64).
        num_partitions: partitions,
        ..Default::default()
    })
}

/// The connection half of a store: the runtime, the client and the address, so that opening
/// and creating can call the server before a store exists.
struct Conn {
    address: MilvusAddress,
    options: MilvusOptions,
    /// Where calls run; the runtime itself is only kept to be shut down.
    handle: tokio::runtime::Handle,
    /// Shut down in the background when the store is dropped: dropping a runtime blocks, which
    /// tokio forbids inside another runtime (an async server dropping a collection).
    runtime: Option<tokio::runtime::Runtime>,
    client: Client,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Conn {
    fn connect(address: &MilvusAddress, options: &MilvusOptions) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("gclip-milvus")
            .enable_all()
            .build()
            .map_err(|e| remote(address, format!("starting the client's runtime: {e}")))?;
        let endpoint = endpoint(address, options)?;
        let (user, password) = match address.token() {
            Some(t) => {
                let (u, p) = t.credentials();
                (Some(u.to_string()), Some(p.to_string()))
            }
            None => (None, None),
        };
        let timeout = options.timeout;
        let handle = runtime.handle().clone();
        let connecting = handle.spawn(async move {
            tokio::time::timeout(
                timeout,
                Client::with_timeout(endpoint, timeout, user, password),
            )
            .await
        });
        let client = match wait(&handle, connecting) {
            Ok(Ok(Ok(client))) => client,
            Ok(Ok(Err(e))) => {
                return Err(remote(
                    address,
                    format!(
                        "cannot connect: {}",
                        CallError::Client(Box::new(e)).describe(timeout)
                    ),
                ))
            }
            Ok(Err(_)) => {
                return Err(remote(
                    address,
                    format!("cannot connect: {}", CallError::Deadline.describe(timeout)),
                ))
            }
            Err(e) => {
                return Err(remote(
                    address,
                    format!("cannot connect: {}", e.describe(timeout)),
                ))
            }
        };
        Ok(Self {
            address: address.clone(),
            options: options.clone(),
            handle,
            runtime: Some(runtime),
            client,
        })
    }

    /// Creates a collection by the request [`create_request`] made, on a connection of its own
    /// (same endpoint, TLS settings, deadline and credentials as the client's): the one call
    /// the client cannot make as gclip needs it.
    fn create_collection(
        &self,
        request: milvus::proto::milvus::CreateCollectionRequest,
    ) -> Result<()> {
        use milvus::proto::milvus::milvus_service_client::MilvusServiceClient;
        let endpoint = endpoint(&self.address, &self.options)?.timeout(self.options.timeout);
        // What the client sends: base64 of USER:PASSWORD in `authorization`.
        let authorization = match self.address.token() {
            Some(t) => {
                use base64::Engine;
                let (user, password) = t.credentials();
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(
                    tonic::metadata::MetadataValue::try_from(encoded.as_str()).map_err(|_| {
                        remote(&self.address, "the token cannot be sent as metadata".into())
                    })?,
                )
            }
            None => None,
        };
        self.call("creating the collection", move |_| async move {
            let channel = endpoint.connect().await?;
            let mut service =
                MilvusServiceClient::with_interceptor(channel, Authorization(authorization));
            let status = service.create_collection(request).await?.into_inner();
            #[allow(deprecated)]
            let failed = status.error_code != milvus::proto::common::ErrorCode::Success as i32;
            if failed || status.code != 0 {
                return Err(milvus::error::Error::from(status));
            }
            Ok(())
        })
    }

    /// Runs one client call with the deadline; `what` names it in errors.
    fn call<T, F>(&self, what: &str, f: impl FnOnce(Client) -> F) -> Result<T>
    where
        F: Future<Output = milvus::error::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        self.try_call(f).map_err(|e| {
            remote(
                &self.address,
                format!("{what}: {}", e.describe(self.options.timeout)),
            )
        })
    }

    fn try_call<T, F>(&self, f: impl FnOnce(Client) -> F) -> std::result::Result<T, CallError>
    where
        F: Future<Output = milvus::error::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let fut = f(self.client.clone());
        let timeout = self.options.timeout;
        let task = self
            .handle
            .spawn(async move { tokio::time::timeout(timeout, fut).await });
        match wait(&self.handle, task)? {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CallError::Client(Box::new(e))),
            Err(_) => Err(CallError::Deadline),
        }
    }

    /// Runs an idempotent write, retrying connection failures with a doubling back-off.
    fn call_retrying<T, F>(&self, what: &str, f: impl Fn(Client) -> F) -> Result<T>
    where
        F: Future<Output = milvus::error::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let mut wait_for = self.options.backoff;
        let mut attempt = 0;
        loop {
            match self.try_call(&f) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && attempt < self.options.retries => {
                    tracing::warn!(
                        collection = %self.address,
                        attempt = attempt + 1,
                        "{what}: {}; retrying in {:?}",
                        e.describe(self.options.timeout),
                        wait_for
                    );
                    std::thread::sleep(wait_for);
                    wait_for = wait_for.saturating_mul(2);
                    attempt += 1;
                }
                Err(e) => {
                    let tries = if attempt > 0 {
                        format!(" (after {} attempts)", attempt + 1)
                    } else {
                        String::new()
                    };
                    return Err(remote(
                        &self.address,
                        format!("{what}{tries}: {}", e.describe(self.options.timeout)),
                    ));
                }
            }
        }
    }
}

/// The `authorization` metadata of every request on a connection of gclip's own (the client's
/// interceptor cannot be made outside it).
struct Authorization(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Authorization {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(a) = &self.0 {
            request.metadata_mut().insert("authorization", a.clone());
        }
        Ok(request)
    }
}

/// Where the client connects: for `milvuss://`, TLS trusting the system's roots and the
/// certificates of [`MilvusOptions::ca`]. (The client itself, given an `https` URI as a string,
/// makes an endpoint without TLS and then refuses to connect.)
fn endpoint(address: &MilvusAddress, options: &MilvusOptions) -> Result<Endpoint> {
    let endpoint = Endpoint::from_shared(address.endpoint())
        .map_err(|e| remote(address, format!("the address is not a URI: {e}")))?;
    if !address.tls {
        return Ok(endpoint);
    }
    let mut tls = ClientTlsConfig::new().with_enabled_roots();
    let mut ca_shown = String::new();
    if let Some(path) = &options.ca {
        ca_shown = format!(" with {CA_VAR}={}", path.display());
        let pem = std::fs::read(path).map_err(|e| {
            SearchError::Invalid(format!(
                "{CA_VAR}={}: cannot read the CA certificates: {e}",
                path.display()
            ))
        })?;
        // The client's TLS set-up skips what is not a certificate without a word: a file of
        // none would quietly leave only the system's roots.
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(SearchError::Invalid(format!(
                "{CA_VAR}={}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            )));
        }
        tls = tls.ca_certificate(Certificate::from_pem(pem));
    }
    endpoint
        .tls_config(tls)
        .map_err(|e| remote(address, format!("setting up TLS{ca_shown}: {e}")))
}

/// Waits for a task of `runtime` from any thread (never inside the runtime: the store's
/// methods are synchronous, and this blocks on a plain channel, not on the runtime).
fn wait<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    task: tokio::task::JoinHandle<T>,
) -> std::result::Result<T, CallError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(task.await);
    });
    match rx.recv() {
        Ok(Ok(v)) => Ok(v),
        // The task panicked (or the runtime went away): the client's panic message is on
        // stderr already.
        Ok(Err(_)) | Err(_) => Err(CallError::Panicked),
    }
}

fn remote(address: &MilvusAddress, message: String) -> SearchError {
    SearchError::Remote {
        collection: address.to_string(),
        message,
    }
}

/// The expression of the ids after `last` in id order (all ids without one).
fn ids_after(last: Option<&str>) -> String {
    match last {
        Some(last) => format!("{ID_FIELD} > {}", string_literal(last)),
        None => format!("{ID_FIELD} >= \"\""),
    }
}

/// A column of a query reply, by name.
fn column<'a>(cols: &'a [FieldColumn], name: &str) -> Option<&'a ValueVec> {
    cols.iter().find(|c| c.name == name).map(|c| &c.value)
}

/// One row of a query reply.
struct Row {
    id: String,
    fields: Option<Fields>,
    vector: Option<Vec<f32>>,
    source: Option<Option<FileState>>,
}

impl MilvusStore {
    /// Whether the server has a collection under `address`'s name.
    pub fn exists(address: &MilvusAddress, options: &MilvusOptions) -> Result<bool> {
        let conn = Conn::connect(address, options)?;
        let name = address.name.clone();
        conn.call("checking the collection", move |c| async move {
            c.has_collection(name).await
        })
    }

    /// Creates the collection (with its HNSW index, loaded) and opens it. Fails when the
    /// server already has a collection of that name.
    pub fn create(
        address: &MilvusAddress,
        mut info: CollectionInfo,
        options: MilvusOptions,
    ) -> Result<Self> {
        let conn = Conn::connect(address, &options)?;
        let name = address.name.clone();
        let n = name.clone();
        if conn.call("checking the collection", move |c| async move {
            c.has_collection(n).await
        })? {
            return Err(SearchError::Invalid(format!(
                "{address} already holds a collection"
            )));
        }
        if info.created == 0 {
            info.created = crate::sqlite::now_unix();
        }
        let info_json = serde_json::to_string(&info)
            .map_err(|e| SearchError::Invalid(format!("collection info: {e}")))?;
        let key = options.partition_key.as_deref();
        let invalid = |why: String| SearchError::Invalid(format!("collection {address}: {why}"));
        if let Some(k) = key {
            check_partition_key_name(k).map_err(invalid)?;
        }
        let scalar_fields = options.scalar_fields.as_deref().unwrap_or_default();
        check_typed_fields(key, scalar_fields).map_err(invalid)?;
        if let (Some(n), None) = (options.partitions, key) {
            return Err(invalid(format!(
                "{PARTITIONS_VAR}={n} sets the partitions of a partition key, and the collection \
                 would have none; give {PARTITION_KEY_VAR} too, or leave {PARTITIONS_VAR} unset"
            )));
        }
        let schema = schema_for(&name, &info_json, info.model.dim, key, scalar_fields)?;
        // 0 asks for the server's default.
        let shards = options.shards.unwrap_or(0) as i32;
        let partitions = options.partitions.unwrap_or(0).into();
        conn.create_collection(create_request(schema, key, shards, partitions)?)?;
        let hnsw = options.hnsw;
        let n = name.clone();
        conn.call("creating the HNSW index", move |c| async move {
            let params = [
                ("M".to_string(), hnsw.connectivity.to_string()),
                ("efConstruction".to_string(), hnsw.expansion_add.to_string()),
            ]
            .into_iter()
            .collect();
            c.create_index(
                n,
                VECTOR_FIELD,
                IndexParams::new(
                    "vector_hnsw".into(),
                    IndexType::HNSW,
                    MetricType::IP,
                    params,
                ),
            )
            .await
        })?;
        // Milvus 2.3's scalar indexes: sorted for numbers, a trie for strings; none for
        // booleans (a scan of a BOOL column is as cheap), presence fields included.
        for f in scalar_fields {
            let kind = match f.ty {
                ScalarType::String(_) => IndexType::Trie,
                ScalarType::Int | ScalarType::Float => IndexType::StlSort,
                ScalarType::Bool => continue,
            };
            let (n, field) = (name.clone(), f.name.clone());
            conn.call(
                &format!("creating the {kind} index of the scalar field {field}"),
                move |c| async move {
                    let index = format!("{field}_{kind}").to_ascii_lowercase();
                    let params =
                        IndexParams::new(index, kind, MetricType::INVALID, Default::default());
                    c.create_index(n, field, params).await
                },
            )?;
        }
        Self::open_with(conn)
    }

    /// Opens the collection: reads its description back, checks its fields, loads it.
    pub fn open(address: &MilvusAddress, options: MilvusOptions) -> Result<Self> {
        let conn = Conn::connect(address, &options)?;
        Self::open_with(conn)
    }

    fn open_with(conn: Conn) -> Result<Self> {
        let address = conn.address.clone();
        let name = address.name.clone();
        let n = name.clone();
        if !conn.call("checking the collection", move |c| async move {
            c.has_collection(n).await
        })? {
            return Err(SearchError::NoCollectionAt(address.to_string()));
        }
        let n = name.clone();
        let described = conn.call("describing the collection", move |c| async move {
            c.describe_collection(n).await
        })?;
        let not_ours = |why: String| {
            SearchError::Invalid(format!(
                "{address} is not a gclip collection: {why}; gclip makes its collections with \
                 the fields id (VARCHAR primary key), vector (FLOAT_VECTOR), fields (JSON) and \
                 source (JSON), a VARCHAR partition key and VARCHAR, INT64, DOUBLE or BOOL scalar \
                 fields when declared (with a BOOL NAME__present for an optional one), and its \
                 model in the description"
            ))
        };
        let description = &described.schema.description;
        let Some(info_json) = description.strip_prefix(DESCRIPTION_PREFIX) else {
            return Err(not_ours(
                "its description does not name a gclip model".into(),
            ));
        };
        let info: CollectionInfo = serde_json::from_str(info_json)
            .map_err(|e| not_ours(format!("its description does not read as gclip's ({e})")))?;
        let dim = info.model.dim;
        use milvus::proto::schema::DataType;
        let mut found: Vec<String> = Vec::new();
        // The declarations are the collection's: a VARCHAR field marked as partition key, and
        // scalar fields, besides gclip's four.
        let partition_key = described
            .schema
            .fields
            .iter()
            .find(|f| f.is_partition_key)
            .map(|f| f.name.clone());
        let mut scalar_fields: Vec<ScalarField> = Vec::new();
        // The optional fields, by the presence fields found.
        let mut presence: Vec<&str> = Vec::new();
        let mut ok = true;
        for f in &described.schema.fields {
            let ty = DataType::try_from(f.data_type).unwrap_or(DataType::None);
            let param = |key: &str| {
                f.type_params
                    .iter()
                    .find(|p| p.key == key)
                    .map(|p| p.value.as_str())
            };
            let key = if f.is_partition_key {
                " (partition key)"
            } else {
                ""
            };
            found.push(match (param("dim"), param("max_length")) {
                (Some(d), _) => format!("{} {}(dim {d}){key}", f.name, ty.as_str_name()),
                (None, Some(n)) => format!("{} {}({n}){key}", f.name, ty.as_str_name()),
                (None, None) => format!("{} {}{key}", f.name, ty.as_str_name()),
            });
            ok &= match f.name.as_str() {
                _ if f.is_partition_key => {
                    ty == DataType::VarChar && check_partition_key_name(&f.name).is_ok()
                }
                ID_FIELD => ty == DataType::VarChar && f.is_primary_key,
                VECTOR_FIELD => {
                    ty == DataType::FloatVector
                        && param("dim").and_then(|d| d.parse::<usize>().ok()) == Some(dim)
                }
                FIELDS_FIELD | SOURCE_FIELD => ty == DataType::Json,
                _ if ScalarField::presence_of(f).is_some() => {
                    presence.extend(ScalarField::presence_of(f));
                    true
                }
                _ => match ScalarField::from_schema(f) {
                    Some(declared) => {
                        scalar_fields.push(declared);
                        true
                    }
                    None => false,
                },
            };
        }
        ok &= mark_optional(&mut scalar_fields, &presence);
        // Field names are unique: gclip's four are all there when the count adds up.
        ok &= described.schema.fields.len()
            == 4 + usize::from(partition_key.is_some()) + scalar_fields.len() + presence.len();
        if !ok {
            return Err(not_ours(format!(
                "it has the fields {} (model dimension {dim})",
                found.join(", ")
            )));
        }
        if let Some(asked) = &conn.options.partition_key {
            if partition_key.as_ref() != Some(asked) {
                let has = match &partition_key {
                    Some(k) => format!("the partition key `{k}`"),
                    None => "no partition key".into(),
                };
                return Err(SearchError::Invalid(format!(
                    "collection {address} was created with {has}, and \
                     {PARTITION_KEY_VAR}={asked} asks for `{asked}`; a partition key is fixed \
                     when a collection is created (unset the variable to use this one as it is)"
                )));
            }
        }
        if let Some(asked) = &conn.options.scalar_fields {
            let sorted = |fields: &[ScalarField]| {
                let mut shown: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
                shown.sort();
                shown
            };
            let (has, wants) = (sorted(&scalar_fields), sorted(asked));
            if has != wants {
                let list = |l: &[String]| match l {
                    [] => "no scalar fields".to_string(),
                    l => format!("the scalar fields {}", l.join(",")),
                };
                return Err(SearchError::Invalid(format!(
                    "collection {address} was created with {}, and {SCALAR_FIELDS_VAR} asks for \
                     {}; scalar fields are fixed when a collection is created (unset the \
                     variable to use this one as it is)",
                    list(&has),
                    list(&wants)
                )));
            }
        }
        if let Some(asked) = conn.options.partitions {
            if partition_key.is_none() {
                return Err(SearchError::Invalid(format!(
                    "collection {address} has no partition key, and {PARTITIONS_VAR}={asked} \
                     sets the partitions of one (unset the variable to use this collection)"
                )));
            }
            // Milvus 2.3 reports the number it made; a server that does not (0) is asked for
            // its partitions.
            let has = match usize::try_from(described.num_partitions) {
                Ok(n) if n > 0 => n,
                _ => {
                    let n = name.clone();
                    conn.call("listing the partitions", move |c| async move {
                        c.list_partitions(n).await
                    })?
                    .len()
                }
            };
            if has != asked as usize {
                return Err(SearchError::Invalid(format!(
                    "collection {address} was created with {has} partitions, and \
                     {PARTITIONS_VAR}={asked} asks for {asked}; the partitions are fixed when a \
                     collection is created (unset the variable to use this one as it is)"
                )));
            }
        }
        let replicas = conn.options.replicas;
        let n = name.clone();
        let loaded = replicas.is_none()
            && conn.call(
                "asking whether the collection is loaded",
                move |c| async move { c.get_load_state(n, None).await },
            )? == milvus::proto::common::LoadState::Loaded;
        if !loaded {
            // Asking a loaded collection for another replica count is the server's error (it
            // names both counts); an unloaded one is loaded with one unless told otherwise.
            let n = name.clone();
            let what = match replicas {
                Some(r) => format!("loading the collection with {r} replicas"),
                None => "loading the collection".into(),
            };
            conn.call(&what, move |c| async move {
                let load = LoadOptions::default().replica_number(replicas.unwrap_or(1) as i32);
                c.load_collection(n, Some(load)).await
            })?;
        }
        let schema = schema_for(
            &name,
            info_json,
            dim,
            partition_key.as_deref(),
            &scalar_fields,
        )?;
        let typed = typed_fields(partition_key.as_deref(), &scalar_fields);
        let store = Self {
            conn,
            info,
            schema,
            typed,
            partition_key,
            last_len: AtomicUsize::new(0),
        };
        store.count()?;
        Ok(store)
    }

    /// The address (without the token).
    pub fn address(&self) -> &MilvusAddress {
        &self.conn.address
    }

    /// The document field that is the collection's partition key (its tenant), as the
    /// collection was created; `None` when it has none.
    pub fn partition_key(&self) -> Option<&str> {
        self.partition_key.as_deref()
    }

    /// The declared scalar fields (besides the partition key), as the collection was created.
    pub fn scalar_fields(&self) -> &[ScalarField] {
        let key = usize::from(self.partition_key.is_some());
        &self.typed[key..]
    }

    /// What a document's typed columns hold (the partition key's first, then the declared
    /// scalar fields', each followed by its presence field when optional), in order: each
    /// field but an optional one must be present with a value of its type (a tenant: a string
    /// of at most [`MAX_TENANT_BYTES`]). The error names the document and the field.
    fn typed_values(
        &self,
        id: &str,
        fields: &Fields,
    ) -> std::result::Result<Vec<ScalarValue>, String> {
        let address = &self.conn.address;
        let mut cells = Vec::new();
        for f in &self.typed {
            let value = if self.partition_key.as_deref() == Some(f.name.as_str()) {
                let role = format!("the partition key of {address}");
                f.value_in(id, fields, &role, "names its tenant there, as a string")?
            } else {
                let role = format!("a scalar field {f} of {address}");
                let holds = "holds a value of its type there (Milvus 2.3's scalar fields \
                             cannot be empty; a field declared optional, name:type?, may be \
                             missing)";
                f.value_in(id, fields, &role, holds)?
            };
            cells.extend(f.cells(value));
        }
        Ok(cells)
    }

    fn invalid(&self, message: impl std::fmt::Display) -> SearchError {
        SearchError::Invalid(format!("collection {}: {message}", self.conn.address))
    }

    fn bad_reply(&self, message: impl std::fmt::Display) -> SearchError {
        remote(
            &self.conn.address,
            format!("unexpected reply from the server: {message}"),
        )
    }

    /// The collection's shards, as the server describes it.
    pub fn shards(&self) -> Result<u32> {
        let n = self.conn.address.name.clone();
        let described = self
            .conn
            .call("describing the collection", move |c| async move {
                c.describe_collection(n).await
            })?;
        Ok(described.shards_num.max(0) as u32)
    }

    /// The collection's partitions, as the server lists them: one (`_default`) without a
    /// partition key, as many as it was created with (`GCLIP_MILVUS_PARTITIONS`, else the
    /// server's default, 64) with one.
    pub fn partitions(&self) -> Result<usize> {
        let n = self.conn.address.name.clone();
        let names = self
            .conn
            .call("listing the partitions", move |c| async move {
                c.list_partitions(n).await
            })?;
        Ok(names.len())
    }

    /// Counts the documents (strong consistency).
    fn count(&self) -> Result<usize> {
        let name = self.conn.address.name.clone();
        let level = self.conn.options.consistency.level();
        let cols = self.conn.call("counting documents", move |c| async move {
            let options = QueryOptions::new()
                .output_fields(vec!["count(*)".into()])
                .consistency_level(level);
            c.query(name, "", &options).await
        })?;
        let n = match column(&cols, "count(*)") {
            Some(ValueVec::Long(v)) if v.len() == 1 && v[0] >= 0 => v[0] as usize,
            _ => return Err(self.bad_reply("count(*) is not one number")),
        };
        self.last_len.store(n, Ordering::Relaxed);
        Ok(n)
    }

    /// Rows matching `expr`, at most `limit` of them, with the named outputs.
    fn query(&self, what: &str, expr: String, limit: usize, outputs: &[&str]) -> Result<Vec<Row>> {
        let cols = self.query_columns(what, expr, limit, outputs)?;
        self.rows(cols, limit, outputs)
    }

    /// The reply to a query for `expr` as the client decodes it: the id column and the named
    /// outputs, not yet checked.
    fn query_columns(
        &self,
        what: &str,
        expr: String,
        limit: usize,
        outputs: &[&str],
    ) -> Result<Vec<FieldColumn>> {
        let name = self.conn.address.name.clone();
        let mut output_fields: Vec<String> = vec![ID_FIELD.into()];
        output_fields.extend(outputs.iter().map(|s| s.to_string()));
        let level = self.conn.options.consistency.level();
        self.conn.call(what, move |c| async move {
            let options = QueryOptions::new()
                .output_fields(output_fields)
                .limit(limit as i64)
                .consistency_level(level);
            c.query(name, &expr, &options).await
        })
    }

    /// Decodes a query reply, checking every column against the row count, which must be at
    /// most `limit`: a reply cannot make the store allocate more than it asked for.
    fn rows(&self, cols: Vec<FieldColumn>, limit: usize, outputs: &[&str]) -> Result<Vec<Row>> {
        let ids = match column(&cols, ID_FIELD) {
            Some(ValueVec::String(ids)) => ids.clone(),
            None if cols.is_empty() => Vec::new(),
            _ => return Err(self.bad_reply("no id column")),
        };
        if ids.len() > limit {
            return Err(self.bad_reply(format!(
                "{} rows where at most {limit} were asked for",
                ids.len()
            )));
        }
        let n = ids.len();
        let json_column = |name: &str| -> Result<Option<Vec<Json>>> {
            if !outputs.contains(&name) || n == 0 {
                return Ok(None);
            }
            match column(&cols, name) {
                Some(ValueVec::Json(values)) if values.len() == n => values
                    .iter()
                    .map(|b| {
                        serde_json::from_slice(b)
                            .map_err(|e| self.bad_reply(format!("{name} is not JSON: {e}")))
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some),
                _ => Err(self.bad_reply(format!("the {name} column has not {n} values"))),
            }
        };
        let fields = json_column(FIELDS_FIELD)?;
        let sources = json_column(SOURCE_FIELD)?;
        let dim = self.info.model.dim;
        let vectors = if outputs.contains(&VECTOR_FIELD) && n > 0 {
            match column(&cols, VECTOR_FIELD) {
                Some(ValueVec::Float(v)) if v.len() == n * dim => Some(v.clone()),
                _ => {
                    return Err(
                        self.bad_reply(format!("the vector column has not {n} × {dim} numbers"))
                    )
                }
            }
        } else {
            None
        };
        let mut rows = Vec::with_capacity(n);
        for (i, id) in ids.into_iter().enumerate() {
            let fields = match &fields {
                Some(f) => match &f[i] {
                    Json::Object(m) => Some(m.clone()),
                    _ => {
                        return Err(
                            self.bad_reply(format!("the fields of {id:?} are not an object"))
                        )
                    }
                },
                None => None,
            };
            let source = match &sources {
                Some(s) => Some(match &s[i] {
                    Json::Object(m) if m.is_empty() => None,
                    other => Some(serde_json::from_value(other.clone()).map_err(|e| {
                        self.bad_reply(format!("the source of {id:?} does not read: {e}"))
                    })?),
                }),
                None => None,
            };
            let vector = vectors.as_ref().map(|v| v[i * dim..(i + 1) * dim].to_vec());
            rows.push(Row {
                id,
                fields,
                vector,
                source,
            });
        }
        Ok(rows)
    }

    /// Rows with these ids (any order; missing ids are absent).
    fn rows_by_id(&self, what: &str, ids: &[String], outputs: &[&str]) -> Result<Vec<Row>> {
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_EXPR) {
            let list: Vec<String> = chunk.iter().map(|id| string_literal(id)).collect();
            let expr = format!("{ID_FIELD} in [{}]", list.join(", "));
            rows.extend(self.query(what, expr, chunk.len(), outputs)?);
        }
        Ok(rows)
    }

    /// Walks the collection in id order from after `after`: one page of at most `page` rows.
    /// Milvus answers a query with a limit with the smallest primary keys that match.
    fn page_after(&self, what: &str, after: Option<&str>, outputs: &[&str]) -> Result<Vec<Row>> {
        let mut rows = self.query(
            what,
            ids_after(after),
            self.conn.options.page.max(1),
            outputs,
        )?;
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(rows)
    }

    fn check_document(&self, d: &NewDocument) -> Result<()> {
        let dim = self.info.model.dim;
        if d.id.is_empty() {
            return Err(self.invalid("document id is empty"));
        }
        if d.id.len() > MAX_ID_BYTES {
            return Err(self.invalid(format!(
                "document id of {} bytes; a Milvus collection takes ids of at most {MAX_ID_BYTES}",
                d.id.len()
            )));
        }
        if d.vector.len() != dim {
            return Err(SearchError::Dimension {
                got: d.vector.len(),
                want: dim,
            });
        }
        if d.vector.iter().any(|x| !x.is_finite()) {
            return Err(self.invalid(format!("document {:?} has a non-finite vector", d.id)));
        }
        self.typed_values(&d.id, &d.fields)
            .map_err(SearchError::Invalid)?;
        Ok(())
    }

    /// Upserts documents in requests of at most [`UPSERT_BYTES`], each retried; returns the
    /// server's timestamp of the last.
    ///
    /// A collection with a partition key is written by deleting the ids and inserting the
    /// documents, in one retried step, instead of upserting: Milvus 2.3.5 files an upserted row
    /// under the partition of another field's hash (milvus-io/milvus#30607, fixed after 2.3.5
    /// by #30773), where a search that names the tenant does not look. Each id is written once
    /// (the last of its documents), as an upsert would.
    fn write(&self, docs: &[NewDocument]) -> Result<u64> {
        let docs: Vec<&NewDocument> = if self.partition_key.is_some() {
            let last: std::collections::HashMap<&str, usize> = docs
                .iter()
                .enumerate()
                .map(|(i, d)| (d.id.as_str(), i))
                .collect();
            docs.iter()
                .enumerate()
                .filter(|(i, d)| last.get(d.id.as_str()) == Some(i))
                .map(|(_, d)| d)
                .collect()
        } else {
            docs.iter().collect()
        };
        let mut timestamp = 0;
        let mut start = 0;
        while start < docs.len() {
            let mut end = start;
            let mut bytes = 0;
            let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let mut typed: Vec<ValueVec> =
                self.typed.iter().flat_map(|f| f.empty_columns()).collect();
            while end < docs.len() && (end == start || bytes < UPSERT_BYTES) {
                let d = docs[end];
                let values = self
                    .typed_values(&d.id, &d.fields)
                    .map_err(SearchError::Invalid)?;
                for (value, column) in values.into_iter().zip(&mut typed) {
                    bytes += match &value {
                        ScalarValue::String(s) => s.len(),
                        _ => 8,
                    };
                    if !value.push_to(column) {
                        return Err(self.invalid("a typed field's value and column disagree"));
                    }
                }
                let fields = serde_json::to_vec(&Json::Object(d.fields.clone()))
                    .map_err(|e| self.invalid(format!("fields of {:?}: {e}", d.id)))?;
                let source = match &d.source {
                    Some(s) => serde_json::to_vec(s),
                    None => Ok(b"{}".to_vec()),
                }
                .map_err(|e| self.invalid(format!("source of {:?}: {e}", d.id)))?;
                bytes += d.id.len() + 4 * d.vector.len() + fields.len() + source.len();
                columns.0.push(d.id.clone());
                columns.1.extend_from_slice(&d.vector);
                columns.2.push(fields);
                columns.3.push(source);
                end += 1;
            }
            let field = |name: &str| {
                self.schema
                    .get_field(name)
                    .cloned()
                    .ok_or_else(|| self.invalid(format!("schema has no field {name}")))
            };
            let (id_f, vec_f, fields_f, source_f) = (
                field(ID_FIELD)?,
                field(VECTOR_FIELD)?,
                field(FIELDS_FIELD)?,
                field(SOURCE_FIELD)?,
            );
            let typed_f = self
                .typed
                .iter()
                .flat_map(|f| f.column_names())
                .map(|name| field(&name))
                .collect::<Result<Vec<_>>>()?;
            let name = self.conn.address.name.clone();
            let count = end - start;
            // For the delete of a partition-key write: the ids, a bounded list per expression.
            let deletes: Vec<String> = match &self.partition_key {
                Some(_) => columns
                    .0
                    .chunks(IDS_PER_EXPR)
                    .map(|chunk| {
                        let list: Vec<String> = chunk.iter().map(|id| string_literal(id)).collect();
                        format!("{ID_FIELD} in [{}]", list.join(", "))
                    })
                    .collect(),
                None => Vec::new(),
            };
            let result = self.conn.call_retrying("writing documents", |c| {
                let name = name.clone();
                let deletes = deletes.clone();
                let mut data = vec![
                    FieldColumn::new(&id_f, columns.0.clone()),
                    FieldColumn::new(&vec_f, columns.1.clone()),
                    FieldColumn::new(&fields_f, ValueVec::Json(columns.2.clone())),
                    FieldColumn::new(&source_f, ValueVec::Json(columns.3.clone())),
                ];
                for (f, values) in typed_f.iter().zip(&typed) {
                    data.push(FieldColumn::new(f, values.clone()));
                }
                async move {
                    if deletes.is_empty() {
                        let r = c
                            .upsert(name, data, None::<milvus::mutate::UpsertOptions>)
                            .await?;
                        return Ok((r.upsert_cnt, r.timestamp));
                    }
                    // Deleting and inserting again is idempotent as a whole, so the pair is
                    // retried as one step.
                    for expr in deletes {
                        let options = milvus::mutate::DeleteOptions::with_filter(expr);
                        c.delete(name.clone(), &options).await?;
                    }
                    let r = c.insert(name, data, None).await?;
                    Ok((r.insert_cnt, r.timestamp))
                }
            })?;
            let (written, written_at) = result;
            if written != count as i64 {
                return Err(self.bad_reply(format!("{written} documents written of {count}")));
            }
            timestamp = written_at;
            start = end;
        }
        Ok(timestamp)
    }
}

impl Store for MilvusStore {
    fn info(&self) -> &CollectionInfo {
        &self.info
    }

    /// A collection with a partition key takes only documents that name their tenant in it,
    /// one with scalar fields only documents that hold a value of each field's type (or, for
    /// an optional field, nothing or null).
    fn check_fields(&self, id: &str, fields: &Fields) -> std::result::Result<(), String> {
        self.typed_values(id, fields).map(|_| ())
    }

    /// The server's count; the last count read when the server cannot be asked (with a
    /// warning: the trait has no error here).
    fn len(&self) -> usize {
        self.count().unwrap_or_else(|e| {
            tracing::warn!("{e}; using the last count read");
            self.last_len.load(Ordering::Relaxed)
        })
    }

    fn upsert(&self, docs: Vec<NewDocument>) -> Result<WriteReceipt> {
        for d in &docs {
            self.check_document(d)?;
        }
        let timestamp = self.write(&docs)?;
        Ok(WriteReceipt {
            count: docs.len(),
            generation: timestamp,
        })
    }

    fn delete(&self, ids: &[String]) -> Result<WriteReceipt> {
        // Milvus counts the keys it was given, present or not: ask which exist first, so that
        // `count` says how many went, as for the embedded backend.
        let present: Vec<String> = self
            .rows_by_id("finding documents to delete", ids, &[])?
            .into_iter()
            .map(|r| r.id)
            .collect();
        let mut timestamp = 0;
        for chunk in present.chunks(IDS_PER_EXPR) {
            let list: Vec<String> = chunk.iter().map(|id| string_literal(id)).collect();
            let expr = format!("{ID_FIELD} in [{}]", list.join(", "));
            let name = self.conn.address.name.clone();
            let result = self.conn.call_retrying("deleting documents", |c| {
                let name = name.clone();
                let options = milvus::mutate::DeleteOptions::with_filter(expr.clone());
                async move { c.delete(name, &options).await }
            })?;
            timestamp = result.timestamp;
        }
        Ok(WriteReceipt {
            count: present.len(),
            generation: timestamp,
        })
    }

    fn update_fields(&self, id: &str, fields: Fields) -> Result<WriteReceipt> {
        let ids = [id.to_string()];
        let Some(row) = self
            .rows_by_id("reading the document", &ids, &[VECTOR_FIELD, SOURCE_FIELD])?
            .into_iter()
            .next()
        else {
            return Err(SearchError::NotFound(id.to_string()));
        };
        let doc = NewDocument {
            id: row.id,
            fields,
            vector: row.vector.unwrap_or_default(),
            source: row.source.flatten(),
        };
        let timestamp = self.write(std::slice::from_ref(&doc))?;
        Ok(WriteReceipt {
            count: 1,
            generation: timestamp,
        })
    }

    fn get(&self, id: &str) -> Result<Option<Document>> {
        let ids = [id.to_string()];
        Ok(self
            .rows_by_id("reading the document", &ids, &[FIELDS_FIELD])?
            .into_iter()
            .next()
            .map(|r| Document {
                id: r.id,
                fields: r.fields.unwrap_or_default(),
            }))
    }

    fn vector(&self, id: &str) -> Result<Option<Vec<f32>>> {
        let ids = [id.to_string()];
        Ok(self
            .rows_by_id("reading the vector", &ids, &[VECTOR_FIELD])?
            .into_iter()
            .next()
            .and_then(|r| r.vector))
    }

    fn list(&self, skip: usize, limit: usize) -> Result<Vec<Document>> {
        // Pages in id order from the start, as the embedded backend lists: Milvus' own offset
        // stops at a window of 16,384.
        let mut out = Vec::new();
        let mut skipped = 0;
        let mut last: Option<String> = None;
        while out.len() < limit {
            let page = self.page_after("listing documents", last.as_deref(), &[FIELDS_FIELD])?;
            let Some(end) = page.last().map(|r| r.id.clone()) else {
                break;
            };
            for r in page {
                if skipped < skip {
                    skipped += 1;
                } else if out.len() < limit {
                    out.push(Document {
                        id: r.id,
                        fields: r.fields.unwrap_or_default(),
                    });
                }
            }
            last = Some(end);
        }
        Ok(out)
    }

    fn search(&self, request: &SearchRequest) -> Result<Vec<Hit>> {
        if request.text.is_some() {
            return Err(self.invalid(
                "lexical and hybrid search need a BM25 index, which Milvus 2.3 does not have; \
                 search by vector only, or use a collection directory (docs/MILVUS.md)",
            ));
        }
        let Some(vector) = &request.vector else {
            return Err(self.invalid("a query needs a vector (text or image)"));
        };
        let dim = self.info.model.dim;
        if vector.len() != dim {
            return Err(SearchError::Dimension {
                got: vector.len(),
                want: dim,
            });
        }
        let window = request.limit.saturating_add(request.offset);
        if request.limit == 0 {
            return Ok(Vec::new());
        }
        if window > MAX_WINDOW {
            return Err(self.invalid(format!(
                "offset + limit is {window}; Milvus searches at most {MAX_WINDOW} results deep"
            )));
        }
        let filter = match &request.filter {
            Some(f) => to_milvus_expr_for(f, &self.typed).map_err(|e| self.invalid(e))?,
            None => String::new(),
        };
        let ef = match request.mode {
            SearchMode::Exact => MAX_EF,
            _ => self
                .conn
                .options
                .hnsw
                .expansion_search
                .max(window)
                .min(MAX_EF),
        };
        let name = self.conn.address.name.clone();
        let query = Value::from(vector.clone());
        let (limit, offset) = (request.limit, request.offset);
        let level = self.conn.options.consistency.level();
        let (ids, scores) = self.conn.call("searching", move |c| async move {
            let options = SearchOptions::new()
                .limit(limit)
                .filter(filter)
                .add_param("anns_field", VECTOR_FIELD)
                .add_param("metric_type", "IP")
                .add_param("ef", ef.to_string())
                .add_param("offset", offset.to_string())
                .consistency_level(level);
            // The client panics on a JSON output column in search replies (milvus-sdk-rust
            // 3.0.3), so the search returns ids and scores and the fields are read after.
            let results = match c.search(name, vec![query], Some(options)).await {
                Ok(r) => r,
                // The server leaves out the ids of a search that found nothing (one whose
                // filter pruned it to empty partitions, say), and the client takes that for a
                // malformed reply.
                Err(milvus::error::Error::Unexpected(m)) if m == "no IDs in search result" => {
                    Vec::new()
                }
                Err(e) => return Err(e),
            };
            let mut ids = Vec::new();
            let mut scores = Vec::new();
            for r in results {
                for id in r.id {
                    ids.push(match id {
                        Value::String(s) => Some(s.into_owned()),
                        _ => None,
                    });
                }
                scores.extend(r.score);
            }
            Ok((ids, scores))
        })?;
        if ids.len() != scores.len() || ids.len() > limit {
            return Err(self.bad_reply(format!(
                "{} ids and {} scores for at most {limit} results",
                ids.len(),
                scores.len()
            )));
        }
        let ids: Vec<String> = ids
            .into_iter()
            .map(|id| id.ok_or_else(|| self.bad_reply("an id that is not a string")))
            .collect::<Result<_>>()?;
        let mut fields: std::collections::HashMap<String, Fields> = self
            .rows_by_id("reading the hits", &ids, &[FIELDS_FIELD])?
            .into_iter()
            .map(|r| (r.id, r.fields.unwrap_or_default()))
            .collect();
        let spec = &self.info.spec;
        Ok(ids
            .into_iter()
            .zip(scores)
            // A document deleted between the search and the read is left out.
            .filter_map(|(id, score)| {
                let fields = fields.remove(&id)?;
                let image = spec
                    .image_fields()
                    .find_map(|f| fields.get(f).and_then(|v| v.as_str()).map(String::from));
                Some(Hit {
                    id,
                    score,
                    cosine: None,
                    bm25: None,
                    image,
                    fields,
                })
            })
            .collect())
    }

    fn sources(&self) -> Result<Vec<(String, FileState)>> {
        let mut out = Vec::new();
        let mut last: Option<String> = None;
        loop {
            let page = self.page_after("reading file states", last.as_deref(), &[SOURCE_FIELD])?;
            let Some(end) = page.last().map(|r| r.id.clone()) else {
                break;
            };
            out.extend(
                page.into_iter()
                    .filter_map(|r| Some((r.id, r.source.flatten()?))),
            );
            last = Some(end);
        }
        Ok(out)
    }

    fn update_sources(&self, states: &[(String, FileState)]) -> Result<WriteReceipt> {
        let mut count = 0;
        let mut timestamp = 0;
        for chunk in states.chunks(self.conn.options.page.max(1)) {
            let ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
            let mut rows: std::collections::HashMap<String, Row> = self
                .rows_by_id("reading documents", &ids, &[VECTOR_FIELD, FIELDS_FIELD])?
                .into_iter()
                .map(|r| (r.id.clone(), r))
                .collect();
            let docs: Vec<NewDocument> = chunk
                .iter()
                .filter_map(|(id, state)| {
                    let row = rows.remove(id)?;
                    Some(NewDocument {
                        id: row.id,
                        fields: row.fields.unwrap_or_default(),
                        vector: row.vector.unwrap_or_default(),
                        source: Some(state.clone()),
                    })
                })
                .collect();
            if docs.is_empty() {
                continue;
            }
            timestamp = self.write(&docs)?;
            count += docs.len();
        }
        Ok(WriteReceipt {
            count,
            generation: timestamp,
        })
    }

    /// Seals the segments that took writes, so that Milvus builds their HNSW index now rather
    /// than when they fill up or idle out; returns without waiting for the index (a write is
    /// in Milvus' log, and found by searches, as soon as it is acknowledged).
    fn flush(&self) -> Result<()> {
        let name = self.conn.address.name.clone();
        self.conn.call(
            "sealing the written segments (flush)",
            move |c| async move { c.flush(name).await },
        )
    }

    /// The documents outside the sealed segments that the query node has loaded with their
    /// index: those of growing segments (searched without the HNSW index), and of sealed ones
    /// whose index is still being built or loaded. A sealed segment too small for an index is
    /// searched exhaustively by design, and counts as indexed. Deleted documents still held
    /// by sealed segments (until Milvus compacts them) make it count fewer.
    fn unindexed(&self) -> Result<u64> {
        let name = self.conn.address.name.clone();
        let segments = self
            .conn
            .call("listing the loaded segments", move |c| async move {
                c.list_loaded_segments(name).await
            })?;
        let indexed: i64 = segments
            .iter()
            .filter(|s| !s.index_name.is_empty() || s.num_rows < MIN_ROWS_FOR_AN_INDEX)
            .map(|s| s.num_rows)
            .sum();
        Ok((self.count()? as u64).saturating_sub(indexed.max(0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(vars: &[(&str, &str)]) -> Result<MilvusOptions> {
        MilvusOptions::from_env_with(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn the_partition_key_comes_from_the_environment_and_is_bounded() {
        assert_eq!(options(&[]).unwrap().partition_key, None);
        assert_eq!(
            options(&[(PARTITION_KEY_VAR, " ")]).unwrap().partition_key,
            None
        );
        for good in [
            "tenant",
            "_t",
            "Tenant_2",
            &"t".repeat(MAX_PARTITION_KEY_NAME),
        ] {
            let o = options(&[(PARTITION_KEY_VAR, good)]).unwrap();
            assert_eq!(o.partition_key.as_deref(), Some(good));
        }
        let o = options(&[(PARTITION_KEY_VAR, " tenant\n")]).unwrap();
        assert_eq!(o.partition_key.as_deref(), Some("tenant"));
        let long = "t".repeat(MAX_PARTITION_KEY_NAME + 1);
        let huge = "t".repeat(10_000);
        for (bad, says) in [
            ("te-nant", "ASCII letters"),
            ("2tenant", "not starting with a digit"),
            ("a.b", "ASCII letters"),
            ("ténant", "ASCII letters"),
            ("ten ant", "ASCII letters"),
            (long.as_str(), "1 to 64"),
            (huge.as_str(), "1 to 64"),
            ("id", "gclip's own fields"),
            ("Vector", "gclip's own fields"),
            ("fields", "gclip's own fields"),
            ("source", "gclip's own fields"),
            ("and", "expression language"),
            ("IN", "expression language"),
            ("like", "expression language"),
            ("json_contains", "expression language"),
            ("array_length", "expression language"),
        ] {
            let e = options(&[(PARTITION_KEY_VAR, bad)])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(PARTITION_KEY_VAR) && e.contains(says),
                "{bad}: {e}"
            );
            // A long value is quoted in part only.
            assert!(e.len() < 400, "{bad}: {e}");
        }
    }

    #[test]
    fn partitions_and_scalar_fields_come_from_the_environment_within_bounds() {
        let o = options(&[]).unwrap();
        assert_eq!((o.partitions, o.scalar_fields), (None, None));
        for (given, want) in [("1", 1), (" 16 ", 16), ("4096", MAX_PARTITIONS)] {
            let o = options(&[(PARTITIONS_VAR, given)]).unwrap();
            assert_eq!(o.partitions, Some(want), "{given}");
        }
        for bad in ["0", "4097", "-3", "many", "1e3"] {
            let e = options(&[(PARTITIONS_VAR, bad)]).unwrap_err().to_string();
            assert!(
                e.contains(PARTITIONS_VAR) && e.contains("from 1 to 4096"),
                "{bad}: {e}"
            );
        }
        let declared = |spec: &str| -> Vec<String> {
            let o = options(&[(SCALAR_FIELDS_VAR, spec)]).unwrap();
            o.scalar_fields
                .unwrap()
                .iter()
                .map(|f| f.to_string())
                .collect()
        };
        assert_eq!(
            declared("price:int, brand:string(64)"),
            ["price:int", "brand:string(64)"]
        );
        assert_eq!(
            declared("price:int?,brand:string(64) ?"),
            ["price:int?", "brand:string(64)?"]
        );
        // Optional fields count twice against the bound, and the error names the variable.
        let many: Vec<String> = (0..17).map(|i| format!("f{i}:int?")).collect();
        let e = options(&[(SCALAR_FIELDS_VAR, &many.join(","))])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(SCALAR_FIELDS_VAR)
                && e.contains("17 fields, 17 of them optional (each with a presence field): 34"),
            "{e}"
        );
        assert_eq!(
            options(&[(SCALAR_FIELDS_VAR, " ")]).unwrap().scalar_fields,
            None
        );
        let e = options(&[(SCALAR_FIELDS_VAR, "price:money")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(SCALAR_FIELDS_VAR) && e.contains(r#"unknown type "money""#),
            "{e}"
        );
        // The partition key is a string field already.
        let e = options(&[
            (PARTITION_KEY_VAR, "tenant"),
            (SCALAR_FIELDS_VAR, "price:int,Tenant:string"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(SCALAR_FIELDS_VAR)
                && e.contains("Tenant:string(256) is the partition key `tenant`"),
            "{e}"
        );
        let o = options(&[
            (PARTITION_KEY_VAR, "tenant"),
            (SCALAR_FIELDS_VAR, "price:int"),
        ])
        .unwrap();
        assert_eq!(
            typed_fields(o.partition_key.as_deref(), &o.scalar_fields.unwrap()),
            [
                ScalarField {
                    name: "tenant".into(),
                    ty: ScalarType::String(MAX_TENANT_BYTES as u32),
                    optional: false,
                },
                ScalarField {
                    name: "price".into(),
                    ty: ScalarType::Int,
                    optional: false,
                }
            ]
        );
    }

    /// The hand-built create request marks the partition key and carries the partitions and
    /// every typed field with its Milvus type, each optional one followed by its presence
    /// field.
    #[test]
    fn the_create_request_carries_the_key_the_partitions_and_the_scalar_fields() {
        use milvus::proto::schema::DataType;
        use prost::Message;
        let declared =
            parse_scalar_fields("brand:string(64),price:int?,rating:float,sold:bool?").unwrap();
        let schema = schema_for("shop", "{}", 8, Some("tenant"), &declared).unwrap();
        let request = create_request(schema, Some("tenant"), 2, 128).unwrap();
        assert_eq!((request.shards_num, request.num_partitions), (2, 128));
        let schema =
            milvus::proto::schema::CollectionSchema::decode(request.schema.as_slice()).unwrap();
        let fields: Vec<(String, DataType, bool, Option<String>)> = schema
            .fields
            .iter()
            .map(|f| {
                let max = f.type_params.iter().find(|p| p.key == "max_length");
                (
                    f.name.clone(),
                    DataType::try_from(f.data_type).unwrap(),
                    f.is_partition_key,
                    max.map(|p| p.value.clone()),
                )
            })
            .collect();
        let field =
            |n: &str, t, key, max: Option<&str>| (n.to_string(), t, key, max.map(String::from));
        assert_eq!(
            fields,
            [
                field("id", DataType::VarChar, false, Some("4096")),
                field("vector", DataType::FloatVector, false, None),
                field("fields", DataType::Json, false, None),
                field("source", DataType::Json, false, None),
                field("tenant", DataType::VarChar, true, Some("512")),
                field("brand", DataType::VarChar, false, Some("64")),
                field("price", DataType::Int64, false, None),
                field("price__present", DataType::Bool, false, None),
                field("rating", DataType::Double, false, None),
                field("sold", DataType::Bool, false, None),
                field("sold__present", DataType::Bool, false, None),
            ]
        );
        // Read back as the collection declares them, as opening does: a presence field marks
        // its field optional.
        let presence: Vec<&str> = schema.fields[5..]
            .iter()
            .filter_map(ScalarField::presence_of)
            .collect();
        assert_eq!(presence, ["price", "sold"]);
        let mut read: Vec<ScalarField> = schema.fields[5..]
            .iter()
            .filter_map(ScalarField::from_schema)
            .collect();
        assert!(mark_optional(&mut read, &presence));
        assert_eq!(read, declared);
        // A presence field of no declared field is not gclip's.
        assert!(!mark_optional(&mut read, &["tenant"]));
    }

    #[test]
    fn shards_and_replicas_come_from_the_environment_within_bounds() {
        let o = options(&[]).unwrap();
        assert_eq!((o.shards, o.replicas), (None, None));
        let o = options(&[(SHARDS_VAR, "4"), (REPLICAS_VAR, " 2 ")]).unwrap();
        assert_eq!((o.shards, o.replicas), (Some(4), Some(2)));
        let o = options(&[(SHARDS_VAR, ""), (REPLICAS_VAR, "64")]).unwrap();
        assert_eq!((o.shards, o.replicas), (None, Some(64)));
        for (var, bad) in [
            (SHARDS_VAR, "0"),
            (SHARDS_VAR, "65"),
            (SHARDS_VAR, "two"),
            (REPLICAS_VAR, "-1"),
            (REPLICAS_VAR, "1.5"),
            (REPLICAS_VAR, "99999999999"),
        ] {
            let e = options(&[(var, bad)]).unwrap_err().to_string();
            assert!(
                e.contains(var) && e.contains("from 1 to 64"),
                "{var}={bad}: {e}"
            );
        }
    }
}
