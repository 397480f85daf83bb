//! `ringbeat presence`: read the directory and the event subjects from any
//! machine that reaches NATS (get one entry, count entries, watch events).

use std::io::Write;

use async_nats::jetstream::kv::Operation;
use futures::StreamExt;

use super::directory::Entry;
use super::subjects::{presence_key, PRESENCE_BUCKET, PRESENCE_SUBJECT_PREFIX};
use super::thread::connect;
use super::ClusterError;

fn runtime() -> Result<tokio::runtime::Runtime, ClusterError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn js_err(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::JetStream(e.to_string())
}

async fn open(url: &str) -> Result<async_nats::jetstream::kv::Store, ClusterError> {
    let (client, _) = connect(url, "ringbeat presence").await?;
    let js = async_nats::jetstream::new(client);
    js.get_key_value(PRESENCE_BUCKET).await.map_err(js_err)
}

/// The directory entry of `client_id`, or `None` when it is offline.
pub fn get(url: &str, client_id: u64) -> Result<Option<Entry>, ClusterError> {
    runtime()?.block_on(async {
        let kv = open(url).await?;
        let entry = kv.entry(presence_key(client_id)).await.map_err(js_err)?;
        Ok(entry
            .filter(|e| e.operation == Operation::Put)
            .and_then(|e| Entry::from_bytes(&e.value)))
    })
}

/// How many clients the directory holds (walks the keys).
pub fn count(url: &str) -> Result<u64, ClusterError> {
    runtime()?.block_on(async {
        let kv = open(url).await?;
        let keys = kv.keys().await.map_err(js_err)?;
        Ok(keys
            .filter(|k| futures::future::ready(k.is_ok()))
            .count()
            .await as u64)
    })
}

/// Writes every event on `ringbeat.presence.>` to `out` as a JSON line,
/// until the connection ends or `max_events` were written.
pub fn watch(url: &str, out: &mut dyn Write, max_events: Option<u64>) -> Result<(), ClusterError> {
    runtime()?.block_on(async {
        let (client, _) = connect(url, "ringbeat presence watch").await?;
        let mut sub = client
            .subscribe(format!("{PRESENCE_SUBJECT_PREFIX}.>"))
            .await
            .map_err(js_err)?;
        let mut seen = 0u64;
        while let Some(msg) = sub.next().await {
            out.write_all(&msg.payload)?;
            out.write_all(b"\n")?;
            out.flush()?;
            seen += 1;
            if max_events.is_some_and(|m| seen >= m) {
                break;
            }
        }
        Ok(())
    })
}
