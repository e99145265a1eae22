//! The anti-entropy lease (`lease.lua`, one key: any deployment); Cluster
//! mode's renewal lease (`witness.rs`) is another key of the same script.

use std::time::Duration;

use fred::prelude::*;

use super::Inner;
use crate::error::ReplicaError;

impl Inner {
    pub(super) async fn acquire(&self, owner: u64, ttl: Duration) -> Result<bool, ReplicaError> {
        // The script refuses more than a day: the longest lease configurable.
        let ttl_ms = ttl.min(crate::config::LEASE_TTL_MAX).as_millis().max(1);
        let reply = self
            .lease_call(&self.lease_key, "acquire", owner, ttl_ms.to_string())
            .await?;
        match reply {
            Value::Integer(granted) => Ok(granted == 1),
            _ => Err(self.malformed("lease")),
        }
    }

    pub(super) async fn release(&self, owner: u64) -> Result<(), ReplicaError> {
        self.lease_call(&self.lease_key, "release", owner, String::new())
            .await?;
        Ok(())
    }

    /// One call of the lease script on the lease key `key` (a single key:
    /// any deployment).
    pub(super) async fn lease_call(
        &self,
        key: &str,
        op: &'static str,
        owner: u64,
        ttl_ms: String,
    ) -> Result<Value, ReplicaError> {
        let args = vec![
            Value::from_static_str(op),
            Value::from(format!("{owner:016x}")),
            Value::from(ttl_ms),
        ];
        let request = || (vec![Key::from(key)], args.clone());
        let (reply, _) = self
            .eval("lease", &self.lease_script, request, None, None)
            .await?;
        Ok(reply)
    }
}
