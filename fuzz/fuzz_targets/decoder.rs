//! Fuzz target: the frame decoder on an arbitrary byte stream cut at
//! arbitrary points. The frames (and the first error) must equal those of
//! the uncut parse, every frame must re-encode to exactly the bytes it was
//! read from, and `parse_header` must agree with the decoder on each header.
//!
//! Input layout: byte 0 picks `max_payload`, byte 1 the number of cuts (up
//! to 15), then one byte per cut (a chunk length; odd: take at most one frame
//! out before the next feed), then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringbeat::protocol::{
    self, header_bytes, parse_header, Decoder, Kind, OwnedFrame, ProtocolError, HEADER_LEN,
    MIN_MAX_PAYLOAD,
};

/// Frames and the error (if any) that ended the stream, plus bytes left.
type Outcome = (Vec<OwnedFrame>, Option<ProtocolError>, usize);

/// Takes up to `most` frames out; `None` if no error came.
fn drain(d: &mut Decoder, frames: &mut Vec<OwnedFrame>, most: usize) -> Option<ProtocolError> {
    for _ in 0..most {
        match d.next_frame() {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
    None
}

fn decode(stream: &[u8], cuts: &[usize], max_payload: u32) -> Outcome {
    let mut d = Decoder::new(max_payload);
    let mut frames = Vec::new();
    let mut rest = stream;
    for &cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
        let (now, later) = rest.split_at(cut.min(rest.len()));
        d.feed(now);
        rest = later;
        // An odd cut takes at most one frame out before the next feed, so
        // feeds also land while complete frames are still buffered.
        let most = if cut % 2 == 1 { 1 } else { usize::MAX };
        if let Some(e) = drain(&mut d, &mut frames, most) {
            return (frames, Some(e), d.pending());
        }
    }
    match drain(&mut d, &mut frames, usize::MAX) {
        Some(e) => (frames, Some(e), d.pending()),
        None => (frames, None, d.pending()),
    }
}

fn encode(f: &OwnedFrame) -> Vec<u8> {
    match f {
        OwnedFrame::Hello { .. } => unreachable!("re-encoded with its token"),
        OwnedFrame::Welcome {
            session,
            interval_ms,
            timeout_ms,
        } => protocol::welcome_frame(*session, *interval_ms, *timeout_ms).to_vec(),
        OwnedFrame::Ping(p) => protocol::ping_frame(*p).to_vec(),
        OwnedFrame::Pong(p) => protocol::pong_frame(*p).to_vec(),
        OwnedFrame::Data(d) => [&header_bytes(Kind::Data, d.len() as u32)[..], d].concat(),
        OwnedFrame::Close { reason, text } => [
            &header_bytes(Kind::Close, 2 + text.len() as u32)[..],
            &reason.to_be_bytes(),
            text,
        ]
        .concat(),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max_payload = match data[0] % 4 {
        0 => MIN_MAX_PAYLOAD,
        1 => protocol::DEFAULT_MAX_PAYLOAD,
        2 => 4096,
        _ => u32::MAX,
    };
    let n_cuts = usize::from(data[1] % 16).min(data.len() - 2);
    let cuts: Vec<usize> = data[2..2 + n_cuts]
        .iter()
        .map(|&b| usize::from(b))
        .collect();
    let stream = &data[2 + n_cuts..];

    let whole = decode(stream, &[], max_payload);
    let cut = decode(stream, &cuts, max_payload);
    // After an error the stream is unusable: bytes left then are not compared.
    assert_eq!(whole.0, cut.0, "cutting the stream changed the frames");
    assert_eq!(whole.1, cut.1, "cutting the stream changed the error");
    if whole.1.is_none() {
        assert_eq!(whole.2, cut.2, "cutting the stream changed the bytes left");
    }

    // Every frame re-encodes to the bytes it came from, in order.
    let mut at = 0;
    for f in &whole.0 {
        let bytes = match f {
            OwnedFrame::Hello {
                client_id,
                interval_ms,
                token,
            } => protocol::hello_frame_with_token(*client_id, *interval_ms, token).expect("fits"),
            f => encode(f),
        };
        assert_eq!(&stream[at..at + bytes.len()], &bytes[..], "frame {f:?}");
        at += bytes.len();
    }
    // The decoder stopped where parse_header says it must.
    let left = &stream[at..];
    match (&whole.1, left.get(..HEADER_LEN)) {
        (Some(e), Some(h)) => {
            assert_eq!(parse_header(h.try_into().unwrap(), max_payload), Err(*e));
        }
        (Some(e), None) => panic!("error {e:?} without a whole header"),
        (None, Some(h)) => {
            let header = parse_header(h.try_into().unwrap(), max_payload).expect("valid");
            assert!(left.len() < header.frame_len(), "a whole frame was left");
        }
        (None, None) => {}
    }
    if whole.1.is_none() {
        assert_eq!(whole.2, left.len(), "pending() counts the bytes left");
    }
});
