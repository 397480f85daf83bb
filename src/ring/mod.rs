//! io_uring: setup, feature probe and SQE builders. This module tree is the
//! crate's unsafe fence: every `unsafe` block in ringbeat lives under
//! `src/ring/` or `src/buf_ring.rs`, each with a `// SAFETY:` comment.
