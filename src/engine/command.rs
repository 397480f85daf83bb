//! What the engine asks its driver to do. The engine hands these out in
//! order (see [`super::Engine::take_commands`]) and the driver carries each
//! out without deciding anything: every flag and lifecycle change was made
//! by the engine when it issued the command.

use crate::events::Event;
use crate::mailbox::ShardMsg;

/// One request to the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Arm a receive on the connection (multishot in fast mode).
    ArmRecv { slot: u32, generation: u32 },
    /// Send the unsent head of the connection's reply queue (`head` is its
    /// first chunk in the send pool).
    Send {
        slot: u32,
        generation: u32,
        head: u32,
    },
    /// Send (the rest of) the connection's CLOSE frame from static memory.
    SendClose {
        slot: u32,
        generation: u32,
        bytes: &'static [u8],
    },
    /// Cancel the armed receive.
    CancelRecv { slot: u32, generation: u32 },
    /// Cancel the send in flight (`close_frame`: it is the CLOSE frame).
    CancelSend {
        slot: u32,
        generation: u32,
        close_frame: bool,
    },
    /// Close the descriptor; its completion frees the slot.
    CloseFd { slot: u32, generation: u32 },
    /// A message for shard `to` (possibly this one).
    Message { to: u16, msg: ShardMsg },
    /// An online/offline event for the events sink.
    Event(Event),
}
