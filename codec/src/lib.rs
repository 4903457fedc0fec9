//! H.264 coding shared by the server (its H.264 feed) and the viewer (its MP4 recorder).
//!
//! ```text
//! JPEG ──turbojpeg──▶ I420 ──OpenH264──▶ Annex B access unit ──▶ annexb::to_avc ──▶ fmp4
//!                                                             └─▶ annexb::parameter_sets (SDP)
//! ```
//!
//! * [`encoder`]: [`JpegToH264`], one coded picture per JPEG, Constrained Baseline, never a
//!   skipped frame, an IDR picture on request or every N frames.
//! * [`annexb`]: the NAL units of an Annex B access unit, its SPS and PPS, and the
//!   length-prefixed form MP4 stores.
//! * [`fmp4`]: fragmented MP4 of one H.264 track (the viewer's recordings, the server's
//!   LL-HLS init segment and parts), its boxes made by `mp4-atom`.
//!
//! No I/O, no threads: callers decide where the CPU work runs.

pub mod annexb;
pub mod encoder;
pub mod fmp4;

pub use annexb::{parameter_sets, to_avc, AvcAccessUnit};
pub use encoder::{Bitrate, Coded, H264Error, H264Settings, JpegToH264};
