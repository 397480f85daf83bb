//! Names on the NATS side: bucket names, KV keys and subjects, and the one
//! encoding that makes any node id a legal key and subject token.

/// KV bucket of presence entries, key = client_id in decimal.
pub const PRESENCE_BUCKET: &str = "ringbeat-presence";
/// KV bucket of node leases, key = encoded node id.
pub const NODES_BUCKET: &str = "ringbeat-nodes";
/// KV bucket of reaper claims, key = `<encoded node>.<incarnation>`; the
/// first survivor to create it reaps that node's entries.
pub const REAPED_BUCKET: &str = "ringbeat-reaped";
/// Prefix of online/offline event subjects.
pub const PRESENCE_SUBJECT_PREFIX: &str = "ringbeat.presence";

/// A node id as one KV key / subject token: `[A-Za-z0-9_-]` pass through,
/// every other byte becomes `=XX` (hex). `=` is legal in both, `.` and `:`
/// are not, and the mapping is injective.
pub fn encode_node(node: &str) -> String {
    let mut out = String::with_capacity(node.len());
    for b in node.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// Key of a client's presence entry.
pub fn presence_key(client_id: u64) -> String {
    client_id.to_string()
}

/// Subject an event is published on: `ringbeat.presence.<online|offline>.<id>`.
pub fn event_subject(kind: &str, client_id: u64) -> String {
    format!("{PRESENCE_SUBJECT_PREFIX}.{kind}.{client_id}")
}

/// Request/reply subject on which `node` ends its local holder of an id.
pub fn kick_subject(node: &str) -> String {
    format!("ringbeat.node.{}.kick", encode_node(node))
}

/// Reaper key of one incarnation of a node.
pub fn reaper_key(node: &str, incarnation: u64) -> String {
    format!("{}.{incarnation}", encode_node(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_become_single_legal_tokens() {
        let k = encode_node("box-1.example:7700");
        assert_eq!(k, "box-1=2Eexample=3A7700");
        assert!(!k.contains('.') && !k.contains(':'));
        assert_ne!(encode_node("a.b"), encode_node("a_b"));
        assert_eq!(kick_subject("n:1"), "ringbeat.node.n=3A1.kick");
        assert_eq!(reaper_key("n:1", 7), "n=3A1.7");
    }

    #[test]
    fn subjects_follow_the_contract() {
        assert_eq!(event_subject("online", 42), "ringbeat.presence.online.42");
        assert_eq!(presence_key(42), "42");
    }
}
