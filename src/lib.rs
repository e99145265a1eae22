//! placeholder during build
#![warn(missing_docs)]
pub mod codec;
pub mod config;
pub mod core;
pub mod error;
pub mod record;
pub mod replica;
pub mod stamp;
pub use config::ClusterConfig;
pub use error::{ConfigError, Error, ReplicaError, Result};
pub use record::{FieldEntry, Record};
pub use stamp::Stamp;
