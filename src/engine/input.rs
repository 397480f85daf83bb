//! Input of an open connection: frames parsed in place from the receive
//! buffer, and an incomplete frame's kept bytes carried to the next
//! receive — in the slot's own stash room, or, for a HELLO with a token,
//! in an entry of the shared HELLO pool (see `stash`).

use super::{CloseCause, Engine};
use crate::conn_table::{flag, NONE};
use crate::protocol::{self, CloseReason, Header, Kind, HEADER_LEN, HELLO_LEN};
use crate::send_pool::SendPool;
use crate::stash::{Partial, HELLO_FRAME_MAX, KEEP_MAX};

/// Moves bytes from `src` into `buf[*have..want]`.
fn fill(buf: &mut [u8], have: &mut usize, want: usize, src: &mut &[u8]) {
    let n = want.saturating_sub(*have).min(src.len());
    buf[*have..*have + n].copy_from_slice(&src[..n]);
    *have += n;
    *src = &src[n..];
}

impl Engine {
    /// Whether HELLO tokens are read (an authenticator is configured).
    fn keeps_tokens(&self) -> bool {
        self.cfg.auth.is_some()
    }

    /// Bytes of a frame the server keeps: header plus what it reads of the
    /// payload (a HELLO's token only when tokens are checked).
    pub(super) fn keep_len(&self, h: Header) -> usize {
        HEADER_LEN
            + match h.kind {
                // WELCOME is never valid inbound: nothing of it is kept, so
                // a split one is not mistaken for a HELLO in the pool (the
                // fuzzer found that: 24 bytes, over the 20 a slot keeps).
                Kind::Data | Kind::Welcome => 0,
                Kind::Close => 2,
                Kind::Hello if self.keeps_tokens() => h.len as usize,
                Kind::Hello => HELLO_LEN,
                k => k.fixed_len().expect("fixed kind"),
            }
    }

    /// Parses input of an open slot.
    pub(super) fn parse_input(&mut self, slot: u32, data: &[u8], sends: &mut SendPool) {
        let mut rest = data;
        if self.table.has(slot, flag::AWAIT_PROXY) {
            match self.feed_proxy(slot, rest, sends) {
                Some(r) => rest = r,
                None => return,
            }
        }
        if self.stash.active(slot) {
            match self.feed_partial(slot, rest, sends) {
                Some(r) => rest = r,
                None => return,
            }
        }
        while rest.len() >= HEADER_LEN && self.is_open(slot) {
            let head: &[u8; HEADER_LEN] = rest[..HEADER_LEN].try_into().expect("8 bytes");
            let header = match protocol::parse_header(head, self.cfg.max_payload) {
                Ok(h) => h,
                Err(e) => return self.protocol_error(slot, e, sends),
            };
            if rest.len() < header.frame_len() {
                break;
            }
            let payload = &rest[HEADER_LEN..self.keep_len(header)];
            rest = &rest[header.frame_len()..];
            self.on_frame(slot, header.kind, payload, sends);
        }
        if !rest.is_empty() && self.is_open(slot) {
            let rest = self.feed_partial(slot, rest, sends);
            debug_assert!(
                rest.is_none_or(|r| r.is_empty()),
                "a whole frame was left for the stash"
            );
        }
    }

    /// Feeds bytes to the slot's incomplete frame. Returns the bytes after
    /// it once it completes, or `None` if all were consumed (or the
    /// connection closed).
    fn feed_partial<'a>(
        &mut self,
        slot: u32,
        mut bytes: &'a [u8],
        sends: &mut SendPool,
    ) -> Option<&'a [u8]> {
        let mut p = self.stash.get(slot);
        let had = usize::from(p.have);
        let mut have = had;
        fill(&mut p.buf, &mut have, HEADER_LEN, &mut bytes);
        p.have = have as u8;
        if have < HEADER_LEN {
            self.stash.set(slot, p);
            return None;
        }
        let head: &[u8; HEADER_LEN] = p.buf[..HEADER_LEN].try_into().expect("8 bytes");
        let header = match protocol::parse_header(head, self.cfg.max_payload) {
            Ok(h) => h,
            Err(e) => {
                self.protocol_error(slot, e, sends);
                return None;
            }
        };
        let keep = self.keep_len(header);
        if had < HEADER_LEN {
            p.skip_left = (header.frame_len() - keep) as u32;
        }
        if keep > KEEP_MAX {
            self.stash.set(slot, p);
            return self.feed_hello(slot, header, bytes, sends);
        }
        fill(&mut p.buf, &mut have, keep, &mut bytes);
        p.have = have as u8;
        let skip = (p.skip_left as usize).min(bytes.len());
        p.skip_left -= skip as u32;
        bytes = &bytes[skip..];
        if have < keep || p.skip_left > 0 {
            self.stash.set(slot, p);
            return None;
        }
        self.stash.clear(slot);
        self.on_frame(slot, header.kind, &p.buf[HEADER_LEN..keep], sends);
        self.is_open(slot).then_some(bytes)
    }

    /// A HELLO with a token, assembled in the HELLO pool (its header is in
    /// the slot's stash room).
    fn feed_hello<'a>(
        &mut self,
        slot: u32,
        header: Header,
        bytes: &'a [u8],
        sends: &mut SendPool,
    ) -> Option<&'a [u8]> {
        let want = header.frame_len();
        debug_assert!(want <= HELLO_FRAME_MAX && header.kind == Kind::Hello);
        let mut index = self.table.partial[slot as usize];
        if index == NONE {
            index = self.alloc_hello(slot, sends);
            let head = self.stash.get(slot).buf;
            self.hellos.fill(index, want, &head[..HEADER_LEN]);
        }
        let taken = self.hellos.fill(index, want, bytes);
        if self.hellos.bytes_of(index).len() < want {
            return None;
        }
        let mut frame = [0u8; HELLO_FRAME_MAX];
        frame[..want].copy_from_slice(self.hellos.bytes_of(index));
        self.release_partial(slot);
        self.on_frame(slot, Kind::Hello, &frame[HEADER_LEN..want], sends);
        self.is_open(slot).then_some(&bytes[taken..])
    }

    /// A HELLO pool entry for `slot`; when the pool is full the connection
    /// that waited longest on a half-sent HELLO loses its entry and is
    /// closed with CLOSE(OVERLOADED) (counted).
    pub(super) fn alloc_hello(&mut self, slot: u32, sends: &mut SendPool) -> u32 {
        let generation = self.table.generation[slot as usize];
        let (index, reclaimed) = self.hellos.alloc(slot, generation, self.now_tick);
        self.table.partial[slot as usize] = index;
        if let Some((old, old_generation)) = reclaimed {
            debug_assert!(old != slot);
            if self.table.is_current(old, old_generation) && self.is_open(old) {
                self.table.partial[old as usize] = NONE; // the entry is `slot`'s now
                self.stats.stash_exhausted.inc();
                self.close(old, CloseCause::Server(CloseReason::Overloaded), sends);
            }
        }
        index
    }

    /// Drops the slot's incomplete frame (stash room and HELLO entry).
    pub(super) fn release_partial(&mut self, slot: u32) {
        self.stash.clear(slot);
        let index = std::mem::replace(&mut self.table.partial[slot as usize], NONE);
        if index != NONE
            && self
                .hellos
                .owned_by(index, slot, self.table.generation[slot as usize])
        {
            self.hellos.release(index);
        }
    }
}

const _: () = assert!(KEEP_MAX >= HEADER_LEN + HELLO_LEN);
const _: () = assert!(std::mem::size_of::<Partial>() <= 32);
