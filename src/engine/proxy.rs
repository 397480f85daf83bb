//! PROXY protocol v2 (`--proxy-protocol`): behind a load balancer or a TLS
//! proxy every connection starts with a v2 header naming the client's real
//! address, which then replaces the balancer's in events and per-address
//! limits. A connection whose first bytes are not a valid header is closed
//! (CLOSE(PROTOCOL_ERROR)) and counted. A header split across receives is
//! assembled in the shared pool (see `stash`), exactly as far as its own
//! length says, so protocol bytes behind it are parsed as usual.

use std::net::SocketAddr;

use super::{CloseCause, Engine};
use crate::conn_table::{flag, NONE};
use crate::protocol::CloseReason;
use crate::proxy_v2::{self, Parsed, FIXED_BYTES, HEADER_MAX_BYTES};
use crate::send_pool::SendPool;

impl Engine {
    /// Feeds bytes to a connection still owing its PROXY header. Returns
    /// the bytes after the header once it is complete, or `None` if all
    /// were consumed (or the connection was closed).
    pub(super) fn feed_proxy<'a>(
        &mut self,
        slot: u32,
        bytes: &'a [u8],
        sends: &mut SendPool,
    ) -> Option<&'a [u8]> {
        let mut index = self.table.partial[slot as usize];
        if index == NONE {
            match proxy_v2::parse(bytes) {
                Ok(Parsed::Done { source, header_len }) => {
                    self.proxied(slot, source, sends);
                    return self.is_open(slot).then_some(&bytes[header_len..]);
                }
                Ok(Parsed::Incomplete) => index = self.alloc_hello(slot, sends),
                Err(e) => return self.proxy_refused(slot, e, sends),
            }
        }
        let mut rest = bytes;
        loop {
            let have = self.hellos.bytes_of(index);
            let want = match have.len() {
                n if n < FIXED_BYTES => FIXED_BYTES,
                _ => FIXED_BYTES + usize::from(u16::from_be_bytes([have[14], have[15]])),
            };
            let want = want.min(HEADER_MAX_BYTES + 1);
            let taken = self.hellos.fill(index, want, rest);
            rest = &rest[taken..];
            match proxy_v2::parse(self.hellos.bytes_of(index)) {
                Ok(Parsed::Done { source, .. }) => {
                    self.proxied(slot, source, sends);
                    return self.is_open(slot).then_some(rest);
                }
                Ok(Parsed::Incomplete) if rest.is_empty() => return None,
                Ok(Parsed::Incomplete) => {}
                Err(e) => return self.proxy_refused(slot, e, sends),
            }
        }
    }

    /// The header is in: the connection is the client's from here on.
    fn proxied(&mut self, slot: u32, source: Option<SocketAddr>, sends: &mut SendPool) {
        self.release_partial(slot);
        self.table.clear(slot, flag::AWAIT_PROXY);
        self.stats.proxied.inc();
        let peer = match source {
            Some(addr) => {
                self.table.set_peer(slot, addr);
                Some(addr)
            }
            None => self.table.peer(slot), // LOCAL: the balancer itself
        };
        if !self.count_source(slot, peer) {
            self.stats.limited_ip.inc();
            self.close(slot, CloseCause::Server(CloseReason::Limited), sends);
        }
    }

    fn proxy_refused<'a>(
        &mut self,
        slot: u32,
        e: proxy_v2::ProxyError,
        sends: &mut SendPool,
    ) -> Option<&'a [u8]> {
        tracing::debug!(shard = self.cfg.shard, slot, error = %e, "PROXY header refused");
        self.stats.proxy_refused.inc();
        self.close(slot, CloseCause::Server(CloseReason::ProtocolError), sends);
        None
    }
}
