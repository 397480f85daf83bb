//! What a completion is for: op kind, slot and generation packed into the
//! 64-bit `user_data` of an io_uring SQE, so a completion that arrives after
//! its slot was reused is recognised (generation mismatch) and dropped.
//!
//! Layout: `op` in bits 56..64, `slot` in bits 32..56, `generation` in 0..32.

/// Largest slot index `user_data` can carry.
pub const SLOT_MAX: u32 = (1 << 24) - 1;

/// The operation a completion belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Multishot accept on listener `slot`.
    AcceptMulti = 1,
    /// Single-shot accept; `slot` = listener << 8 | address-buffer index.
    Accept = 2,
    Recv = 3,
    Send = 4,
    /// Cancel of a connection's receive.
    Cancel = 5,
    /// Close of a connection's descriptor; on completion the slot is free.
    Close = 6,
    /// The tick timer.
    Tick = 7,
    /// Read on the shard's wake eventfd (control messages, shutdown).
    Wake = 8,
    /// PROVIDE_BUFFERS (compat mode) returning receive buffers.
    ProvideBuffers = 9,
    /// Outbound connect (load generator).
    Connect = 10,
    /// Send of a connection's CLOSE frame (static memory, not the queue).
    CloseFrame = 11,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        const ALL: [Op; 11] = [
            Op::AcceptMulti,
            Op::Accept,
            Op::Recv,
            Op::Send,
            Op::Cancel,
            Op::Close,
            Op::Tick,
            Op::Wake,
            Op::ProvideBuffers,
            Op::Connect,
            Op::CloseFrame,
        ];
        ALL.get(usize::from(v).wrapping_sub(1)).copied()
    }
}

/// A decoded `user_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserData {
    pub op: Op,
    pub slot: u32,
    pub generation: u32,
}

impl UserData {
    pub fn new(op: Op, slot: u32, generation: u32) -> UserData {
        assert!(slot <= SLOT_MAX, "slot {slot} does not fit user_data");
        UserData {
            op,
            slot,
            generation,
        }
    }

    pub fn encode(self) -> u64 {
        (u64::from(self.op as u8) << 56) | (u64::from(self.slot) << 32) | u64::from(self.generation)
    }

    /// `None` for a value ringbeat never submitted (a broken invariant).
    pub fn decode(raw: u64) -> Option<UserData> {
        Some(UserData {
            op: Op::from_u8((raw >> 56) as u8)?,
            slot: ((raw >> 32) as u32) & SLOT_MAX,
            generation: raw as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrip(op in 1u8..=10, slot in 0..=SLOT_MAX, generation in any::<u32>()) {
            let ud = UserData::new(Op::from_u8(op).unwrap(), slot, generation);
            prop_assert_eq!(UserData::decode(ud.encode()), Some(ud));
        }
    }

    #[test]
    fn zero_is_not_ours() {
        assert_eq!(UserData::decode(0), None);
    }
}
