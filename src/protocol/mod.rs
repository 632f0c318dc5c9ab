//! Types that cross process boundaries or the transport seam.
//!
//! - [`message`] and [`codec`]: the client ⇄ server conversation: versioned JSON control
//!   messages and binary chunks, length-prefixed, with hard limits checked before allocating.
//! - [`task`]: the frame task and result the pipeline hands a transport and gets back.
//! - [`wire`]: those tasks and results as broker message bodies, with their frame encodings.
//! - [`event`]: job events on the events exchange.

pub mod codec;
pub mod event;
pub mod job;
pub mod message;
pub mod segment;
pub mod task;
pub mod wire;
