//! The presence directory's pure parts: the entry JSON, the node's own
//! holdings (which keys this node wrote and may delete), the event JSON
//! published on subjects. No I/O.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::events::Event;

/// Value of a `ringbeat-presence` key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub node: String,
    pub session: u64,
    pub since_ms: u64,
    pub peer: Option<String>,
}

impl Entry {
    pub fn to_bytes(&self) -> bytes::Bytes {
        serde_json::to_vec(self).expect("entry serializes").into()
    }

    pub fn from_bytes(b: &[u8]) -> Option<Entry> {
        serde_json::from_slice(b).ok()
    }
}

/// The events-file JSON plus `"node"`, as published on the subjects.
pub fn event_json(event: &Event, node: &str) -> Vec<u8> {
    let mut v = serde_json::to_value(event).expect("events serialize");
    if let serde_json::Value::Object(map) = &mut v {
        map.insert("node".into(), serde_json::Value::String(node.into()));
    }
    serde_json::to_vec(&v).expect("json")
}

/// One key this node holds in the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    pub session: u64,
    /// KV revision of our write; 0 while not yet written (outage, `local`).
    pub revision: u64,
    pub entry: Entry,
}

/// What to do with the directory when a local connection goes offline.
#[derive(Debug, PartialEq, Eq)]
pub enum OfflineAction {
    /// Delete the key, expecting this revision (0: unconditional would race a newer writer,
    /// so nothing was written yet and nothing is deleted).
    Delete { revision: u64 },
    /// The key is not ours (another session of ours or another node now
    /// holds it): leave it.
    Keep,
}

/// The ids this node holds, with the revision it wrote. Only the holder of
/// the current revision deletes; a kicked or superseded session never does.
#[derive(Debug, Default)]
pub struct Holdings {
    by_id: HashMap<u64, Holding>,
}

impl Holdings {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get(&self, client_id: u64) -> Option<&Holding> {
        self.by_id.get(&client_id)
    }

    /// A claim was written (or accepted locally during an outage).
    pub fn granted(&mut self, client_id: u64, holding: Holding) {
        self.by_id.insert(client_id, holding);
    }

    /// Another node took the id: forget it so our offline never deletes
    /// the new holder's entry.
    pub fn kicked(&mut self, client_id: u64) -> Option<Holding> {
        self.by_id.remove(&client_id)
    }

    /// A local connection went offline.
    pub fn offline(&mut self, client_id: u64, session: u64) -> OfflineAction {
        match self.by_id.get(&client_id) {
            Some(h) if h.session == session => {
                let revision = h.revision;
                self.by_id.remove(&client_id);
                if revision == 0 {
                    OfflineAction::Keep
                } else {
                    OfflineAction::Delete { revision }
                }
            }
            _ => OfflineAction::Keep,
        }
    }

    /// Every holding, for re-assertion after NATS comes back.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Holding)> {
        self.by_id.iter().map(|(k, v)| (*k, v))
    }

    pub fn set_revision(&mut self, client_id: u64, session: u64, revision: u64) {
        if let Some(h) = self.by_id.get_mut(&client_id) {
            if h.session == session {
                h.revision = revision;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;

    fn entry(session: u64) -> Entry {
        Entry {
            node: "a".into(),
            session,
            since_ms: 5,
            peer: Some("127.0.0.1:9".into()),
        }
    }

    #[test]
    fn entry_json_has_the_contract_fields() {
        let e = entry(3);
        let v: serde_json::Value = serde_json::from_slice(&e.to_bytes()).unwrap();
        assert_eq!(v["node"], "a");
        assert_eq!(v["session"], 3);
        assert_eq!(v["since_ms"], 5);
        assert_eq!(v["peer"], "127.0.0.1:9");
        assert_eq!(Entry::from_bytes(&e.to_bytes()), Some(e));
    }

    #[test]
    fn event_json_is_the_file_line_plus_node() {
        let ev = Event::new(EventKind::Online, 9, 42, None);
        let v: serde_json::Value = serde_json::from_slice(&event_json(&ev, "n1")).unwrap();
        let line: serde_json::Value = serde_json::from_str(ev.to_json_line().trim()).unwrap();
        assert_eq!(v["node"], "n1");
        for k in ["ts_ms", "event", "session", "client_id", "peer", "reason"] {
            assert_eq!(v[k], line[k], "{k}");
        }
    }

    #[test]
    fn only_the_current_session_deletes() {
        let mut h = Holdings::default();
        h.granted(
            1,
            Holding {
                session: 10,
                revision: 4,
                entry: entry(10),
            },
        );
        h.granted(
            1,
            Holding {
                session: 11,
                revision: 5,
                entry: entry(11),
            },
        );
        assert_eq!(h.offline(1, 10), OfflineAction::Keep, "superseded session");
        assert_eq!(h.offline(1, 11), OfflineAction::Delete { revision: 5 });
        assert!(h.is_empty());
    }

    #[test]
    fn a_kicked_id_is_never_deleted_by_us() {
        let mut h = Holdings::default();
        h.granted(
            2,
            Holding {
                session: 1,
                revision: 3,
                entry: entry(1),
            },
        );
        assert!(h.kicked(2).is_some());
        assert_eq!(h.offline(2, 1), OfflineAction::Keep);
    }
}
