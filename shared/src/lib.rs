//! surv's wire protocol: what crosses the network between a surv server and its viewers.
//!
//! Four messages, each with `encode` and `decode` and a named size cap, and no I/O:
//!
//! * [`register`]: the viewer's TCP registration (the seed-003 form and the versioned `SURV/1`
//!   form, with the access token it may carry), and seed 001's `Request` datagram.
//! * [`reply`]: the server's one-line answer to the versioned form.
//! * [`ack`]: the viewer's UDP answer to each frame, `continue` or `end` (and a chunked
//!   session's `nack`).
//! * [`chunk`]: the header of each chunk of a frame sent in MTU-sized pieces to a viewer that
//!   asked for them; [`parity`] makes its parity chunks, and [`reassembly`] puts the frame
//!   back together, sans-IO.
//! * [`tag`]: the sequence number, capture time and motion flag carried inside every frame datagram as a JPEG
//!   COM segment, so that a viewer that only understands plain JPEG (seed 003's) still decodes it;
//!   [`objects`]: what the server's detector sees, in a second COM segment after it.
//!
//! Besides the messages, [`size`] owns how a frame size is written on surv's command lines.
//!
//! docs/PROTOCOL.md describes the whole exchange for people; this crate is the reference.

pub mod ack;
pub mod chunk;
pub mod objects;
pub mod parity;
pub mod reassembly;
pub mod register;
pub mod reply;
pub mod size;
pub mod tag;

pub use ack::{Ack, AckError, Nack, MAX_ACK_BYTES, MAX_CHUNK_ACK_BYTES};
pub use chunk::{
    chunk_bytes_for_mtu, ChunkError, ChunkHeader, CHUNK_HEADER_BYTES, DEFAULT_MTU_BYTES,
    MAX_CHUNKS_PER_FRAME, MAX_MTU_BYTES, MIN_MTU_BYTES,
};
pub use objects::{Object, ObjectsError, MAX_OBJECTS_BYTES};
pub use reassembly::{Incomplete, Push, Reassembler, ReassemblyStats, Rejected};
pub use register::{
    is_valid_camera_name, is_valid_token, AppRequest, Form, RegError, Registration,
    RegistrationLine, RequestError, MAX_CAMERA_NAME_BYTES, MAX_REGISTRATION_BYTES,
    MAX_REGISTRATION_LINE_BYTES, MAX_REQUEST_BYTES, MAX_TOKEN_BYTES, PROTOCOL_VERSION,
};
pub use reply::{
    escape_controls, Reply, ReplyError, StreamParams, MAX_REPLY_BYTES, MAX_STREAM_FPS,
    MAX_STREAM_SIDE_PX,
};
pub use size::{parse_size, SizeError};
pub use tag::{unix_micros_now, FrameTag, TagError, FLAG_MOTION, FLAG_OBJECTS, TAG_BYTES};

/// Default TCP port a surv server listens on for registrations (seed 003's).
pub const DEFAULT_TCP_PORT: u16 = 9999;

/// The largest UDP payload IPv4 can carry: 65,535 − 20 (IP header) − 8 (UDP header).
pub const MAX_UDP_PAYLOAD_BYTES: usize = 65_507;

/// Default cap on a frame datagram. Below [`MAX_UDP_PAYLOAD_BYTES`] with a little margin; on a
/// network that fragments badly, a lower cap (e.g. 1400, one Ethernet MTU) avoids IP fragments.
pub const DEFAULT_MAX_DATAGRAM_BYTES: usize = 65_000;

/// The smallest datagram cap a server accepts: a tagged JPEG of a tiny image still fits.
pub const MIN_DATAGRAM_BYTES: usize = 600;
